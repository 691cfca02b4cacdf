// Rotary position embedding (RoPE, Su et al., "RoFormer"), the parts shared by the separate pass
// (rope.metal) and the fused one (flash_attention.metal rotates Q and K as it loads their tiles), so
// both compute the same float operations and agree to rounding.
//
// A row x of head_dim dims, rotary_dim R (even, <= head_dim): pair i < R / 2 is rotated by the angle
// theta_i = pos * base^(-2i / R); dims from R on pass through unchanged. The pairs:
//   neox (GPT-NeoX, Llama in HF): (i, i + R/2)  the two halves of the rotary dims
//   gptj (GPT-J, the RoFormer paper): (2i, 2i + 1)  interleaved neighbours
// and a pair (a, b) becomes (a cos - b sin, b cos + a sin).
#pragma once
#include <metal_stdlib>
using namespace metal;

// The dims of pair i.
inline uint2 rope_pair(uint i, uint rotary_dim, bool neox)
{
    return neox ? uint2(i, i + rotary_dim / 2) : uint2(2 * i, 2 * i + 1);
}

// theta_i in float: base^(-2i / R) = exp2(i * freq_exp), freq_exp = -2 log2(base) / R (from the host,
// rounded once from double). Angles grow with pos, so does their float error: about pos * 1e-7 rad.
inline float rope_angle(float pos, uint i, float freq_exp)
{
    return pos * exp2(float(i) * freq_exp);
}

// Element d's rotated value: its pair, partner dim and sign (-1 for the pair's first dim), for loads
// that rotate one element at a time. Dims at or past R are not rotated (callers pass them through).
struct RopeElement {
    uint pair;
    uint partner;
    float sign;
};

inline RopeElement rope_element(uint d, uint rotary_dim, bool neox)
{
    const uint half_dim = rotary_dim / 2;
    if (neox) {
        return d < half_dim ? RopeElement{d, d + half_dim, -1.0f} : RopeElement{d - half_dim, d - half_dim, 1.0f};
    }
    return RopeElement{d / 2, d ^ 1u, (d & 1u) ? 1.0f : -1.0f};
}
