// Parameter block of the linear-attention kernels (shaders/linear_attention.metal), shared with their
// C++ entry point (src/protos/linear_attention.cpp) so both sides agree on the layout byte for byte.
// Plain 4-byte fields only: the struct has the same size and offsets in MSL and in C++.
#pragma once
#ifndef __METAL_VERSION__
#include <cstdint>
#endif

// Tensors (C-contiguous, FLA's layout): q, k [batch, seq_len, heads, K]; v, o [batch, seq_len, heads, V];
// g [batch, seq_len, heads] (float log decay); states [K, V] float: h [batch, chunks, heads, K, V],
// initial and final state [batch, heads, K, V]. K, V and the chunk size are function constants.
struct LinearAttentionParams {
  uint32_t batch;
  uint32_t seq_len;   // T
  uint32_t heads;     // H
  uint32_t chunks;    // ceil(T / CHUNK): the states h holds per (batch, head)
  float scale;        // multiplies q k^T and q S (K^-0.5 by default)
};
