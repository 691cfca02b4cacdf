// Parameter block of the attention kernels, shared by the MSL shaders and the C++ entry points
// (src/protos/*.cpp) so both sides agree on the layout byte for byte. Plain 4-byte fields only:
// the struct has the same size and offsets in MSL and in C++.
#pragma once
#ifndef __METAL_VERSION__
#include <cstdint>
#endif

// flash_attention.metal, buffer(5). Tensors are C-contiguous: q/o [batch, q_heads, q_len, D],
// k/v [batch, kv_heads, kv_len, D], lse [batch, q_heads, q_len]. D itself is the HEAD_DIM constant.
struct FlashAttentionParams {
  uint32_t batch;
  uint32_t q_heads;
  uint32_t kv_heads;
  uint32_t q_len;
  uint32_t kv_len;
  uint32_t q_per_kv;   // q_heads / kv_heads: query heads sharing one key/value head (GQA, MQA)
  float scale_log2;    // softmax scale * log2(e): scores go straight to the exp2 domain
};
