"""The static MSL analyser (attention_proto.msl_stats) on small hand-made sources with known counts."""
from __future__ import annotations

import pytest

from attention_proto.msl_stats import METRICS, analyse, strip_comments, threadgroup_bytes

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"

TILED = HEADER + """
constant constexpr uint TILE = 16;
constant uint K_STEPS [[function_constant(0)]];
// a comment with simdgroup_load( and threadgroup_barrier( that must not count
static float2 mma(half2 a, half2 b, float2 c) {
    simdgroup_half8x8 ma; simdgroup_half8x8 mb; simdgroup_float8x8 mc;
    simdgroup_multiply_accumulate(mc, ma, mb, mc);
    return c;
}
kernel void tiled(device const half *a [[buffer(0)]], device float *c [[buffer(1)]],
                  constant uint &n [[buffer(2)]], uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float tile[TILE][TILE + 4];
    threadgroup half2 pairs[8];
    /* block comment: simd_sum( */
    float2 acc = float2(0.0f);
    for (uint k = 0; k < K_STEPS; ++k) {
        #pragma unroll
        for (uint i = 0; i < 4; ++i) {
            acc = mma(half2(a[k * n + i], a[tid]), half2(0.0h), acc);
            acc = mma(half2(1.0h), half2(0.0h), acc);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tid < n) c[tid] = simd_sum(acc.x) + fast::exp(acc.y) + precise::sqrt(float(tid / 3 + tid % TILE));
}
"""


def test_counts_of_a_tiled_kernel() -> None:
    r = analyse(TILED)
    assert r["kernels"] == 1
    assert r["threadgroup_bytes"] == 16 * 20 * 4 + 8 * 4
    assert r["barriers"] == 1                      # the comment's does not count
    assert r["mma"] == 2                           # the helper's one MMA, at each of its 2 call sites
    assert r["matrix_loads"] == 0 and r["matrix_stores"] == 0
    assert r["simd_ops"] == 1
    assert r["inner_loop_device_loads"] == 2       # a[k * n + i] and a[tid], in the innermost loop only
    assert r["int_divmod"] == 2                    # tid / 3 and tid % TILE
    assert r["bounds_checks"] == 1                 # tid < n; the loop conditions are not checks
    assert r["fast_math"] == 1 and r["precise_math"] == 1
    assert r["function_constants"] == 1
    assert r["runtime_scalars"] == 1               # constant uint &n
    assert r["unroll_hints"] == 1
    assert r["buffer_args"] == 3
    assert r["half_uses"] >= 6


def test_matrix_path_loads_stores_and_casts() -> None:
    src = HEADER + """
    kernel void mm(device const float *a [[buffer(0)]], device float *c [[buffer(1)]]) {
        simdgroup_float8x8 x, y;
        simdgroup_load(x, a, 8);
        simdgroup_load(y, a + 64, 8, ulong2(0, 0), true);
        simdgroup_multiply(x, x, y);
        simdgroup_store(x, c, 8);
        float v = *((device float*)(a + 3)) / 2.0f;   // a float division is not integer index math
        c[64] = v;
    }
    """
    r = analyse(src)
    assert (r["matrix_loads"], r["matrix_stores"], r["mma"]) == (2, 1, 1)
    assert r["int_divmod"] == 0 and r["bounds_checks"] == 0 and r["inner_loop_device_loads"] == 0
    assert r["threadgroup_bytes"] == 0 and r["function_constants"] == 0


def test_generated_styles_cubecl_slang_tinygrad() -> None:
    # CubeCL: alignas'd char storage, index-less info pointer, bool-valued checks, loads through locals
    cubecl = HEADER + """
    struct info_st { uint32_t scalars_u32[4]; };
    [[max_total_threads_per_threadgroup(128)]] [[kernel]] void k(device float const* const v1 [[buffer(0)]],
        device float * const v9 [[buffer(1)]], constant info_st const* const v55, uint3 const t [[thread_position_in_grid]]) {
    alignas(4) threadgroup char v206[2048];
    uint32_t const n = v55->scalars_u32[0];
    for (uint32_t i = 0; i < n; i += 1) {
        device float const* const p = &v1[i];
        float const x = *p;
        bool const ok = i < n;
        if (ok) { *(v9 + i) = x; }
    }
    }
    """
    r = analyse(cubecl)
    assert r["kernels"] == 1 and r["threadgroup_bytes"] == 2048
    assert r["inner_loop_device_loads"] == 1       # *p (the &v1[i] is an address, not a load)
    assert r["bounds_checks"] == 1 and r["runtime_scalars"] == 1 and r["buffer_args"] == 3
    # Slang: `threadgroup array<array<float, int(16)>, int(16)>`, types written before the address space
    slang = HEADER + """
    [[kernel]] void g(float device* A [[buffer(0)]], uint3 lid [[thread_position_in_threadgroup]]) {
        threadgroup array<array<float, int(16)>, int(16)> tile_1;
        tile_1[lid.y][lid.x] = A[lid.x];
    }
    """
    assert analyse(slang)["threadgroup_bytes"] == 16 * 16 * 4
    # tinygrad: vector loads through casts, several kernels in one file, a shared local array
    tinygrad = HEADER + """
    kernel void r_1(device float* data0, device half* data1, uint3 gid [[threadgroup_position_in_grid]]) {
      threadgroup __attribute__((aligned(16))) float temp0[32];
      for (int Ridx0 = 0; Ridx0 < 12; Ridx0++) {
        half2 val0 = (*((device half2*)((data1+(Ridx0<<3)))));
        temp0[Ridx0] = float(val0.x);
      }
      *(data0+0) = temp0[0];
    }
    kernel void r_2(device float* data0, device float* data1) { *(data0+1) = *(data1+2); }
    """
    r = analyse(tinygrad)
    assert r["kernels"] == 2 and r["threadgroup_bytes"] == 128 and r["inner_loop_device_loads"] == 1
    assert r["buffer_args"] == 4 and r["int_divmod"] == 0


def test_comments_are_stripped_and_lines_counted() -> None:
    src = "// one\nint a; /* two\nthree */ int b;\n\n   \nint c;\n"
    assert strip_comments(src).count("\n") == src.count("\n")   # line numbers kept
    assert analyse(src)["lines"] == 3


@pytest.mark.parametrize("decl, expected", [
    ("threadgroup float a[4];", 16), ("threadgroup float4 a[2][3];", 96), ("threadgroup half3 h[2];", 16),
    ("threadgroup metal::array<uint, 10> a;", 40), ("threadgroup float *p;", 0), ("threadgroup float& r = x;", 0),
    ("constant constexpr uint N = 8 * 4; threadgroup char b[N + 2];", 34),
])
def test_threadgroup_declarations(decl: str, expected: int) -> None:
    assert threadgroup_bytes(decl) == expected


def test_every_metric_is_reported_and_described() -> None:
    r = analyse(TILED)
    assert list(r) == list(METRICS) and all(isinstance(v, int) for v in r.values())
