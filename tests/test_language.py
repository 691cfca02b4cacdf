"""MSL language features through the whole stack: function constants, vectors, conversions, half/bfloat."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap

CONSTANTS = r"""
#include <metal_stdlib>
using namespace metal;
constant uint  N      [[function_constant(0)]];
constant bool  DOUBLE [[function_constant(1)]];
constant float BIAS   [[function_constant(2)]];
constant int   OPTIONAL_SHIFT [[function_constant(3)]];
constant bool  has_shift = is_function_constant_defined(OPTIONAL_SHIFT);

// Array sizes are literals: Metal compiles the library before function constants have values, so N
// cannot size an array (the host backend rejects that too, see test_host_emulator.py). The arrays take
// the largest N (128) and the loops stop at N.
constant constexpr uint MAX_N = 128;

kernel void reduce_rows(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                        uint row [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]])
{
    threadgroup float partial[32];       // one slot per thread (32 threads)
    float acc[MAX_N / 32];               // N / 32 used
    for (uint i = 0; i < N / 32; i++) acc[i] = x[row * N + tid + 32 * i];
    float s = 0.0f;
    for (uint i = 0; i < N / 32; i++) s += acc[i];
    partial[tid] = s;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        float total = 0.0f;
        for (uint i = 0; i < 32; i++) total += partial[i];
        if (DOUBLE) total *= 2.0f;
        if (has_shift) total += float(OPTIONAL_SHIFT);
        out[row] = total + BIAS;
    }
}
"""


@pytest.mark.parametrize("n,double,shift", [(32, False, None), (128, True, None), (64, False, -3)])
def test_function_constants(backend: str, rng: np.random.Generator, n: int, double: bool, shift: int | None) -> None:
    rows = 5
    x = rng.normal(size=(rows, n)).astype(np.float32)
    out = np.full(rows, np.nan, dtype=np.float32)
    constants: dict[str | int, bool | int | float] = {"N": n, "DOUBLE": double, 2: 0.25}  # by name or index
    if shift is not None:
        constants["OPTIONAL_SHIFT"] = shift
    ap.Kernel(CONSTANTS, "reduce_rows", constants=constants)(x, out, grid=rows, threadgroup=32, backend=backend)
    expected = x.astype(np.float64).sum(axis=1) * (2 if double else 1) + (shift or 0) + 0.25
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_missing_and_unknown_constants_are_errors() -> None:
    with pytest.raises(ap.ShaderCompileError, match=r"function constant 'N' \(index 0\) has no value"):
        ap.Kernel(CONSTANTS, "reduce_rows", constants={"DOUBLE": True, "BIAS": 0.0}).pipeline("host")
    with pytest.raises(ap.ShaderCompileError, match="function constant 'N' is declared 'uint' but was given a float"):
        ap.Kernel(CONSTANTS, "reduce_rows", constants={"N": 32.0, "DOUBLE": True, "BIAS": 0.0}).pipeline("host")
    with pytest.raises(ap.ShaderCompileError, match="constant 'NN' was given but the source declares no such"):
        ap.Kernel(CONSTANTS, "reduce_rows", constants={"NN": 1, "N": 32, "DOUBLE": True,
                                                       "BIAS": 0.0}).pipeline("host")


IDIOMS = r"""
#include <metal_stdlib>
using namespace metal;
constant float kTable[4] = {1.0f, 2.0f, 3.0f, 4.0f};
struct S { float4 a; half2 h; uint n; };

inline float first_plus_last(thread const float4& v) { return v.x + v.w; }

kernel void idioms(device float* out [[buffer(0)]], device const S* s [[buffer(1)]],
                   uint2 gid [[thread_position_in_grid]])
{
    if (gid.x != 0 || gid.y != 0) return;
    float4 v = 0.0f;                          // scalar -> vector splat
    v.xy = float2(1.0f, 2.0f);                // swizzle assignment
    v.zw = v.yx * 2.0f;                       // (1, 2, 4, 2)
    float3 v3 = v.xyz;
    half4 h = half4(v);                       // element-wise conversion
    half hh = 1.5h * h.x;                     // half literal
    float4 w = float4(float2(h.xy), 0.0f, 1.0f);  // mixed constructor (no implicit half2 -> float2)
    float4 conv = static_cast<float4>(int4(1, -2, 3, 7));   // conversion, not a bit cast
    float4 cast = (float4)uint4(5, 6, 7, 8);                 // C-style vector cast converts too
    int4 trunc = int4(float4(1.9f, -1.9f, 2.5f, -0.5f));     // float -> int truncates
    float asf = as_type<float>(0x3f800000u);  // bit cast
    float4 sel = select(v, float4(9.0f), v > float4(1.5f));
    float c = clamp(-3.0f, 0.0f, 1.0f) + fast::exp(0.0f) + precise::sqrt(4.0f) + metal::max(1.0f, 2.0f);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    out[4] = v3.z; out[5] = float(hh); out[6] = w.w; out[7] = conv.y;
    out[8] = cast.w; out[9] = float(trunc.x + trunc.y * 10 + trunc.z * 100); out[10] = asf; out[11] = sel.z;
    out[12] = c; out[13] = float(abs(-3) + max(2, 5)); out[14] = kTable[3] + dot(v, float4(1.0f));
    out[15] = first_plus_last(v) + s->a.y + float(s->h.y) + float(s->n);
    out[16] = float(half(65504.0f) * 2.0h);   // half overflows to inf
    out[17] = float(numeric_limits<half>::max());
    out[18] = exp2(3.0f) + log2(8.0f) + rsqrt(4.0f) + fract(2.75f);
    out[19] = float(all(int2(1, 1) > int2(0, 0))) + float(any(float2(0.0f, 1.0f) > 0.5f));
}
"""


def test_vector_idioms_and_conversions(backend: str) -> None:
    s_dtype = np.dtype({"names": ["a", "h", "n"], "formats": [(np.float32, 4), (np.float16, 2), np.uint32],
                        "offsets": [0, 16, 20], "itemsize": 32})  # MSL layout: float4 aligned to 16
    s = np.zeros(1, dtype=s_dtype)
    s["a"] = [10, 20, 30, 40]
    s["h"] = [0.5, 0.25]
    s["n"] = 7
    out = np.full(20, np.nan, dtype=np.float32)
    ap.Kernel(IDIOMS, "idioms")(out, s, grid=1, threadgroup=1, backend=backend)
    expected = [1, 2, 4, 2, 4, 1.5, 1, -2, 8, 1 - 10 + 200, 1, 9, 0 + 1 + 2 + 2, 8, 4 + 9,
                1 + 2 + 20 + 0.25 + 7, np.inf, 65504, 8 + 3 + 0.5 + 0.75, 2]
    np.testing.assert_allclose(out, np.array(expected, dtype=np.float32), rtol=1e-6)


ROUNDING = r"""
#include <metal_stdlib>
using namespace metal;
kernel void round_trip(device const float* x [[buffer(0)]], device half* h [[buffer(1)]],
                       device bfloat* b [[buffer(2)]], device float* sums [[buffer(3)]],
                       uint i [[thread_position_in_grid]])
{
    h[i] = half(x[i]);
    b[i] = bfloat(x[i]);
    half hs = half(x[i]) + half(1.0h);        // half arithmetic rounds to half
    sums[i] = float(hs);
}
"""


def test_half_and_bfloat_round_to_nearest_even(backend: str, rng: np.random.Generator) -> None:
    n = 777
    # Magnitudes within half's normal range (6.1e-5 .. 65504): Metal may flush half subnormals, so
    # values there would test the device's denormal mode, not the rounding.
    sign = rng.choice([-1.0, 1.0], size=n)
    x = (sign * np.exp(rng.uniform(-9, 11, size=n))).astype(np.float32)
    # largest value rounding to a finite half, first overflow, below half's smallest subnormal
    # (0 whether or not subnormals flush), signed zero
    x[:4] = [65519.0, 65520.0, 1e-8, -0.0]
    h = np.full(n, np.nan, dtype=np.float16)
    b = np.full(n, np.nan, dtype=ml_dtypes.bfloat16)
    sums = np.full(n, np.nan, dtype=np.float32)
    # 777 threads: one per threadgroup, so no thread of a partial group is left out
    ap.Kernel(ROUNDING, "round_trip")(x, h, b, sums, grid=n, threadgroup=1, backend=backend)
    with np.errstate(over="ignore"):  # 65520 overflows to inf in numpy's cast too
        want_h = x.astype(np.float16)
        expected = (want_h + np.float16(1.0)).astype(np.float32)
    np.testing.assert_array_equal(h.view(np.uint16), want_h.view(np.uint16))
    np.testing.assert_array_equal(b.view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(sums, expected)
