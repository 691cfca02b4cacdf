// The paged KV cache writer (vLLM's reshape_and_cache): copies the keys and values of new tokens into
// their cache slots, in place, in either layout of paged_kv_cache.h.
//
// k, v [tokens, kv_heads, D] (C-contiguous); slot_mapping int [tokens]: token t goes to slot
// slot_mapping[t] = block * BLOCK_SIZE + offset, or nowhere when it is -1 (padding). The host has
// checked every slot against the cache (-1 or in [0, num_blocks * BLOCK_SIZE)) and that no two tokens
// share one, so the threadgroups never race.
//
// Grid (tokens, kv_heads) threadgroups of HEAD_DIM / 4 threads; thread c moves dims [4c, 4c + 4) of
// one key and one value. No threadgroup memory.
#include <metal_stdlib>
#include "attention_params.h"
#include "paged_kv_cache.h"
using namespace metal;

template <typename T>
void write_token(device const T* k, device const T* v, device const int* slot_mapping, device T* k_cache,
                 device T* v_cache, constant PagedKvWriteParams& p, uint3 group, ushort c)
{
    const uint token = group.x, head = group.y;
    const int slot = slot_mapping[token];
    if (slot < 0) {
        return;
    }
    const uint block_offset = uint(slot) % BLOCK_SIZE;
    const ulong tile = cache_tile(slot / int(BLOCK_SIZE), head, p.kv_heads);
    const ulong source = (ulong(token) * p.kv_heads + head) * HEAD_DIM + 4 * c;
    *(device vec<T, 4>*)(k_cache + tile + key_offset<T>(block_offset, 4 * c)) = *(device const vec<T, 4>*)(k + source);
    const vec<T, 4> v4 = *(device const vec<T, 4>*)(v + source);
    for (uint j = 0; j < 4; j++) {
        v_cache[tile + value_offset(block_offset, 4 * c + j)] = v4[j];
    }
}

kernel void paged_kv_write_f32(device const float* k [[buffer(0)]], device const float* v [[buffer(1)]],
                               device const int* slot_mapping [[buffer(2)]], device float* k_cache [[buffer(3)]],
                               device float* v_cache [[buffer(4)]], constant PagedKvWriteParams& p [[buffer(5)]],
                               uint3 group [[threadgroup_position_in_grid]],
                               ushort c [[thread_index_in_threadgroup]])
{
    write_token(k, v, slot_mapping, k_cache, v_cache, p, group, c);
}

kernel void paged_kv_write_f16(device const half* k [[buffer(0)]], device const half* v [[buffer(1)]],
                               device const int* slot_mapping [[buffer(2)]], device half* k_cache [[buffer(3)]],
                               device half* v_cache [[buffer(4)]], constant PagedKvWriteParams& p [[buffer(5)]],
                               uint3 group [[threadgroup_position_in_grid]],
                               ushort c [[thread_index_in_threadgroup]])
{
    write_token(k, v, slot_mapping, k_cache, v_cache, p, group, c);
}

kernel void paged_kv_write_bf16(device const bfloat* k [[buffer(0)]], device const bfloat* v [[buffer(1)]],
                                device const int* slot_mapping [[buffer(2)]], device bfloat* k_cache [[buffer(3)]],
                                device bfloat* v_cache [[buffer(4)]], constant PagedKvWriteParams& p [[buffer(5)]],
                                uint3 group [[threadgroup_position_in_grid]],
                                ushort c [[thread_index_in_threadgroup]])
{
    write_token(k, v, slot_mapping, k_cache, v_cache, p, group, c);
}
