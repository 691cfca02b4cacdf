// Parameter block of score_mod_attention.metal (buffer(4)), shared with src/protos/score_mod_attention.cpp.
// Plain 4-byte fields: the same size and offsets in MSL and in C++.
#pragma once
#ifndef __METAL_VERSION__
#include <cstdint>
#endif

// q, o [batch, q_heads, q_len, D]; k, v [batch, kv_heads, kv_len, D]. D is the HEAD_DIM constant.
struct ScoreModAttentionParams {
  uint32_t batch;
  uint32_t q_heads;
  uint32_t kv_heads;
  uint32_t q_len;
  uint32_t kv_len;
  uint32_t q_per_kv;     // q_heads / kv_heads (GQA, MQA)
  float scale;           // softmax scale, applied before the modifier (natural-log domain)
  uint32_t table_index;  // table mode: the entry of the visible function table to call
};
