// Flash attention forward: O = softmax(scale * Q K^T + mask) V in one pass over the keys
// (online softmax), never materialising the Nq x Nk score matrix.
//
// Tensors (C-contiguous): q, o [B, Hq, Nq, D]; k, v [B, Hkv, Nk, D]; lse [B, Hq, Nq] (float, natural log).
// GQA/MQA: query head h reads key/value head h / (Hq / Hkv).
// Causal masks are bottom-right aligned: query i sees keys j <= i + Nk - Nq. When Nq > Nk the first
// Nq - Nk query rows see no key at all; they output 0 and their logsumexp is -inf.
//
// Work split. One threadgroup owns BLOCK_Q query rows of one (batch, head); it runs BLOCK_Q / 8
// SIMD-groups and each SIMD-group owns 8 of those rows from the first key to the output store, so the
// softmax statistics never leave a SIMD-group and the only threadgroup barriers guard the shared K/V
// tiles. Per step of BLOCK_K keys:
//   S = Q K^T          8x8 simdgroup_matrix MMAs, float accumulation
//   m, l, P            online softmax in the exp2 domain on the S registers (thread_elements)
//   O = O * alpha + P V
//
// Where data lives, and why (M4: 32 KB threadgroup memory, 8x8 MMAs fed from registers):
//   Q tile   threadgroup, [BLOCK_Q][ROW]   staged once (edge rows zeroed), reread every step: keeping
//            D/8 Q fragments in registers as well as the D/8 output fragments would not fit D = 256.
//   K, V     threadgroup, [BLOCK_K][ROW]   each loaded once per step by the whole threadgroup and read
//            by every SIMD-group; separate tiles so both loads share one barrier pair.
//   S, P     registers: each lane holds 2 elements of every 8x8 fragment, all in one query row.
//   O        registers: D/8 float fragments per SIMD-group, rescaled in place.
//   m, l     registers: one float each per lane (the lane's query row), the same in the 4 lanes of a row.
// ROW = D + 16 bytes of padding: with rows exactly D*sizeof(T) apart (a multiple of 128 bytes for most
// D) the 8 rows of an 8x8 fragment load fall on the same threadgroup-memory banks; 16 bytes shift each
// row by 4 banks.
//
// Threadgroup memory is one dynamic buffer, [[threadgroup(0)]], whose length the host sets at dispatch
// (setThreadgroupMemoryLength:atIndex:0): Metal compiles the library before the function constants
// have values, so BLOCK_Q, BLOCK_K and HEAD_DIM cannot size a `threadgroup` array (nor any array). The
// buffer is carved, in this order, into
//   q_tile  BLOCK_Q rows of ROW    at byte 0
//   k_tile  BLOCK_K rows of ROW    at byte BLOCK_Q * ROW_BYTES
//   v_tile  BLOCK_K rows of ROW    at byte (BLOCK_Q + BLOCK_K) * ROW_BYTES
// with ROW_BYTES = D * sizeof(T) + 16, a multiple of 16 for every supported D (D % 8 == 0), so every
// tile starts 16-byte aligned and the total, (BLOCK_Q + 2 * BLOCK_K) * (D * sizeof(T) + 16), is the
// multiple of 16 Metal requires of a threadgroup-memory length. That total is
// attention_proto.flash_attention.threadgroup_bytes() and threadgroup_bytes() in
// src/protos/flash_attention.cpp, which dispatch exactly that many bytes at index 0.
//
// Register arrays have literal sizes for the same reason: MAX_HEAD_DIM / 8 output fragments and
// MAX_BLOCK_K / 8 score fragments. Every loop over them is bounded by D_FRAGS / K_FRAGS and marked for
// full unrolling, so after specialisation the elements past those counts are never touched (dead).
// Whether Apple's compiler does unroll once the constants are known, keeping the used fragments in
// registers rather than spilling a dynamically indexed array, is to be checked on an M4.
#include <metal_stdlib>
#include "attention_params.h"
#include "rope.h"
using namespace metal;

// Prototype 4 (src/protos/function_constants.cpp) builds this kernel three ways; the default is the
// function constants. APROTO_SPECIALISE_BY_DEFINES: the same values as literal defines, a library per
// variant, register arrays sized exactly. APROTO_RUNTIME_ARGS: no specialisation, the values read from
// the params `p` in scope, register arrays at the maxima APROTO_MAX_HEAD_DIM / APROTO_MAX_BLOCK_K.
#if defined(APROTO_SPECIALISE_BY_DEFINES)
constant constexpr uint BLOCK_Q = APROTO_BLOCK_Q;
constant constexpr uint BLOCK_K = APROTO_BLOCK_K;
constant constexpr uint HEAD_DIM = APROTO_HEAD_DIM;
constant constexpr bool CAUSAL = APROTO_CAUSAL;
constant constexpr bool WRITE_LSE = APROTO_WRITE_LSE;
#define APROTO_MAX_HEAD_DIM APROTO_HEAD_DIM
#define APROTO_MAX_BLOCK_K APROTO_BLOCK_K
#elif defined(APROTO_RUNTIME_ARGS)
#define BLOCK_Q (p.block_q)
#define BLOCK_K (p.block_k)
#define HEAD_DIM (p.head_dim)
#define CAUSAL (p.causal != 0)
#define WRITE_LSE (p.write_lse != 0)
#else
constant uint BLOCK_Q   [[function_constant(0)]];  // query rows per threadgroup, multiple of 8
constant uint BLOCK_K   [[function_constant(1)]];  // keys per step, multiple of 8
constant uint HEAD_DIM  [[function_constant(2)]];  // D: 32, 64, 80, 96, 128 or 256
constant bool CAUSAL    [[function_constant(3)]];
constant bool WRITE_LSE [[function_constant(4)]];
#endif
// Variants (prototype 7), each off in the base kernel so it compiles to exactly what it was. Their
// arguments: alibi slopes (buffer 6) and FlashVariantParams (buffer 7, attention_params.h).
constant bool USE_ALIBI   [[function_constant(5)]];  // + slope_h * (j - (i + Nk - Nq)) on the scaled score
constant bool USE_SOFTCAP [[function_constant(6)]];  // score -> softcap * tanh(score / softcap), before bias, mask
constant bool USE_ROPE    [[function_constant(7)]];  // Q and K rotated (rope.h) as their tiles are loaded
constant bool ROPE_NEOX   [[function_constant(8)]];  // USE_ROPE: neox pairs, else gptj

#if defined(APROTO_RUNTIME_ARGS)
#define SIMDGROUPS (BLOCK_Q / 8)
#define THREADS (SIMDGROUPS * 32)
#define D_FRAGS (HEAD_DIM / 8)
#define K_FRAGS (BLOCK_K / 8)
#else
constant uint SIMDGROUPS = BLOCK_Q / 8;      // one SIMD-group per 8 query rows
constant uint THREADS = SIMDGROUPS * 32;
constant uint D_FRAGS = HEAD_DIM / 8;        // 8x8 fragments across the head dimension
constant uint K_FRAGS = BLOCK_K / 8;         // 8x8 fragments across one step of keys
#endif
constant uint ROW_PAD_BYTES = 16;

// Literal maxima for the register arrays (array sizes must be compile-time constants in MSL; function
// constants are not). src/protos/flash_attention.cpp (supported_head_dims, kMaxBlockK) and the Python
// API (HEAD_DIMS, MAX_BLOCK_K) reject head dims and block_k above them.
#ifndef APROTO_MAX_HEAD_DIM
#define APROTO_MAX_HEAD_DIM 256u  // largest supported D
#define APROTO_MAX_BLOCK_K 128u   // largest block_k, the sweep's largest tile
#endif
constant constexpr uint MAX_HEAD_DIM = APROTO_MAX_HEAD_DIM;
constant constexpr uint MAX_BLOCK_K = APROTO_MAX_BLOCK_K;

// Loops over the 8x8 fragments index register arrays (acc, s, p_frag); unrolled once the function
// constants fix their trip counts, the arrays stay in registers instead of spilling. (The host
// backend's C++ compiler decides for itself; unrolling there only costs compile time.)
#if defined(__METAL_VERSION__) && !defined(APROTO_RUNTIME_ARGS)  // runtime trip counts cannot unroll fully
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL
#endif

// Fused RoPE: elements col .. col + 3 of a row at position `pos`, rotated in float as rope.metal does
// and rounded to T, as the separate pass stores them. Each partner element is read from device memory
// (the same row; for neox usually another thread's chunk).
template <typename T>
vec<T, 4> rotate_chunk(vec<T, 4> x, device const T* row, uint col, int pos, constant FlashVariantParams& vp)
{
    for (uint c = 0; c < 4; c++) {
        if (col + c < vp.rope_dim) {
            const RopeElement e = rope_element(col + c, vp.rope_dim, ROPE_NEOX);
            const float angle = rope_angle(float(pos), e.pair, vp.rope_freq_exp);
            x[c] = T(float(x[c]) * cos(angle) + e.sign * float(row[e.partner]) * sin(angle));
        }
    }
    return x;
}

// Copies rows [first, first + rows) of a [len, HEAD_DIM] matrix into a tile with `row_stride`; rows at
// or past `len` become 0 (not NaN or stale data: the kernel multiplies them, and 0 * NaN is NaN).
// Four elements per thread per step; a chunk never crosses a row since HEAD_DIM % 8 == 0. With
// `rotate` (Q and K when USE_ROPE), row first + r is rotated at position pos0 + first + r. `p` is read
// only by the runtime-argument build (HEAD_DIM, THREADS are its fields there).
template <typename T>
void load_rows(threadgroup T* tile, uint row_stride, device const T* src, uint first, uint len, uint rows,
               ushort tid, bool rotate, int pos0, constant FlashAttentionParams& p,
               constant FlashVariantParams& vp)
{
    const uint chunks_per_row = HEAD_DIM / 4;
    for (uint c = tid; c < rows * chunks_per_row; c += THREADS) {
        const uint r = c / chunks_per_row;
        const uint col = (c % chunks_per_row) * 4;
        vec<T, 4> x = vec<T, 4>(T(0));
        if (first + r < len) {
            device const T* row = src + ulong(first + r) * HEAD_DIM;
            x = *(device const vec<T, 4>*)(row + col);
            if (USE_ROPE && rotate) {
                x = rotate_chunk(x, row, col, pos0 + int(first + r), vp);
            }
        }
        *(threadgroup vec<T, 4>*)(tile + r * row_stride + col) = x;
    }
}

// `smem` is the [[threadgroup(0)]] buffer of (BLOCK_Q + 2 * BLOCK_K) * row_stride elements of T,
// carved into the Q, K and V tiles (see the header comment).
template <typename T>
void attention_forward(device const T* q, device const T* k, device const T* v, device T* o,
                       device float* lse, constant FlashAttentionParams& p, device const float* alibi_slopes,
                       constant FlashVariantParams& vp, threadgroup T* smem, uint3 group, ushort sg,
                       ushort lane, ushort tid)
{
    const uint row_stride = HEAD_DIM + ROW_PAD_BYTES / sizeof(T);  // elements; ROW_BYTES / sizeof(T)
    threadgroup T* q_tile = smem;
    threadgroup T* k_tile = q_tile + BLOCK_Q * row_stride;
    threadgroup T* v_tile = k_tile + BLOCK_K * row_stride;
    const uint q_start = group.x * BLOCK_Q;
    const uint head = group.y, batch = group.z;
    const uint kv_head = head / p.q_per_kv;
    // 64-bit offsets: B * H * N * D may pass 2^32 elements.
    const ulong q_offset = (ulong(batch) * p.q_heads + head) * p.q_len * HEAD_DIM;
    const ulong kv_offset = (ulong(batch) * p.kv_heads + kv_head) * p.kv_len * HEAD_DIM;
    q += q_offset;
    o += q_offset;
    k += kv_offset;
    v += kv_offset;

    load_rows(q_tile, row_stride, q, q_start, p.q_len, BLOCK_Q, tid, true, vp.rope_q_offset, p, vp);

    // Keys this query block needs: all of them, or with the causal mask those up to what its last
    // row sees. 0 blocks when no row of the block sees a key (Nq > Nk); the loop then never runs.
    uint kv_end = p.kv_len;
    if (CAUSAL) {
        const int last_visible = int(min(q_start + BLOCK_Q, p.q_len)) + int(p.kv_len) - int(p.q_len);
        kv_end = uint(clamp(last_visible, 0, int(p.kv_len)));
    }

    // Apple's 8x8 fragment layout: this lane holds row `frag_row`, columns frag_col and frag_col + 1 of
    // every fragment. The lanes sharing a row differ in lane bits 0 and 3 (shuffle_xor 1 and 8).
    const ushort frag_row = ((lane / 4) & 4) + (lane / 2) % 4;
    const ushort frag_col = ((lane / 4) & 2) * 2 + (lane % 2) * 2;
    const uint row = q_start + sg * 8 + frag_row;          // this lane's query row (may be >= Nq)
    const int last_key = int(row) + int(p.kv_len) - int(p.q_len);  // causal: last key the row sees
    threadgroup const T* q_rows = q_tile + sg * 8 * row_stride;

    simdgroup_matrix<float, 8, 8> acc[MAX_HEAD_DIM / 8];  // D_FRAGS used
    UNROLL
    for (uint d = 0; d < D_FRAGS; d++) {
        acc[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    float row_max = -INFINITY;  // running max of the row's scores, log2 domain
    const float slope_log2 = USE_ALIBI ? alibi_slopes[head] * M_LOG2E_F : 0.0f;  // the bias in the exp2 domain
    float row_sum = 0.0f;       // running sum of exp2(score - row_max)

    for (uint key_start = 0; key_start < kv_end; key_start += BLOCK_K) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // Q tile written / last step's K, V read
        load_rows(k_tile, row_stride, k, key_start, p.kv_len, BLOCK_K, tid, true, vp.rope_k_offset, p, vp);
        load_rows(v_tile, row_stride, v, key_start, p.kv_len, BLOCK_K, tid, false, 0, p, vp);
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // S = Q K^T for this SIMD-group's 8 rows: K^T fragments are transposed loads of the K tile.
        simdgroup_matrix<float, 8, 8> s[MAX_BLOCK_K / 8];  // K_FRAGS used
        UNROLL
        for (uint j = 0; j < K_FRAGS; j++) {
            s[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        }
        UNROLL
        for (uint d = 0; d < D_FRAGS; d++) {
            simdgroup_matrix<T, 8, 8> q_frag;
            simdgroup_load(q_frag, q_rows + d * 8, row_stride);
            UNROLL
            for (uint j = 0; j < K_FRAGS; j++) {
                simdgroup_matrix<T, 8, 8> kt_frag;
                simdgroup_load(kt_frag, k_tile + j * 8 * row_stride + d * 8, row_stride, ulong2(0), true);
                simdgroup_multiply_accumulate(s[j], q_frag, kt_frag, s[j]);
            }
        }

        // Scale into the log2 domain, cap, add the bias and mask. Only blocks that reach past Nk or
        // cross the causal diagonal test each element; the condition is the same for the whole
        // threadgroup. Softcap and ALiBi are defined on the scaled score in natural units: the cap
        // takes x ln 2 and returns to the log2 domain times log2(e), the bias is slope * log2(e) per key.
        const bool past_end = key_start + BLOCK_K > p.kv_len;
        const bool on_diagonal = CAUSAL && int(key_start + BLOCK_K) - 1 > int(q_start) + int(p.kv_len) - int(p.q_len);
        float step_max = -INFINITY;
        UNROLL
        for (uint j = 0; j < K_FRAGS; j++) {
            thread auto& e = s[j].thread_elements();
            UNROLL
            for (uint c = 0; c < 2; c++) {
                float x = e[c] * p.scale_log2;
                if (USE_SOFTCAP) {  // natural units: x ln2 is the scaled score; capped, back times log2(e)
                    x = vp.softcap_log2 * tanh(x * vp.softcap_scale);
                }
                const int key = int(key_start + j * 8 + frag_col + c);
                if (USE_ALIBI) {  // slope * (key - last_key), before the mask
                    x += slope_log2 * float(key - last_key);
                }
                if (past_end || on_diagonal) {
                    if (key >= int(p.kv_len) || (CAUSAL && key > last_key)) {
                        x = -INFINITY;
                    }
                }
                e[c] = x;
                step_max = max(step_max, x);
            }
        }
        step_max = max(step_max, simd_shuffle_xor(step_max, 1));
        step_max = max(step_max, simd_shuffle_xor(step_max, 8));

        // Online softmax. A row that has seen no visible key keeps max = -inf; shifting by 0 instead
        // keeps exp2(-inf - shift) = 0 and avoids -inf - -inf = NaN.
        //
        // exp2, not fast::exp2: both arguments below can be -inf (row_max before the first visible key,
        // masked scores), and Metal's fast:: functions do not promise IEEE handling of infinities, so
        // only the precise exp2 guarantees exp2(-inf) = 0 (correctness first). Plain exp2 is the
        // precise one because the library is compiled without fast math (the Metal backend's default,
        // and -fno-fast-math for prebuilt metallibs; APROTO_METAL_FAST_MATH=1 voids this, and then
        // also the -INFINITY comparisons). Whether fast::exp2 with a finite sentinel (e.g. -1e30 for
        // masked scores and the initial max) is measurably faster is a question to measure on an M4.
        const float new_max = max(row_max, step_max);
        const float shift = new_max == -INFINITY ? 0.0f : new_max;
        const float alpha = exp2(row_max - shift);  // rescales what was accumulated so far
        row_max = new_max;

        // P = exp2(S - max) in T: the P V product runs at the input precision, accumulating in float.
        simdgroup_matrix<T, 8, 8> p_frag[MAX_BLOCK_K / 8];  // K_FRAGS used
        float step_sum = 0.0f;
        UNROLL
        for (uint j = 0; j < K_FRAGS; j++) {
            thread auto& e = s[j].thread_elements();
            thread auto& pe = p_frag[j].thread_elements();
            const float p0 = exp2(e[0] - shift);  // e[c] = -inf where masked
            const float p1 = exp2(e[1] - shift);
            pe[0] = T(p0);
            pe[1] = T(p1);
            step_sum += p0 + p1;
        }
        step_sum += simd_shuffle_xor(step_sum, 1);
        step_sum += simd_shuffle_xor(step_sum, 8);
        row_sum = row_sum * alpha + step_sum;

        UNROLL
        for (uint d = 0; d < D_FRAGS; d++) {
            thread auto& oe = acc[d].thread_elements();
            oe[0] *= alpha;
            oe[1] *= alpha;
            UNROLL
            for (uint j = 0; j < K_FRAGS; j++) {
                simdgroup_matrix<T, 8, 8> v_frag;
                simdgroup_load(v_frag, v_tile + j * 8 * row_stride + d * 8, row_stride);
                simdgroup_multiply_accumulate(acc[d], p_frag[j], v_frag, acc[d]);
            }
        }
    }

    // Each lane stores its own 2 elements per fragment straight from registers: rows past Nq are
    // skipped without a staging tile. A row that saw no key has row_sum = 0 and outputs 0.
    if (row < p.q_len) {
        const float inv_sum = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
        device T* out = o + ulong(row) * HEAD_DIM + frag_col;
        UNROLL
        for (uint d = 0; d < D_FRAGS; d++) {
            thread auto& oe = acc[d].thread_elements();
            out[d * 8] = T(oe[0] * inv_sum);
            out[d * 8 + 1] = T(oe[1] * inv_sum);
        }
        if (WRITE_LSE && frag_col == 0) {  // one lane of the row's four
            const ulong index = (ulong(batch) * p.q_heads + head) * p.q_len + row;
            lse[index] = row_sum > 0.0f ? (row_max + log2(row_sum)) * M_LN2_F : -INFINITY;
        }
    }
}

// One kernel per element type over the shared body. Grid: (ceil(Nq / BLOCK_Q), Hq, B) threadgroups of
// BLOCK_Q / 8 * 32 threads. lse (buffer 4) is written only when WRITE_LSE, alibi_slopes (buffer 6) read
// only when USE_ALIBI. smem (threadgroup(0)) must
// be threadgroup_bytes() = (BLOCK_Q + 2 * BLOCK_K) * (HEAD_DIM * sizeof(T) + 16) bytes long.
kernel void flash_attention_f32(device const float* q [[buffer(0)]], device const float* k [[buffer(1)]],
                                device const float* v [[buffer(2)]], device float* o [[buffer(3)]],
                                device float* lse [[buffer(4)]],
                                constant FlashAttentionParams& p [[buffer(5)]],
                                device const float* alibi_slopes [[buffer(6)]],
                                constant FlashVariantParams& vp [[buffer(7)]],
                                threadgroup float* smem [[threadgroup(0)]],
                                uint3 group [[threadgroup_position_in_grid]],
                                ushort sg [[simdgroup_index_in_threadgroup]],
                                ushort lane [[thread_index_in_simdgroup]],
                                ushort tid [[thread_index_in_threadgroup]])
{
    attention_forward(q, k, v, o, lse, p, alibi_slopes, vp, smem, group, sg, lane, tid);
}

kernel void flash_attention_f16(device const half* q [[buffer(0)]], device const half* k [[buffer(1)]],
                                device const half* v [[buffer(2)]], device half* o [[buffer(3)]],
                                device float* lse [[buffer(4)]],
                                constant FlashAttentionParams& p [[buffer(5)]],
                                device const float* alibi_slopes [[buffer(6)]],
                                constant FlashVariantParams& vp [[buffer(7)]],
                                threadgroup half* smem [[threadgroup(0)]],
                                uint3 group [[threadgroup_position_in_grid]],
                                ushort sg [[simdgroup_index_in_threadgroup]],
                                ushort lane [[thread_index_in_simdgroup]],
                                ushort tid [[thread_index_in_threadgroup]])
{
    attention_forward(q, k, v, o, lse, p, alibi_slopes, vp, smem, group, sg, lane, tid);
}

kernel void flash_attention_bf16(device const bfloat* q [[buffer(0)]], device const bfloat* k [[buffer(1)]],
                                 device const bfloat* v [[buffer(2)]], device bfloat* o [[buffer(3)]],
                                 device float* lse [[buffer(4)]],
                                 constant FlashAttentionParams& p [[buffer(5)]],
                                 device const float* alibi_slopes [[buffer(6)]],
                                 constant FlashVariantParams& vp [[buffer(7)]],
                                 threadgroup bfloat* smem [[threadgroup(0)]],
                                 uint3 group [[threadgroup_position_in_grid]],
                                 ushort sg [[simdgroup_index_in_threadgroup]],
                                 ushort lane [[thread_index_in_simdgroup]],
                                 ushort tid [[thread_index_in_threadgroup]])
{
    attention_forward(q, k, v, o, lse, p, alibi_slopes, vp, smem, group, sg, lane, tid);
}
