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
  // Prototype 4's runtime-argument build (APROTO_RUNTIME_ARGS) reads its specialisation from here; the
  // function-constant kernel ignores these (prototype 1 leaves them 0).
  uint32_t block_q;
  uint32_t block_k;
  uint32_t head_dim;
  uint32_t causal;     // 0 or 1
  uint32_t write_lse;  // 0 or 1
};

// paged_attention.metal, buffer(6) of the attention kernels and buffer(4) of the reduce kernel.
// q, out [num_seqs, q_heads, D]; block_tables [num_seqs, max_blocks_per_seq]; the V2 scratch
// tmp_out [num_seqs, q_heads, max_partitions, D], max_logits and exp_sums [num_seqs, q_heads, max_partitions].
struct PagedAttentionParams {
  uint32_t num_seqs;
  uint32_t q_heads;
  uint32_t kv_heads;
  uint32_t q_per_kv;            // q_heads / kv_heads (GQA, MQA)
  uint32_t max_blocks_per_seq;  // row length of block_tables
  uint32_t max_partitions;      // V2: partitions per (sequence, head) in the scratch arrays; V1: 1
  float scale_log2;             // softmax scale * log2(e): scores go straight to the exp2 domain
};

// paged_kv_write.metal, buffer(5). k, v [tokens, kv_heads, D]; slot_mapping [tokens].
struct PagedKvWriteParams {
  uint32_t tokens;
  uint32_t kv_heads;
};

// rope.metal, buffer(3). x, out [batch, heads, seq_len, head_dim]; positions int [seq_len] or
// [batch, seq_len] (the POSITIONS constant says which, or none: offset + n).
struct RopeParams {
  uint32_t batch;
  uint32_t heads;
  uint32_t seq_len;
  uint32_t head_dim;
  uint32_t rotary_dim;  // even, <= head_dim: the dims rotated; the rest pass through
  int32_t offset;       // position of row 0 without a positions array
  float freq_exp;       // -2 log2(base) / rotary_dim: theta_i = pos * exp2(i * freq_exp) (see rope.h)
};

// flash_attention.metal, buffer(7): what the variants (prototype 7) need, read only when their function
// constant is on. alibi slopes are buffer(6), float [q_heads].
struct FlashVariantParams {
  float softcap_scale;  // USE_SOFTCAP: ln(2) / softcap; a score x in the exp2 domain becomes ...
  float softcap_log2;   // ... softcap * log2(e) * tanh(x ln(2) / softcap): capped in natural units
  float rope_freq_exp;    // USE_ROPE: as RopeParams::freq_exp
  uint32_t rope_dim;      // USE_ROPE: rotary_dim
  int32_t rope_q_offset;  // USE_ROPE: position of query row 0
  int32_t rope_k_offset;  // USE_ROPE: position of key 0
};
