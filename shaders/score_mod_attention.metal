// Attention with a user score modifier in the inner loop (PyTorch FlexAttention's `score_mod`):
//   s = score_mod(scale * q_i . k_j, batch, head, i, j);  causal mask;  o_i = softmax_j(s) v
// with i the query's row (0..Nq-1) and j the key's (0..Nk-1). A modifier returning -INFINITY masks the key.
//
// The modifier reaches the kernel in one of the four ways Metal offers, chosen by the SCORE_MOD_MODE define:
//   0 inline   `score_mod` is defined in the text compiled before this file: one function, inlined;
//   1 linked   `extern score_mod_linked`, a [[visible]] function of another library that the pipeline
//              links at creation (MTLLinkedFunctions.privateFunctions); a stitched function (an
//              MTLFunctionStitchingGraph of [[stitchable]] functions) is linked the same way;
//   2 table    entry params.table_index of a visible_function_table bound at buffer(5): an indirect call
//              whose target the caller picks per dispatch, without recompiling.
// The rest of the kernel is the same in every mode, so timing the modes side by side measures the call.
//
// Tensors (C-contiguous): q, o [B, Hq, Nq, D]; k, v [B, Hkv, Nk, D]; query head h reads kv head
// h / (Hq / Hkv). Causal masks are bottom-right aligned (query i sees keys j <= i + Nk - Nq); a row that
// sees no key, or whose keys the modifier all masks, outputs 0.
//
// Work split, kept plain on purpose (the question is the modifier's call cost, not peak speed): a
// threadgroup of ROWS threads owns ROWS query rows of one (batch, head), one row per thread, with q, the
// output accumulator and the softmax statistics in registers. Each step stages BLOCK_K keys and values
// as float in the [[threadgroup(0)]] buffer, 2 * BLOCK_K * HEAD_DIM * 4 bytes (32 KB at D = 128), which
// every thread then reads.
#include <metal_stdlib>
#include "score_mod_attention_params.h"
using namespace metal;

#ifndef SCORE_MOD_MODE  // the package always sets it; linked is the one mode that compiles on its own (metallib)
#define SCORE_MOD_MODE 1
#endif

constant uint HEAD_DIM [[function_constant(0)]];  // D, 1..MAX_HEAD_DIM
constant bool CAUSAL   [[function_constant(1)]];

constant constexpr uint ROWS = 32;           // query rows (threads) per threadgroup
constant constexpr uint BLOCK_K = 32;        // keys per staged tile
constant constexpr uint MAX_HEAD_DIM = 128;  // register arrays need a literal size

// The modifier's signature, in every mode.
typedef float score_mod_fn(float score, uint batch, uint head, uint q_idx, uint kv_idx);

#if SCORE_MOD_MODE == 1
extern float score_mod_linked(float score, uint batch, uint head, uint q_idx, uint kv_idx);
#define SCORE_MOD(s, b, h, i, j) score_mod_linked(s, b, h, i, j)
#elif SCORE_MOD_MODE == 2
#define SCORE_MOD(s, b, h, i, j) score_mods[params.table_index](s, b, h, i, j)
#else
#define SCORE_MOD(s, b, h, i, j) score_mod(s, b, h, i, j)
#endif

template <typename T>
kernel void score_mod_attention(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                                device const T* v [[buffer(2)]], device T* o [[buffer(3)]],
                                constant ScoreModAttentionParams& params [[buffer(4)]],
#if SCORE_MOD_MODE == 2
                                visible_function_table<score_mod_fn> score_mods [[buffer(5)]],
#endif
                                threadgroup float* tiles [[threadgroup(0)]],
                                uint3 group [[threadgroup_position_in_grid]],
                                uint lane [[thread_index_in_threadgroup]]) {
  const uint b = group.z, h = group.y, row = group.x * ROWS + lane;
  const bool active = row < params.q_len;
  const ulong q_off = ((ulong(b) * params.q_heads + h) * params.q_len + min(row, params.q_len - 1)) * HEAD_DIM;
  const ulong kv_off = (ulong(b) * params.kv_heads + h / params.q_per_kv) * params.kv_len * HEAD_DIM;
  threadgroup float* k_tile = tiles;
  threadgroup float* v_tile = tiles + BLOCK_K * HEAD_DIM;

  float qr[MAX_HEAD_DIM], acc[MAX_HEAD_DIM];
  for (uint d = 0; d < HEAD_DIM; d++) {
    qr[d] = float(q[q_off + d]);
    acc[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  // Causal: this row's last visible key, and the group's (every thread runs the same steps: barriers).
  const long shift = long(params.kv_len) - long(params.q_len);
  const long last = CAUSAL ? long(row) + shift : long(params.kv_len) - 1;
  const long group_end = CAUSAL ? clamp(long(group.x * ROWS + ROWS - 1) + shift + 1, 0l, long(params.kv_len))
                                : long(params.kv_len);
  for (uint start = 0; long(start) < group_end; start += BLOCK_K) {
    const uint n = min(BLOCK_K, params.kv_len - start);
    threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous tile is no longer read
    for (uint e = lane; e < n * HEAD_DIM; e += ROWS) {
      k_tile[e] = float(k[kv_off + ulong(start) * HEAD_DIM + e]);
      v_tile[e] = float(v[kv_off + ulong(start) * HEAD_DIM + e]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint t = 0; t < n && active && long(start + t) <= last; t++) {
      float s = 0.0f;
      for (uint d = 0; d < HEAD_DIM; d++) s += qr[d] * k_tile[t * HEAD_DIM + d];
      s = SCORE_MOD(s * params.scale, b, h, row, start + t);
      if (s == -INFINITY) continue;  // masked by the modifier: weight 0
      const float m_new = max(m, s);
      const float alpha = exp(m - m_new), p = exp(s - m_new);
      l = l * alpha + p;
      for (uint d = 0; d < HEAD_DIM; d++) acc[d] = acc[d] * alpha + p * v_tile[t * HEAD_DIM + d];
      m = m_new;
    }
  }
  if (!active) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no visible key: 0
  for (uint d = 0; d < HEAD_DIM; d++) o[q_off + d] = T(acc[d] * inv);
}

template [[host_name("score_mod_attention_f32")]] kernel decltype(score_mod_attention<float>) score_mod_attention<float>;
template [[host_name("score_mod_attention_f16")]] kernel decltype(score_mod_attention<half>) score_mod_attention<half>;
template [[host_name("score_mod_attention_bf16")]] kernel decltype(score_mod_attention<bfloat>) score_mod_attention<bfloat>;
