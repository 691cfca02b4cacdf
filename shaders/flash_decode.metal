// Flash attention for decode (Nq <= 8): O = softmax(scale * Q K^T + mask) V when the query rows are
// too few to fill the flash kernel's 8-row SIMD-group tiles (prototype 1's `kernel="decode"`).
//
// Tensors and masks as in flash_attention.metal: q, o [B, Hq, Nq, D]; k, v [B, Hkv, Nk, D]; lse
// [B, Hq, Nq] (natural log); causal masks bottom-right aligned (query i sees keys j <= i + Nk - Nq);
// a row that sees no key outputs 0 with lse -inf. Params: FlashAttentionParams (attention_params.h).
//
// Work split, as MLX's vector kernel (sdpa_vector): one pass over the keys, split across SIMD-groups.
// A threadgroup owns one kv head and ROWS of the q_per_kv * Nq (query head, query) rows that share
// it, so a GQA group's heads read K and V once together. Its SIMDGROUPS SIMD-groups take keys j = sg,
// sg + SIMDGROUPS, ...; for each key every lane reads D / 32 elements of k and v (lane + 32 e:
// consecutive lanes, consecutive addresses), a simd_sum gives each row's score, and each SIMD-group
// keeps its own online softmax (m, l and the unnormalised output row) in registers. At the end the
// SIMD-groups' partial results are combined through threadgroup memory, one row at a time.
//
// Threadgroup memory, the [[threadgroup(0)]] buffer (MSL cannot size it by function constants):
//   m, l   2 * SIMDGROUPS * ROWS floats   each SIMD-group's running max and sum per row
//   o      SIMDGROUPS * HEAD_DIM floats   one row's partial outputs, reused row after row
// = 4 * SIMDGROUPS * (2 * ROWS + HEAD_DIM) bytes, computed by src/protos/flash_attention.cpp.
#include <metal_stdlib>
#include "attention_params.h"
using namespace metal;

constant uint HEAD_DIM  [[function_constant(0)]];  // 32, 64, 80, 96, 128 or 256
constant bool CAUSAL    [[function_constant(1)]];
constant bool WRITE_LSE [[function_constant(2)]];
constant uint ROWS      [[function_constant(3)]];  // (query head, query) rows per threadgroup, 1..MAX_ROWS

constant constexpr uint SIMDGROUPS = 8;       // THREADS / 32; kDecodeThreads in the C++ entry
constant constexpr uint MAX_ROWS = 8;         // register arrays have literal sizes (function constants
constant constexpr uint MAX_ELEMS = 256 / 32;  // cannot size arrays): MAX_ROWS rows of D / 32 elements
constant uint ELEMS = (HEAD_DIM + 31) / 32;   // elements per lane; lanes past D in the last are idle

// Precise exp2 throughout: every argument is finite or -inf where exp2(-inf) = 0 is the intent (the
// running max before a SIMD-group's first visible key; partials of SIMD-groups that saw none).
template <typename T>
void attention_decode(device const T* q, device const T* k, device const T* v, device T* o, device float* lse,
                      constant FlashAttentionParams& p, threadgroup float* smem, uint3 group, ushort sg,
                      ushort lane, ushort tid)
{
    const uint kv_head = group.y, batch = group.z;
    const uint group_rows = p.q_per_kv * p.q_len;  // rows sharing this kv head: (head offset, query)
    const ulong kv_offset = (ulong(batch) * p.kv_heads + kv_head) * p.kv_len * HEAD_DIM;
    k += kv_offset;
    v += kv_offset;

    // This threadgroup's rows: q, the running max/sum and the output accumulate in registers.
    float qr[MAX_ROWS][MAX_ELEMS], acc[MAX_ROWS][MAX_ELEMS], m[MAX_ROWS], l[MAX_ROWS];
    ulong row_index[MAX_ROWS];  // (batch, head, query) as a row of q / o / lse
    int last_key[MAX_ROWS];     // causal: the row's last visible key; -1 for an inactive row
    for (uint r = 0; r < ROWS; r++) {
        const uint g = group.x * ROWS + r;
        const uint head = kv_head * p.q_per_kv + min(g, group_rows - 1) / p.q_len;
        const uint i = min(g, group_rows - 1) % p.q_len;
        row_index[r] = (ulong(batch) * p.q_heads + head) * p.q_len + i;
        last_key[r] = g >= group_rows ? -1 : CAUSAL ? int(i) + int(p.kv_len) - int(p.q_len) : int(p.kv_len) - 1;
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (uint e = 0; e < ELEMS; e++) {
            const uint d = lane + 32 * e;
            // q times scale * log2(e) in float: the scores come out in the exp2 domain.
            qr[r][e] = d < HEAD_DIM ? float(q[row_index[r] * HEAD_DIM + d]) * p.scale_log2 : 0.0f;
            acc[r][e] = 0.0f;
        }
    }

    for (uint j = sg; j < p.kv_len; j += SIMDGROUPS) {
        float kj[MAX_ELEMS], vj[MAX_ELEMS];
        for (uint e = 0; e < ELEMS; e++) {
            const uint d = lane + 32 * e;
            kj[e] = d < HEAD_DIM ? float(k[ulong(j) * HEAD_DIM + d]) : 0.0f;
            vj[e] = d < HEAD_DIM ? float(v[ulong(j) * HEAD_DIM + d]) : 0.0f;
        }
        for (uint r = 0; r < ROWS; r++) {
            if (int(j) > last_key[r]) {  // masked (or inactive row): the same for the whole SIMD-group
                continue;
            }
            float dot = 0.0f;
            for (uint e = 0; e < ELEMS; e++) {
                dot += qr[r][e] * kj[e];
            }
            const float s = simd_sum(dot);
            const float new_max = max(m[r], s);  // finite: s is
            const float alpha = exp2(m[r] - new_max), pj = exp2(s - new_max);
            m[r] = new_max;
            l[r] = l[r] * alpha + pj;
            for (uint e = 0; e < ELEMS; e++) {
                acc[r][e] = acc[r][e] * alpha + pj * vj[e];
            }
        }
    }

    // Combine the SIMD-groups: weights w_s = exp2(m_s - M) with M the max over SIMD-groups.
    threadgroup float* part_m = smem;
    threadgroup float* part_l = part_m + SIMDGROUPS * ROWS;
    threadgroup float* part_o = part_l + SIMDGROUPS * ROWS;
    if (lane == 0) {
        for (uint r = 0; r < ROWS; r++) {
            part_m[sg * ROWS + r] = m[r];
            part_l[sg * ROWS + r] = l[r];
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);  // every SIMD-group's m, l are written
    for (uint r = 0; r < ROWS; r++) {
        float row_max = -INFINITY;
        for (uint s = 0; s < SIMDGROUPS; s++) {
            row_max = max(row_max, part_m[s * ROWS + r]);
        }
        // -inf: no SIMD-group saw a key for this row; its weights are 0 (not exp2(-inf - -inf) = NaN).
        const float shift = row_max == -INFINITY ? 0.0f : row_max;
        float row_sum = 0.0f;
        for (uint s = 0; s < SIMDGROUPS; s++) {
            row_sum += exp2(part_m[s * ROWS + r] - shift) * part_l[s * ROWS + r];
        }
        const float weight = exp2(m[r] - shift);
        for (uint e = 0; e < ELEMS; e++) {
            const uint d = lane + 32 * e;
            if (d < HEAD_DIM) {
                part_o[sg * HEAD_DIM + d] = acc[r][e] * weight;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // every SIMD-group's partial row is written
        if (group.x * ROWS + r < group_rows) {  // an active row
            const float inv_sum = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;  // no key: output 0
            for (uint d = tid; d < HEAD_DIM; d += SIMDGROUPS * 32) {
                float sum = 0.0f;
                for (uint s = 0; s < SIMDGROUPS; s++) {
                    sum += part_o[s * HEAD_DIM + d];
                }
                o[row_index[r] * HEAD_DIM + d] = T(sum * inv_sum);
            }
            if (WRITE_LSE && tid == 0) {
                lse[row_index[r]] = row_sum > 0.0f ? (row_max + log2(row_sum)) * M_LN2_F : -INFINITY;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the partial row is read before the next overwrites it
    }
}

// Grid: (ceil(q_per_kv * Nq / ROWS), Hkv, B) threadgroups of SIMDGROUPS * 32 threads; lse (buffer 4)
// written only when WRITE_LSE; smem (threadgroup(0)) 4 * SIMDGROUPS * (2 * ROWS + HEAD_DIM) bytes.
kernel void flash_decode_f32(device const float* q [[buffer(0)]], device const float* k [[buffer(1)]],
                              device const float* v [[buffer(2)]], device float* o [[buffer(3)]],
                              device float* lse [[buffer(4)]], constant FlashAttentionParams& p [[buffer(5)]],
                              threadgroup float* smem [[threadgroup(0)]],
                              uint3 group [[threadgroup_position_in_grid]],
                              ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]],
                              ushort tid [[thread_index_in_threadgroup]])
{
    attention_decode(q, k, v, o, lse, p, smem, group, sg, lane, tid);
}

kernel void flash_decode_f16(device const half* q [[buffer(0)]], device const half* k [[buffer(1)]],
                              device const half* v [[buffer(2)]], device half* o [[buffer(3)]],
                              device float* lse [[buffer(4)]], constant FlashAttentionParams& p [[buffer(5)]],
                              threadgroup float* smem [[threadgroup(0)]],
                              uint3 group [[threadgroup_position_in_grid]],
                              ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]],
                              ushort tid [[thread_index_in_threadgroup]])
{
    attention_decode(q, k, v, o, lse, p, smem, group, sg, lane, tid);
}

kernel void flash_decode_bf16(device const bfloat* q [[buffer(0)]], device const bfloat* k [[buffer(1)]],
                              device const bfloat* v [[buffer(2)]], device bfloat* o [[buffer(3)]],
                              device float* lse [[buffer(4)]], constant FlashAttentionParams& p [[buffer(5)]],
                              threadgroup float* smem [[threadgroup(0)]],
                              uint3 group [[threadgroup_position_in_grid]],
                              ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]],
                              ushort tid [[thread_index_in_threadgroup]])
{
    attention_decode(q, k, v, o, lse, p, smem, group, sg, lane, tid);
}
