// Hand-written tiled GEMM, C = A B: A [M, K] and B [K, N] in float32 or float16, C [M, N] float32,
// all row-major and C-contiguous. The reference the generated GEMMs of prototype 5 are compared with
// (shaders/generated/<generator>/gemm_*.metal).
//
// Work split. One threadgroup owns a 32 x 32 tile of C and runs 4 SIMD-groups in a 2 x 2 grid; each
// SIMD-group owns a 16 x 16 quarter, 2 x 2 fragments of 8 x 8 float accumulators (simdgroup_matrix,
// in registers). Per step of 16 along K the threadgroup stages A [32][16] and B [16][32] in threadgroup
// memory (each element loaded from device memory once per step, out-of-range elements as zeros, so
// any M, N, K works), then every SIMD-group runs 2 x 2 x 2 MMAs from those tiles.
// The tiles are padded by 8 elements per row (16 bytes for half): unpadded rows 16 or 32 elements
// apart put the 8 rows of a fragment load on the same threadgroup-memory banks.
// Full output tiles are stored straight from the accumulators; edge tiles go through threadgroup
// memory so each thread can bounds-check its elements.
//
// Launch: grid (ceil(N / 32), ceil(M / 32)) threadgroups of 128 threads; buffer 3 is GemmParams.
#include <metal_stdlib>
using namespace metal;

struct GemmParams {
    uint M, N, K;
};

constant constexpr uint TILE = 32;        // C tile edge per threadgroup
constant constexpr uint STEP = 16;        // K per staged step
constant constexpr uint PAD = 8;          // row padding of the staged tiles (bank conflicts)
constant constexpr uint THREADS = 128;    // 4 SIMD-groups

template <typename T>
kernel void gemm(device const T *a [[buffer(0)]], device const T *b [[buffer(1)]],
                 device float *c [[buffer(2)]], constant GemmParams &p [[buffer(3)]],
                 uint2 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                 uint sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup T a_tile[TILE][STEP + PAD];
    threadgroup T b_tile[STEP][TILE + PAD];
    threadgroup float c_tile[TILE][TILE];        // edge tiles only

    const uint row0 = tg.y * TILE, col0 = tg.x * TILE;
    const uint sg_row = (sg / 2) * 16, sg_col = (sg % 2) * 16;   // this SIMD-group's quarter

    simdgroup_float8x8 acc[2][2];
    for (uint i = 0; i < 2; ++i)
        for (uint j = 0; j < 2; ++j) acc[i][j] = simdgroup_float8x8(0.0f);

    for (uint k0 = 0; k0 < p.K; k0 += STEP) {
        // Stage: 512 elements of A and 512 of B, 4 of each per thread.
        for (uint e = tid; e < TILE * STEP; e += THREADS) {
            const uint r = e / STEP, k = e % STEP;                        // A: row-major [32][16]
            const uint gr = row0 + r, gk = k0 + k;
            a_tile[r][k] = (gr < p.M && gk < p.K) ? a[gr * p.K + gk] : T(0);
            const uint kb = e / TILE, cb = e % TILE;                      // B: row-major [16][32]
            const uint gkb = k0 + kb, gc = col0 + cb;
            b_tile[kb][cb] = (gkb < p.K && gc < p.N) ? b[gkb * p.N + gc] : T(0);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint kk = 0; kk < STEP; kk += 8) {
            simdgroup_matrix<T, 8, 8> fa[2], fb[2];
            for (uint i = 0; i < 2; ++i) simdgroup_load(fa[i], &a_tile[sg_row + 8 * i][kk], STEP + PAD);
            for (uint j = 0; j < 2; ++j) simdgroup_load(fb[j], &b_tile[kk][sg_col + 8 * j], TILE + PAD);
            for (uint i = 0; i < 2; ++i)
                for (uint j = 0; j < 2; ++j) simdgroup_multiply_accumulate(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    if (row0 + TILE <= p.M && col0 + TILE <= p.N) {
        for (uint i = 0; i < 2; ++i)
            for (uint j = 0; j < 2; ++j)
                simdgroup_store(acc[i][j], c + (row0 + sg_row + 8 * i) * p.N + col0 + sg_col + 8 * j, p.N);
        return;
    }
    for (uint i = 0; i < 2; ++i)
        for (uint j = 0; j < 2; ++j) simdgroup_store(acc[i][j], &c_tile[sg_row + 8 * i][sg_col + 8 * j], TILE);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint e = tid; e < TILE * TILE; e += THREADS) {
        const uint r = e / TILE, col = e % TILE;
        if (row0 + r < p.M && col0 + col < p.N) c[(row0 + r) * p.N + col0 + col] = c_tile[r][col];
    }
}

template [[host_name("gemm_f32")]] kernel void gemm<float>(device const float *, device const float *, device float *,
                                                          constant GemmParams &, uint2, uint, uint);
template [[host_name("gemm_f16")]] kernel void gemm<half>(device const half *, device const half *, device float *,
                                                         constant GemmParams &, uint2, uint, uint);
