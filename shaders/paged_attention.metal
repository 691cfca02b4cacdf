// PagedAttention decode: one query token per sequence attends to that sequence's keys and values, which
// live in a paged KV cache (paged_kv_cache.h) and are found through the sequence's row of block_tables.
//
// Tensors (C-contiguous): q, out [num_seqs, q_heads, D]; block_tables int [num_seqs, max_blocks_per_seq];
// seq_lens int [num_seqs]; alibi_slopes float [q_heads]. Sequence s has seq_lens[s] tokens; token j is
// slot j % BLOCK_SIZE of block block_tables[s][j / BLOCK_SIZE]. GQA/MQA: q head h reads kv head
// h / (q_heads / kv_heads). ALiBi adds slope_h * (j - (seq_len - 1)) to the scaled score of key j
// (vLLM's convention). The host has checked every block id the kernels read (the first
// ceil(seq_len / BLOCK_SIZE) of each row) and 1 <= seq_len <= max_blocks_per_seq * BLOCK_SIZE. Table
// entries past those and cache slots past seq_len may hold anything, NaN included: no score or value of
// a slot past the sequence is ever kept (scores are dropped, value loops stop at the last token).
//
// Two variants, as in vLLM (csrc/attention) and MLX's 2-pass decode:
//   V1  paged_attention_v1_*: one threadgroup per (head, sequence) holds every score of the sequence in
//       threadgroup memory, so its context is bounded by the 32 KB of an Apple GPU (see below).
//   V2  paged_attention_v2_*: one threadgroup per (head, sequence, partition of PARTITION_SIZE tokens)
//       writes the partition's max score m_p, sum l_p = sum exp2(s - m_p) and un-normalised output
//       o_p = sum exp2(s - m_p) v; paged_attention_reduce_* then combines the partitions:
//       out = sum_p w_p o_p / sum_p w_p l_p with w_p = exp2(m_p - max_p m_p).
// Both run one body (attend) over a token range: V1 the whole sequence, V2 one partition.
//
// Work split of attend, SIMDGROUPS = 4 SIMD-groups (128 threads):
//   scores  SIMD-group g takes blocks g, g + 4, ... of the range; its 32 lanes cover one block: 32 /
//           BLOCK_SIZE lanes per key, each summing HEAD_DIM / (32 / BLOCK_SIZE) dims of q.k in float4
//           chunks, joined by simd_shuffle_xor. q is read from threadgroup memory (float, pre-scaled).
//   softmax the threadgroup's max and sum through SIMD reductions and one float per SIMD-group.
//   P V     SIMD-group g takes the same blocks again; lane l owns dims chunks l and l + 32 (4 dims each;
//           lanes past HEAD_DIM / 4 idle) and walks the block's tokens; then the 4 SIMD-groups' partial
//           outputs are added through threadgroup memory.
// Arithmetic is float throughout: K and V are converted on load, the output rounded once at the end.
//
// Threadgroup memory: one dynamic [[threadgroup(0)]] float buffer (Metal compiles the library before the
// function constants have values, so they cannot size a threadgroup array), carved into
//   q_scaled    HEAD_DIM floats                          at float 0
//   group_max   SIMDGROUPS floats                        at float HEAD_DIM
//   group_sum   SIMDGROUPS floats                        at float HEAD_DIM + SIMDGROUPS
//   logits      max(capacity, SIMDGROUPS * HEAD_DIM)     at float HEAD_DIM + 2 * SIMDGROUPS (16-byte aligned)
// where capacity is the number of scores one threadgroup holds: V2 PARTITION_SIZE, V1 the longest
// seq_len of the call rounded up to BLOCK_SIZE. After the softmax, logits is reused for the SIMD-groups'
// partial outputs (SIMDGROUPS x HEAD_DIM). So a threadgroup needs
//   4 * (HEAD_DIM + 2 * SIMDGROUPS + max(capacity, SIMDGROUPS * HEAD_DIM)) bytes
// (a multiple of 16), the same for every dtype: D = 128 in 32768 bytes holds 8056 scores, so V1 runs
// contexts up to 8048 tokens with BLOCK_SIZE 16. The reduce kernel needs 4 * (2 * SIMDGROUPS +
// max_partitions rounded up to 4) bytes (one weight per partition). src/protos/paged_attention.cpp
// computes both before the dispatch and refuses what does not fit, naming the limit.
#include <metal_stdlib>
#include "attention_params.h"
#include "paged_kv_cache.h"
using namespace metal;

constant uint PARTITION_SIZE [[function_constant(2)]];  // V2: tokens per partition, a multiple of BLOCK_SIZE
constant bool USE_ALIBI      [[function_constant(3)]];

constant constexpr uint SIMDGROUPS = 4;
constant constexpr uint THREADS = SIMDGROUPS * 32;
constant constexpr uint MAX_VALUE_CHUNKS = 2;  // per lane: HEAD_DIM 256 = 64 chunks of 4 over 32 lanes
constant uint CHUNKS = HEAD_DIM / 4;           // float4 chunks of a head; at most 64 < THREADS
constant uint LANES_PER_KEY = 32 / BLOCK_SIZE; // 4, 2 or 1; divides CHUNKS (HEAD_DIM % 16 == 0)
constant uint KEY_CHUNKS_PER_LANE = CHUNKS / LANES_PER_KEY;
constant uint VALUE_CHUNKS_PER_LANE = (CHUNKS + 31) / 32;

// The maximum (sum) of x over the threadgroup. Every thread calls it (it holds a barrier). Each call has
// slots of its own (SIMDGROUPS floats, never rewritten), so no barrier is needed after they are read.
float reduce_max(float x, threadgroup float* slots, ushort sg, ushort lane)
{
    x = simd_max(x);
    if (lane == 0) {
        slots[sg] = x;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float m = slots[0];
    for (uint g = 1; g < SIMDGROUPS; g++) {
        m = max(m, slots[g]);
    }
    return m;
}

float reduce_sum(float x, threadgroup float* slots, ushort sg, ushort lane)
{
    x = simd_sum(x);
    if (lane == 0) {
        slots[sg] = x;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float s = 0.0f;
    for (uint g = 0; g < SIMDGROUPS; g++) {
        s += slots[g];
    }
    return s;
}

// Rounds 4 floats to T and stores them (element by element: the host backend translates conversions to
// named vector types such as half4, not to vec<T, 4>).
template <typename T>
void store4(device T* dst, float4 x)
{
    for (uint j = 0; j < 4; j++) {
        dst[j] = T(x[j]);
    }
}

// What attend returns to every thread: the range's max score and sum (exp2 domain), and, in threads
// tid < CHUNKS, dims [4 tid, 4 tid + 4) of the un-normalised output sum_j exp2(s_j - max) v_j.
struct Partial {
    float4 out;
    float max_score;
    float sum;
};

// Attention of (seq, head)'s query over its tokens [start, end) (start a multiple of BLOCK_SIZE, end <=
// seq_len, start < end). `smem` is the threadgroup(0) buffer of the header comment.
template <typename T>
Partial attend(device const T* q, device const T* k_cache, device const T* v_cache,
               device const int* block_tables, device const float* alibi_slopes,
               constant PagedAttentionParams& p, threadgroup float* smem, uint seq, uint head, uint seq_len,
               uint start, uint end, ushort sg, ushort lane, ushort tid)
{
    threadgroup float* q_scaled = smem;
    threadgroup float* group_max = smem + HEAD_DIM;
    threadgroup float* group_sum = group_max + SIMDGROUPS;
    threadgroup float* logits = group_sum + SIMDGROUPS;
    const uint kv_head = head / p.q_per_kv;
    device const int* table = block_tables + ulong(seq) * p.max_blocks_per_seq;

    device const T* q_row = q + (ulong(seq) * p.q_heads + head) * HEAD_DIM;
    for (uint c = tid; c < CHUNKS; c += THREADS) {
        *(threadgroup float4*)(q_scaled + 4 * c) = float4(*(device const vec<T, 4>*)(q_row + 4 * c)) * p.scale_log2;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Scores. Every lane of a SIMD-group runs the same blocks, so the shuffles see all 32 lanes; lanes of
    // keys past `end` still read their slot (inside a checked block) but their score is dropped.
    const uint key = lane / LANES_PER_KEY, part = lane % LANES_PER_KEY;
    const float slope = USE_ALIBI ? alibi_slopes[head] * M_LOG2E_F : 0.0f;
    const uint first_block = start / BLOCK_SIZE;
    float local_max = -INFINITY;
    for (uint b = first_block + sg; b * BLOCK_SIZE < end; b += SIMDGROUPS) {
        device const T* tile = k_cache + cache_tile(table[b], kv_head, p.kv_heads);
        float score = 0.0f;
        for (uint i = 0; i < KEY_CHUNKS_PER_LANE; i++) {
            const uint d = (i * LANES_PER_KEY + part) * 4;
            const float4 k4 = float4(*(device const vec<T, 4>*)(tile + key_offset<T>(key, d)));
            score += dot(*(threadgroup const float4*)(q_scaled + d), k4);
        }
        for (uint m = LANES_PER_KEY / 2; m > 0; m /= 2) {
            score += simd_shuffle_xor(score, ushort(m));
        }
        const uint token = b * BLOCK_SIZE + key;
        if (token < end) {
            if (USE_ALIBI) {
                score += slope * float(int(token) - int(seq_len - 1));
            }
            if (part == 0) {
                logits[token - start] = score;
            }
            local_max = max(local_max, score);
        }
    }
    const float max_score = reduce_max(local_max, group_max, sg, lane);  // finite: start < end

    // Probabilities, in place; the barrier in threadgroup_sum also publishes them.
    float local_sum = 0.0f;
    for (uint i = tid; i < end - start; i += THREADS) {
        const float e = exp2(logits[i] - max_score);
        logits[i] = e;
        local_sum += e;
    }
    const float sum = reduce_sum(local_sum, group_sum, sg, lane);

    // P V over the same blocks. Loops stop at the last token, so no slot past the sequence is read into
    // the sum (0 * NaN would be NaN); the vllm layout reads 4 tokens at a time and zeroes those past it.
    float4 acc[MAX_VALUE_CHUNKS] = {float4(0.0f), float4(0.0f)};
    for (uint b = first_block + sg; b * BLOCK_SIZE < end; b += SIMDGROUPS) {
        device const T* tile = v_cache + cache_tile(table[b], kv_head, p.kv_heads);
        const uint count = min(BLOCK_SIZE, end - b * BLOCK_SIZE);
        threadgroup const float* probs = logits + (b * BLOCK_SIZE - start);
        for (uint i = 0; i < VALUE_CHUNKS_PER_LANE; i++) {
            const uint c = lane + 32 * i;
            if (c >= CHUNKS) {
                break;
            }
            if (VLLM_LAYOUT) {
                for (uint t = 0; t < count; t += 4) {
                    const uint4 tokens = t + uint4(0, 1, 2, 3);
                    const float4 p4 = select(*(threadgroup const float4*)(probs + t), float4(0.0f), tokens >= count);
                    for (uint j = 0; j < 4; j++) {
                        const float4 v4 = float4(*(device const vec<T, 4>*)(tile + value_offset(t, 4 * c + j)));
                        acc[i][j] += dot(p4, select(v4, float4(0.0f), tokens >= count));
                    }
                }
            } else {
                for (uint t = 0; t < count; t++) {
                    acc[i] += probs[t] * float4(*(device const vec<T, 4>*)(tile + value_offset(t, 4 * c)));
                }
            }
        }
    }

    // Add the SIMD-groups' partial outputs, in the logits area (every SIMD-group is past P V).
    threadgroup_barrier(mem_flags::mem_threadgroup);
    threadgroup float* partial = logits;  // [SIMDGROUPS][HEAD_DIM]
    for (uint i = 0; i < VALUE_CHUNKS_PER_LANE; i++) {
        const uint c = lane + 32 * i;
        if (c < CHUNKS) {
            *(threadgroup float4*)(partial + sg * HEAD_DIM + 4 * c) = acc[i];
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    Partial r{float4(0.0f), max_score, sum};
    if (tid < CHUNKS) {
        for (uint g = 0; g < SIMDGROUPS; g++) {
            r.out += *(threadgroup const float4*)(partial + g * HEAD_DIM + 4 * tid);
        }
    }
    return r;
}

// V1. Grid (q_heads, num_seqs) threadgroups of THREADS.
template <typename T>
void attention_v1(device const T* q, device const T* k_cache, device const T* v_cache,
                  device const int* block_tables, device const int* seq_lens, device const float* alibi_slopes,
                  constant PagedAttentionParams& p, device T* out, threadgroup float* smem, uint3 group,
                  ushort sg, ushort lane, ushort tid)
{
    const uint head = group.x, seq = group.y;
    const uint seq_len = uint(seq_lens[seq]);
    const Partial r = attend(q, k_cache, v_cache, block_tables, alibi_slopes, p, smem, seq, head, seq_len, 0,
                             seq_len, sg, lane, tid);
    if (tid < CHUNKS) {
        store4(out + (ulong(seq) * p.q_heads + head) * HEAD_DIM + 4 * tid, r.out / r.sum);
    }
}

// V2, first pass. Grid (q_heads, num_seqs, max_partitions) threadgroups of THREADS.
template <typename T>
void attention_v2(device const T* q, device const T* k_cache, device const T* v_cache,
                  device const int* block_tables, device const int* seq_lens, device const float* alibi_slopes,
                  constant PagedAttentionParams& p, device float* tmp_out, device float* max_logits,
                  device float* exp_sums, threadgroup float* smem, uint3 group, ushort sg, ushort lane, ushort tid)
{
    const uint head = group.x, seq = group.y, partition = group.z;
    const uint seq_len = uint(seq_lens[seq]);
    const uint start = partition * PARTITION_SIZE;
    if (start >= seq_len) {
        return;  // the whole threadgroup: a partition past this sequence, which the reduce never reads
    }
    const Partial r = attend(q, k_cache, v_cache, block_tables, alibi_slopes, p, smem, seq, head, seq_len, start,
                             min(seq_len, start + PARTITION_SIZE), sg, lane, tid);
    const ulong slot = (ulong(seq) * p.q_heads + head) * p.max_partitions + partition;
    if (tid < CHUNKS) {
        *(device float4*)(tmp_out + slot * HEAD_DIM + 4 * tid) = r.out;
    }
    if (tid == 0) {
        max_logits[slot] = r.max_score;  // exp2 domain (scale * log2(e) applied)
        exp_sums[slot] = r.sum;
    }
}

// V2, second pass: combines the ceil(seq_len / PARTITION_SIZE) partitions of (seq, head). Grid (q_heads,
// num_seqs) threadgroups of THREADS; smem = 2 * SIMDGROUPS floats, then one weight per partition.
template <typename T>
void attention_reduce(device const float* tmp_out, device const float* max_logits, device const float* exp_sums,
                      device const int* seq_lens, constant PagedAttentionParams& p, device T* out,
                      threadgroup float* smem, uint3 group, ushort sg, ushort lane, ushort tid)
{
    const uint head = group.x, seq = group.y;
    const uint partitions = (uint(seq_lens[seq]) + PARTITION_SIZE - 1) / PARTITION_SIZE;
    const ulong row = (ulong(seq) * p.q_heads + head) * p.max_partitions;
    threadgroup float* weights = smem + 2 * SIMDGROUPS;

    float local_max = -INFINITY;
    for (uint i = tid; i < partitions; i += THREADS) {
        local_max = max(local_max, max_logits[row + i]);
    }
    const float max_score = reduce_max(local_max, smem, sg, lane);
    float local_sum = 0.0f;
    for (uint i = tid; i < partitions; i += THREADS) {
        const float w = exp2(max_logits[row + i] - max_score);
        weights[i] = w;
        local_sum += w * exp_sums[row + i];
    }
    const float sum = reduce_sum(local_sum, smem + SIMDGROUPS, sg, lane);  // also publishes weights
    if (tid < CHUNKS) {
        float4 o = float4(0.0f);
        for (uint i = 0; i < partitions; i++) {
            o += weights[i] * *(device const float4*)(tmp_out + (row + i) * HEAD_DIM + 4 * tid);
        }
        store4(out + (ulong(seq) * p.q_heads + head) * HEAD_DIM + 4 * tid, o / sum);
    }
}

// One kernel per variant and element type over the shared bodies (written out: the argument lists are
// what both backends check every binding against).
kernel void paged_attention_v1_f32(device const float* q [[buffer(0)]], device const float* k_cache [[buffer(1)]],
                                  device const float* v_cache [[buffer(2)]], device const int* block_tables [[buffer(3)]],
                                  device const int* seq_lens [[buffer(4)]], device const float* alibi_slopes [[buffer(5)]],
                                  constant PagedAttentionParams& p [[buffer(6)]], device float* out [[buffer(7)]],
                                  threadgroup float* smem [[threadgroup(0)]],
                                  uint3 group [[threadgroup_position_in_grid]],
                                  ushort sg [[simdgroup_index_in_threadgroup]],
                                  ushort lane [[thread_index_in_simdgroup]],
                                  ushort tid [[thread_index_in_threadgroup]])
{
    attention_v1(q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes, p, out, smem, group, sg, lane, tid);
}

kernel void paged_attention_v1_f16(device const half* q [[buffer(0)]], device const half* k_cache [[buffer(1)]],
                                  device const half* v_cache [[buffer(2)]], device const int* block_tables [[buffer(3)]],
                                  device const int* seq_lens [[buffer(4)]], device const float* alibi_slopes [[buffer(5)]],
                                  constant PagedAttentionParams& p [[buffer(6)]], device half* out [[buffer(7)]],
                                  threadgroup float* smem [[threadgroup(0)]],
                                  uint3 group [[threadgroup_position_in_grid]],
                                  ushort sg [[simdgroup_index_in_threadgroup]],
                                  ushort lane [[thread_index_in_simdgroup]],
                                  ushort tid [[thread_index_in_threadgroup]])
{
    attention_v1(q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes, p, out, smem, group, sg, lane, tid);
}

kernel void paged_attention_v1_bf16(device const bfloat* q [[buffer(0)]], device const bfloat* k_cache [[buffer(1)]],
                                  device const bfloat* v_cache [[buffer(2)]], device const int* block_tables [[buffer(3)]],
                                  device const int* seq_lens [[buffer(4)]], device const float* alibi_slopes [[buffer(5)]],
                                  constant PagedAttentionParams& p [[buffer(6)]], device bfloat* out [[buffer(7)]],
                                  threadgroup float* smem [[threadgroup(0)]],
                                  uint3 group [[threadgroup_position_in_grid]],
                                  ushort sg [[simdgroup_index_in_threadgroup]],
                                  ushort lane [[thread_index_in_simdgroup]],
                                  ushort tid [[thread_index_in_threadgroup]])
{
    attention_v1(q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes, p, out, smem, group, sg, lane, tid);
}

kernel void paged_attention_v2_f32(device const float* q [[buffer(0)]], device const float* k_cache [[buffer(1)]],
                                  device const float* v_cache [[buffer(2)]], device const int* block_tables [[buffer(3)]],
                                  device const int* seq_lens [[buffer(4)]], device const float* alibi_slopes [[buffer(5)]],
                                  constant PagedAttentionParams& p [[buffer(6)]], device float* tmp_out [[buffer(7)]],
                                  device float* max_logits [[buffer(8)]], device float* exp_sums [[buffer(9)]],
                                  threadgroup float* smem [[threadgroup(0)]],
                                  uint3 group [[threadgroup_position_in_grid]],
                                  ushort sg [[simdgroup_index_in_threadgroup]],
                                  ushort lane [[thread_index_in_simdgroup]],
                                  ushort tid [[thread_index_in_threadgroup]])
{
    attention_v2(q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes, p, tmp_out, max_logits, exp_sums, smem,
                 group, sg, lane, tid);
}

kernel void paged_attention_v2_f16(device const half* q [[buffer(0)]], device const half* k_cache [[buffer(1)]],
                                  device const half* v_cache [[buffer(2)]], device const int* block_tables [[buffer(3)]],
                                  device const int* seq_lens [[buffer(4)]], device const float* alibi_slopes [[buffer(5)]],
                                  constant PagedAttentionParams& p [[buffer(6)]], device float* tmp_out [[buffer(7)]],
                                  device float* max_logits [[buffer(8)]], device float* exp_sums [[buffer(9)]],
                                  threadgroup float* smem [[threadgroup(0)]],
                                  uint3 group [[threadgroup_position_in_grid]],
                                  ushort sg [[simdgroup_index_in_threadgroup]],
                                  ushort lane [[thread_index_in_simdgroup]],
                                  ushort tid [[thread_index_in_threadgroup]])
{
    attention_v2(q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes, p, tmp_out, max_logits, exp_sums, smem,
                 group, sg, lane, tid);
}

kernel void paged_attention_v2_bf16(device const bfloat* q [[buffer(0)]], device const bfloat* k_cache [[buffer(1)]],
                                  device const bfloat* v_cache [[buffer(2)]], device const int* block_tables [[buffer(3)]],
                                  device const int* seq_lens [[buffer(4)]], device const float* alibi_slopes [[buffer(5)]],
                                  constant PagedAttentionParams& p [[buffer(6)]], device float* tmp_out [[buffer(7)]],
                                  device float* max_logits [[buffer(8)]], device float* exp_sums [[buffer(9)]],
                                  threadgroup float* smem [[threadgroup(0)]],
                                  uint3 group [[threadgroup_position_in_grid]],
                                  ushort sg [[simdgroup_index_in_threadgroup]],
                                  ushort lane [[thread_index_in_simdgroup]],
                                  ushort tid [[thread_index_in_threadgroup]])
{
    attention_v2(q, k_cache, v_cache, block_tables, seq_lens, alibi_slopes, p, tmp_out, max_logits, exp_sums, smem,
                 group, sg, lane, tid);
}

kernel void paged_attention_reduce_f32(device const float* tmp_out [[buffer(0)]],
                                      device const float* max_logits [[buffer(1)]],
                                      device const float* exp_sums [[buffer(2)]], device const int* seq_lens [[buffer(3)]],
                                      constant PagedAttentionParams& p [[buffer(4)]], device float* out [[buffer(5)]],
                                      threadgroup float* smem [[threadgroup(0)]],
                                      uint3 group [[threadgroup_position_in_grid]],
                                      ushort sg [[simdgroup_index_in_threadgroup]],
                                      ushort lane [[thread_index_in_simdgroup]],
                                      ushort tid [[thread_index_in_threadgroup]])
{
    attention_reduce(tmp_out, max_logits, exp_sums, seq_lens, p, out, smem, group, sg, lane, tid);
}

kernel void paged_attention_reduce_f16(device const float* tmp_out [[buffer(0)]],
                                      device const float* max_logits [[buffer(1)]],
                                      device const float* exp_sums [[buffer(2)]], device const int* seq_lens [[buffer(3)]],
                                      constant PagedAttentionParams& p [[buffer(4)]], device half* out [[buffer(5)]],
                                      threadgroup float* smem [[threadgroup(0)]],
                                      uint3 group [[threadgroup_position_in_grid]],
                                      ushort sg [[simdgroup_index_in_threadgroup]],
                                      ushort lane [[thread_index_in_simdgroup]],
                                      ushort tid [[thread_index_in_threadgroup]])
{
    attention_reduce(tmp_out, max_logits, exp_sums, seq_lens, p, out, smem, group, sg, lane, tid);
}

kernel void paged_attention_reduce_bf16(device const float* tmp_out [[buffer(0)]],
                                      device const float* max_logits [[buffer(1)]],
                                      device const float* exp_sums [[buffer(2)]], device const int* seq_lens [[buffer(3)]],
                                      constant PagedAttentionParams& p [[buffer(4)]], device bfloat* out [[buffer(5)]],
                                      threadgroup float* smem [[threadgroup(0)]],
                                      uint3 group [[threadgroup_position_in_grid]],
                                      ushort sg [[simdgroup_index_in_threadgroup]],
                                      ushort lane [[thread_index_in_simdgroup]],
                                      ushort tid [[thread_index_in_threadgroup]])
{
    attention_reduce(tmp_out, max_logits, exp_sums, seq_lens, p, out, smem, group, sg, lane, tid);
}
