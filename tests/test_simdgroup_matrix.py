"""simdgroup_matrix<T, 8, 8>: loads (plain and transposed), stores, multiply(-accumulate), thread_elements."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap

# C[M, N] = A[M, K] @ B[K, N] (or A @ B^T with TRANSPOSE_B), one 8x8 output tile per SIMD-group,
# straight from device memory; the element type of A and B is a function-constant-free template.
GEMM_TILE = r"""
#include <metal_stdlib>
using namespace metal;
constant bool TRANSPOSE_B [[function_constant(0)]];

struct Dims { uint M; uint N; uint K; };

template <typename T>
void gemm_tile(device const T* A, device const T* B, device float* C, constant Dims& d, uint2 tile) {
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (uint k = 0; k < d.K; k += 8) {
        simdgroup_matrix<T, 8, 8> a, b;
        simdgroup_load(a, A, d.K, ulong2(k, tile.y * 8));
        if (TRANSPOSE_B) {
            // B is [N, K]; origin is in the loaded (transposed, [K, N]) matrix: column tile.x * 8, row k
            simdgroup_load(b, B, d.K, ulong2(tile.x * 8, k), true);
        } else {
            simdgroup_load(b, B, d.N, ulong2(tile.x * 8, k));          // B is [K, N]
        }
        simdgroup_multiply_accumulate(acc, a, b, acc);
    }
    simdgroup_store(acc, C, d.N, ulong2(tile.x * 8, tile.y * 8));
}

kernel void gemm_f32(device const float* A [[buffer(0)]], device const float* B [[buffer(1)]],
                     device float* C [[buffer(2)]], constant Dims& d [[buffer(3)]],
                     uint2 tile [[threadgroup_position_in_grid]]) { gemm_tile(A, B, C, d, tile); }
kernel void gemm_f16(device const half* A [[buffer(0)]], device const half* B [[buffer(1)]],
                     device float* C [[buffer(2)]], constant Dims& d [[buffer(3)]],
                     uint2 tile [[threadgroup_position_in_grid]]) { gemm_tile(A, B, C, d, tile); }
kernel void gemm_bf16(device const bfloat* A [[buffer(0)]], device const bfloat* B [[buffer(1)]],
                      device float* C [[buffer(2)]], constant Dims& d [[buffer(3)]],
                      uint2 tile [[threadgroup_position_in_grid]]) { gemm_tile(A, B, C, d, tile); }
"""

DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
TOLERANCE = {"f32": 1e-5, "f16": 1e-5, "bf16": 1e-5}  # inputs are exact in T, products summed in float


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("transpose_b", [False, True])
def test_gemm_matches_numpy(backend: str, rng: np.random.Generator, name: str, transpose_b: bool) -> None:
    M, N, K = 24, 16, 40
    dt = DTYPES[name]
    a = rng.normal(size=(M, K)).astype(dt)
    b = rng.normal(size=(N, K) if transpose_b else (K, N)).astype(dt)
    c = np.full((M, N), np.nan, dtype=np.float32)
    dims = np.array((M, N, K), dtype=np.uint32)
    k = ap.Kernel(GEMM_TILE, f"gemm_{name}", constants={"TRANSPOSE_B": transpose_b})
    k(a, b, c, dims, grid=(N // 8, M // 8), threadgroup=32, backend=backend)
    b64 = b.astype(np.float64)
    expected = a.astype(np.float64) @ (b64.T if transpose_b else b64)
    err = np.linalg.norm(c - expected) / np.linalg.norm(expected)
    assert err < TOLERANCE[name], err


THREAD_ELEMENTS = r"""
#include <metal_stdlib>
using namespace metal;
// Each lane writes its own coordinates into its two elements; the store shows Apple's layout.
kernel void layout(device float* out [[buffer(0)]], device float* scaled [[buffer(1)]],
                   device const float* x [[buffer(2)]],
                   ushort lane [[thread_index_in_simdgroup]])
{
    simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8, 8>(-1.0f);
    thread auto& e = m.thread_elements();
    e[0] = float(lane * 2);
    e[1] = float(lane * 2 + 1);
    simdgroup_store(m, out, 8);
    // lane-local scaling of a loaded matrix, then a multiply by identity
    simdgroup_float8x8 a;
    simdgroup_load(a, x, 8);
    thread auto& f = a.thread_elements();
    f *= 2.0f;
    simdgroup_float8x8 id = simdgroup_float8x8(1.0f);
    simdgroup_float8x8 r;
    simdgroup_multiply(r, a, id);
    simdgroup_store(r, scaled, 8);
}
"""


def test_thread_elements_follow_apple_layout(backend: str, rng: np.random.Generator) -> None:
    out = np.full((8, 8), np.nan, dtype=np.float32)
    scaled = np.full((8, 8), np.nan, dtype=np.float32)
    x = rng.normal(size=(8, 8)).astype(np.float32)
    ap.Kernel(THREAD_ELEMENTS, "layout")(out, scaled, x, grid=1, threadgroup=32, backend=backend)
    expected = np.empty((8, 8), dtype=np.float32)
    for lane in range(32):
        quad = lane // 4
        row = (quad & 4) + (lane // 2) % 4
        col = (quad & 2) * 2 + (lane % 2) * 2
        expected[row, col] = 2 * lane
        expected[row, col + 1] = 2 * lane + 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(scaled, 2 * x, rtol=1e-6)


# A tiled GEMM staging tiles in a [[threadgroup(0)]] buffer: 4 SIMD-groups, tile sizes as constants.
# The accumulator array has literal sizes (function constants cannot size arrays in MSL): the largest
# tiles the test uses, with the loops bounded by TM / 32 and TN / 8.
TILED_GEMM = r"""
#include <metal_stdlib>
using namespace metal;
constant uint TM [[function_constant(0)]];
constant uint TN [[function_constant(1)]];
constant uint TK [[function_constant(2)]];
constant constexpr uint MAX_TM = 64;   // TM <= MAX_TM, TN <= MAX_TN (the parametrised tiles)
constant constexpr uint MAX_TN = 32;

kernel void tiled(device const half* A [[buffer(0)]], device const half* B [[buffer(1)]],
                  device float* C [[buffer(2)]], constant uint3& mnk [[buffer(3)]],
                  threadgroup half* stage [[threadgroup(0)]],
                  uint2 tg [[threadgroup_position_in_grid]],
                  uint tid [[thread_index_in_threadgroup]],
                  uint sg [[simdgroup_index_in_threadgroup]])
{
    threadgroup half* As = stage;              // TM x TK
    threadgroup half* Bs = stage + TM * TK;    // TK x TN
    const uint M = mnk.x, N = mnk.y, K = mnk.z;
    const uint row0 = tg.y * TM, col0 = tg.x * TN;
    // SIMD-group sg owns output rows [sg * TM/4, (sg+1) * TM/4) and all TN columns
    simdgroup_float8x8 acc[MAX_TM / 32][MAX_TN / 8];   // [TM / 32][TN / 8] used
    for (uint i = 0; i < TM / 32; i++)
        for (uint j = 0; j < TN / 8; j++) acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (uint k0 = 0; k0 < K; k0 += TK) {
        for (uint i = tid; i < TM * TK; i += 128) {
            uint r = row0 + i / TK, c = k0 + i % TK;
            As[i] = (r < M && c < K) ? A[r * K + c] : half(0.0h);
        }
        for (uint i = tid; i < TK * TN; i += 128) {
            uint r = k0 + i / TN, c = col0 + i % TN;
            Bs[i] = (r < K && c < N) ? B[r * N + c] : half(0.0h);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint kk = 0; kk < TK; kk += 8) {
            for (uint i = 0; i < TM / 32; i++) {
                simdgroup_half8x8 a;
                simdgroup_load(a, As, TK, ulong2(kk, sg * (TM / 4) + i * 8));
                for (uint j = 0; j < TN / 8; j++) {
                    simdgroup_half8x8 b;
                    simdgroup_load(b, Bs, TN, ulong2(j * 8, kk));
                    simdgroup_multiply_accumulate(acc[i][j], a, b, acc[i][j]);
                }
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    threadgroup float* Cs = (threadgroup float*)stage;   // reuse the stage for the edge-safe store
    for (uint i = 0; i < TM / 32; i++)
        for (uint j = 0; j < TN / 8; j++)
            simdgroup_store(acc[i][j], Cs, TN, ulong2(j * 8, sg * (TM / 4) + i * 8));
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = tid; i < TM * TN; i += 128) {
        uint r = row0 + i / TN, c = col0 + i % TN;
        if (r < M && c < N) C[r * N + c] = Cs[i];
    }
}
"""


@pytest.mark.parametrize("tiles", [(32, 16, 16), (64, 32, 8)])
def test_tiled_gemm_with_threadgroup_argument(backend: str, rng: np.random.Generator,
                                             tiles: tuple[int, int, int]) -> None:
    TM, TN, TK = tiles
    assert TM <= 64 and TN <= 32  # MAX_TM, MAX_TN in the kernel
    M, N, K = 70, 33, 45  # edges in every dimension
    a = rng.normal(size=(M, K)).astype(np.float16)
    b = rng.normal(size=(K, N)).astype(np.float16)
    c = np.full((M, N), np.nan, dtype=np.float32)
    k = ap.Kernel(TILED_GEMM, "tiled", constants={"TM": TM, "TN": TN, "TK": TK})
    stage = max((TM * TK + TK * TN) * 2, TM * TN * 4)
    grid = ((N + TN - 1) // TN, (M + TM - 1) // TM)
    k(a, b, c, np.array((M, N, K, 0), dtype=np.uint32), grid=grid, threadgroup=128,
      threadgroup_memory={0: stage}, backend=backend)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert np.isfinite(c).all()
    assert np.linalg.norm(c - expected) / np.linalg.norm(expected) < 1e-5
