// Hand-written row softmax, Y = softmax(X) along the last axis, X and Y [rows, cols] float32,
// C-contiguous. The reference the generated softmaxes of prototype 5 are compared with.
//
// One threadgroup of 256 threads (8 SIMD-groups) per row, three passes over the row: the max, the sum of
// exp(x - max), the normalised output. Each pass reads float4 where the row allows it (cols % 4 == 0,
// so every row starts 16-byte aligned), else scalars. Reductions: simd_max / simd_sum inside a
// SIMD-group, then the 8 partial results through threadgroup memory (one barrier pair per reduction).
//
// Launch: grid (rows) threadgroups of 256 threads; buffer 2 is cols.
#include <metal_stdlib>
using namespace metal;

constant constexpr uint THREADS = 256;
constant constexpr uint SIMDGROUPS = THREADS / 32;

// The row-wide result of a per-thread value: max when IS_MAX, else the sum.
template <bool IS_MAX>
static float row_reduce(float v, threadgroup float *partial, uint sg, uint lane) {
    v = IS_MAX ? simd_max(v) : simd_sum(v);
    if (lane == 0) partial[sg] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float r = partial[0];
    for (uint w = 1; w < SIMDGROUPS; ++w) r = IS_MAX ? max(r, partial[w]) : r + partial[w];
    threadgroup_barrier(mem_flags::mem_threadgroup);   // partial is reused by the next reduction
    return r;
}

kernel void softmax(device const float *x [[buffer(0)]], device float *y [[buffer(1)]],
                    constant uint &cols [[buffer(2)]], uint row [[threadgroup_position_in_grid]],
                    uint tid [[thread_index_in_threadgroup]], uint sg [[simdgroup_index_in_threadgroup]],
                    uint lane [[thread_index_in_simdgroup]]) {
    threadgroup float partial[SIMDGROUPS];
    device const float *xr = x + size_t(row) * cols;
    device float *yr = y + size_t(row) * cols;
    const bool vec = cols % 4 == 0;
    const uint n4 = vec ? cols / 4 : 0;   // float4 elements; the scalar loops cover the rest

    float m = -INFINITY;
    for (uint i = tid; i < n4; i += THREADS) {
        const float4 v = ((device const float4 *)xr)[i];
        m = max(m, max(max(v.x, v.y), max(v.z, v.w)));
    }
    for (uint i = 4 * n4 + tid; i < cols; i += THREADS) m = max(m, xr[i]);
    m = row_reduce<true>(m, partial, sg, lane);

    float s = 0.0f;
    for (uint i = tid; i < n4; i += THREADS) {
        const float4 e = exp(((device const float4 *)xr)[i] - m);
        s += e.x + e.y + e.z + e.w;
    }
    for (uint i = 4 * n4 + tid; i < cols; i += THREADS) s += exp(xr[i] - m);
    const float inv = 1.0f / row_reduce<false>(s, partial, sg, lane);

    for (uint i = tid; i < n4; i += THREADS) ((device float4 *)yr)[i] = exp(((device const float4 *)xr)[i] - m) * inv;
    for (uint i = 4 * n4 + tid; i < cols; i += THREADS) yr[i] = exp(xr[i] - m) * inv;
}
