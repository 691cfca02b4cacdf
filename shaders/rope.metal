// Rotary position embedding as a separate pass (how MLX, llama.cpp and vLLM run it): out = RoPE(x) for
// x, out [B, H, N, D] (C-contiguous), computed in float and rounded to T once. The rotation itself,
// both pairings (neox, gptj) and partial rotary dims are in rope.h, shared with the pass fused into
// flash attention's tile loads (flash_attention.metal).
//
// Positions: offset + n for row n, or positions[n], or positions[b, n] (int), chosen by POSITIONS.
//
// Work split: one thread per pair of a row, so each pair's sin and cos are computed once. A
// threadgroup is one SIMD-group wide (32 threads over a row's pairs, stepping by 32 when D / 2 > 32)
// and ROWS rows tall; the grid is ceil(N / ROWS) x (B * H) threadgroups. Dims past the rotary ones are copied
// by the same threads, two per thread, so a row is written by one SIMD-group. Every access is
// scalar: D may be any size and rotary_dim any even number, so no vector access is aligned in
// general, and neighbouring threads touch neighbouring elements (neox) or pairs (gptj) either way.
#include <metal_stdlib>
#include "attention_params.h"
#include "rope.h"
using namespace metal;

constant bool NEOX      [[function_constant(0)]];  // false: gptj pairs
constant uint POSITIONS [[function_constant(1)]];  // 0: offset + n; 1: positions[n]; 2: positions[b, n]

constant constexpr uint ROWS = 8;  // rows per threadgroup: the threadgroup's y size (src/protos/attention_variants.cpp)

template <typename T>
void rope_rows(device const T* x, device const int* positions, device T* out, constant RopeParams& p, uint3 group,
               uint3 local)
{
    const uint n = group.x * ROWS + local.y;
    if (n >= p.seq_len) {
        return;
    }
    const uint bh = group.y;  // batch * heads + head
    const uint b = bh / p.heads;
    const int position = POSITIONS == 0 ? p.offset + int(n) : POSITIONS == 1 ? positions[n] : positions[b * p.seq_len + n];
    const float pos = float(position);
    const ulong row = (ulong(bh) * p.seq_len + n) * p.head_dim;
    x += row;
    out += row;
    const uint pairs = p.rotary_dim / 2;
    const uint rest = p.head_dim - p.rotary_dim;  // pass-through dims, copied two per thread
    for (uint j = local.x; j < pairs + (rest + 1) / 2; j += 32) {
        if (j < pairs) {
            const uint2 d = rope_pair(j, p.rotary_dim, NEOX);
            const float angle = rope_angle(pos, j, p.freq_exp);
            const float c = cos(angle), s = sin(angle);
            const float xa = float(x[d.x]), xb = float(x[d.y]);
            out[d.x] = T(xa * c - xb * s);
            out[d.y] = T(xb * c + xa * s);
        } else {
            const uint d = p.rotary_dim + 2 * (j - pairs);
            out[d] = x[d];
            if (d + 1 < p.head_dim) {
                out[d + 1] = x[d + 1];
            }
        }
    }
}

// Grid: (ceil(N / ROWS), B * H) threadgroups of (32, ROWS) threads. positions (buffer 1) is read only
// when POSITIONS != 0.
kernel void rope_f32(device const float* x [[buffer(0)]], device const int* positions [[buffer(1)]],
                     device float* out [[buffer(2)]], constant RopeParams& p [[buffer(3)]],
                     uint3 group [[threadgroup_position_in_grid]], uint3 local [[thread_position_in_threadgroup]])
{
    rope_rows(x, positions, out, p, group, local);
}

kernel void rope_f16(device const half* x [[buffer(0)]], device const int* positions [[buffer(1)]],
                     device half* out [[buffer(2)]], constant RopeParams& p [[buffer(3)]],
                     uint3 group [[threadgroup_position_in_grid]], uint3 local [[thread_position_in_threadgroup]])
{
    rope_rows(x, positions, out, p, group, local);
}

kernel void rope_bf16(device const bfloat* x [[buffer(0)]], device const int* positions [[buffer(1)]],
                      device bfloat* out [[buffer(2)]], constant RopeParams& p [[buffer(3)]],
                      uint3 group [[threadgroup_position_in_grid]], uint3 local [[thread_position_in_threadgroup]])
{
    rope_rows(x, positions, out, p, group, local);
}
