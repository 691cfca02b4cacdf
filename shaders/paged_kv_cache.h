// The paged KV cache: where token t's dims [d, d + 4) of one (block, kv head) live, in the two layouts
// the attention kernels (paged_attention.metal) and the cache writer (paged_kv_write.metal) share.
//
// A cache is num_blocks blocks; block b holds BLOCK_SIZE consecutive tokens of some sequence for every
// kv head. The BLOCK_SIZE x HEAD_DIM tile of (block b, kv head h) starts at element
// (b * kv_heads + h) * BLOCK_SIZE * HEAD_DIM in both layouts; only the order inside a tile differs:
//   blocked  K, V [num_blocks, kv_heads, BLOCK_SIZE, HEAD_DIM]       token-major: a key is one row
//   vllm     K [num_blocks, kv_heads, HEAD_DIM / X, BLOCK_SIZE, X]    X = 16 / sizeof(T) dims of a token
//            V [num_blocks, kv_heads, HEAD_DIM, BLOCK_SIZE]          together (16 bytes); V dim-major
// The vllm layout is vLLM's own (vllm/attention/ops/paged_attn.py, PagedAttention.split_kv_cache), so a
// vLLM cache can be used as it is. d is always a multiple of 4 and X is 4 or 8, so the 4 dims of a
// chunk are adjacent in K in both layouts (one vector access).
#pragma once
#include <metal_stdlib>
using namespace metal;

constant uint HEAD_DIM    [[function_constant(0)]];  // D: 64, 80, 96, 112, 128 or 256
constant uint BLOCK_SIZE  [[function_constant(1)]];  // tokens per cache block: 8, 16 or 32
constant bool VLLM_LAYOUT [[function_constant(4)]];  // false: blocked layout

// First element of the tile of (block, kv head).
inline ulong cache_tile(int block, uint kv_head, uint kv_heads)
{
    return (ulong(block) * kv_heads + kv_head) * (BLOCK_SIZE * HEAD_DIM);
}

// Offset in a key tile of token t, dims [d, d + 4) (adjacent in both layouts).
template <typename T>
inline uint key_offset(uint t, uint d)
{
    if (VLLM_LAYOUT) {
        const uint x = 16 / sizeof(T);
        return (d / x) * (BLOCK_SIZE * x) + t * x + d % x;
    }
    return t * HEAD_DIM + d;
}

// Offset in a value tile of token t, dim d: tokens are adjacent in the vllm layout, dims in the blocked one.
inline uint value_offset(uint t, uint d)
{
    return VLLM_LAYOUT ? d * BLOCK_SIZE + t : t * HEAD_DIM + d;
}
