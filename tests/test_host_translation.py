"""Regression tests for the host backend's MSL translation and emulation edge cases.

Each case is a construct where the host once differed silently from MSL on Apple GPUs (found by
running adversarial kernels); it must now either behave as on the GPU or fail with a clear error.
"""
from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import attention_proto as ap

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


def kernel(body: str, name: str, **constants: object) -> ap.Kernel:
    return ap.Kernel(HEADER + textwrap.dedent(body), name, constants=constants)  # type: ignore[arg-type]


def run(body: str, name: str, n_out: int, threads: int = 32, **constants: object) -> np.ndarray:
    out = np.full(n_out, np.nan, np.float32)
    kernel(body, name, **constants)(out, grid=1, threadgroup=threads, backend="host")
    return out


def test_threadgroup_declarations_in_every_statement_position(host_only: str) -> None:
    out = run("""
        kernel void decls(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
            threadgroup float shifted[1 << 5];            // a shift in the size
            volatile threadgroup float vol[32];           // a qualifier first
            switch (i % 2) {
            case 0:
            case 1: {
                threadgroup float in_case[32];
                in_case[i] = float(i);
                shifted[i] = 2.0f * float(i);
                vol[i] = 3.0f * float(i);
                threadgroup_barrier(mem_flags::mem_threadgroup);
                out[i] = in_case[31 - i] + shifted[31 - i] + vol[31 - i];
            }
            }
        }""", "decls", 32)
    np.testing.assert_array_equal(out, 6.0 * (31 - np.arange(32)))


def test_unreadable_threadgroup_declaration_is_an_error(host_only: str) -> None:
    with pytest.raises(ap.ShaderCompileError, match="cannot translate this threadgroup declaration"):
        kernel("""
            kernel void odd(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
                if (i == 0) threadgroup float x[4];
                out[i] = 0.0f;
            }""", "odd").pipeline(host_only)


def test_vector_casts_convert_everywhere(host_only: str) -> None:
    out = run("""
        float4 as_float(int4 v) { return (float4)v; }
        kernel void casts(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
            if (i != 0) return;
            float4 a = as_float(int4(1, 2, 3, 4));
            float4 b = (float4)(uint4)float4(1.5f, 2.5f, 3.5f, 4.5f);
            float4 c = -(float4)int4(5, 6, 7, 8) * 2.0f;
            float4 d = (float4)int4(1, 1, 1, 1).wzyx + 1.0f;
            out[0] = a.w; out[1] = b.x; out[2] = c.y; out[3] = d.z;
        }""", "casts", 4, threads=1)
    np.testing.assert_array_equal(out, [4.0, 1.0, -12.0, 2.0])


def test_converted_comparisons_give_one_and_zero(host_only: str) -> None:
    # MSL converts a bool vector to 1 / 0; clang's vector comparisons are -1 / 0 masks, so the host
    # wraps every converted comparison (constructor, cast, and T(...) with T a template parameter).
    out = run("""
        template <typename T> T step_of(T x) { return T(x > 0) - T(x < 0); }
        kernel void cmp(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
            if (i != 0) return;
            float4 x = float4(-2.0f, 0.0f, 3.0f, -0.5f);
            float4 a = float4(x > 0.0f);
            float4 b = (float4)(x <= 0.0f);
            float4 c = step_of(x);
            float d = step_of(x.w);
            float2 e = float2(x.x > 3.0f ? 1.0f : 2.0f, 0.0f);   // a ?: condition stays as it is
            for (int k = 0; k < 4; k++) { out[k] = a[k]; out[4 + k] = b[k]; out[8 + k] = c[k]; }
            out[12] = d; out[13] = e.x;
        }""", "cmp", 14, threads=1)
    np.testing.assert_array_equal(out, [0, 0, 1, 0, 1, 1, 0, 1, -1, 0, 1, -1, -1, 2])


def test_macros_expand_before_translation(host_only: str) -> None:
    # The host runs the preprocessor itself, so constructors, casts, half literals and address spaces
    # inside macro bodies are translated where the macro is used.
    out = run("""
        #define SPLAT(x) float4(x)
        #define HALF_ONE 1.0h
        #define TOF(x) ((float4)(x))
        #define DEVICE_PTR(T) device T*
        #define LOCAL(T, n) thread T n
        kernel void mac(DEVICE_PTR(float) out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
            LOCAL(float4, v) = SPLAT(int4(1, 2, 3, 4)) + float(HALF_ONE) + TOF(int4(10, 20, 30, 40));
            out[i] = v[i];
        }""", "mac", 4, threads=4)
    np.testing.assert_array_equal(out, [12, 23, 34, 45])


def test_simd_ops_reconverge_after_a_divergent_loop(host_only: str) -> None:
    out = run("""
        kernel void loop(device float* out [[buffer(0)]], uint l [[thread_index_in_simdgroup]]) {
            float inside = 0.0f;
            for (uint i = 0; i < (l & 1) + 1; i++) inside += simd_sum(1.0f);
            float after = simd_sum(1.0f);
            out[l] = inside * 100.0f + after;
        }""", "loop", 32)
    lanes = np.arange(32)
    np.testing.assert_array_equal(out, np.where(lanes & 1, 32 + 16, 32) * 100.0 + 32)


def test_simd_sites_on_one_long_line_are_told_apart(host_only: str) -> None:
    padding = " " * 5000
    out = run(f"""
        kernel void wide(device float* out [[buffer(0)]], uint l [[thread_index_in_simdgroup]]) {{
            float a = 0.0f, b = 0.0f; if (l < 16) {{ a = simd_sum(1.0f); }} else {{{padding} b = simd_sum(2.0f); }}
            out[l] = a + b;
        }}""", "wide", 32)
    np.testing.assert_array_equal(out, np.where(np.arange(32) < 16, 16.0, 32.0))


def test_include_file_sites_are_named_and_distinct(host_only: str, tmp_path: Path) -> None:
    (tmp_path / "helper.h").write_text("inline void wait_here() {\n  threadgroup_barrier(mem_flags::mem_none);\n}\n")
    src = tmp_path / "main.metal"
    src.write_text(HEADER + '#include "helper.h"\n'
                   "kernel void inc(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {\n"
                   "  if (i < 4) { wait_here(); } else {\n"
                   "  threadgroup_barrier(mem_flags::mem_none); }\n  out[i] = 1.0f;\n}\n")
    with pytest.raises(ap.DeadlockError, match=r"threads 0-3 wait at threadgroup_barrier \(helper\.h:2\); "
                                               r"threads 4-7 wait at threadgroup_barrier \(main\.metal:6\)"):
        ap.Kernel.from_file(src, "inc")(np.zeros(8, np.float32), grid=1, threadgroup=8, backend=host_only)


def test_template_threadgroup_variable_with_two_sizes_is_an_error(host_only: str) -> None:
    k = kernel("""
        template <typename T> threadgroup T* scratch() { threadgroup T buf[32]; return buf; }
        kernel void two(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
            threadgroup half* h = scratch<half>();
            threadgroup float* f = scratch<float>();
            h[i] = half(1.0h); f[i] = 2.0f;
            out[i] = float(h[i]) + f[i];
        }""", "two")
    with pytest.raises(ap.DispatchError, match="threadgroup variable 'buf' is declared with 128 and 64 bytes"):
        k(np.zeros(32, np.float32), grid=1, threadgroup=32, backend=host_only)


def test_wide_threadgroup_types_are_aligned(host_only: str) -> None:
    out = run("""
        kernel void wide(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
            threadgroup long4 x[4];
            if (i < 4) x[i] = long4(long(i));
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[i] = float(x[i % 4].w);
        }""", "wide", 8, threads=8)
    np.testing.assert_array_equal(out, np.arange(8) % 4)


def test_misaligned_array_runs_from_a_counted_copy(host_only: str) -> None:
    k = kernel("""
        kernel void add4(device float4* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] += 1.0f; }
        """, "add4")
    base = np.zeros(17, np.float32)
    view = base[1:]  # 4 bytes past a 16-byte boundary: misaligned for float4
    timing = k(view, grid=1, threadgroup=4, backend=host_only)
    np.testing.assert_array_equal(base, [0] + [1] * 16)
    assert timing.buffers_copied == 1 and timing.bytes_copied == 2 * 64


def test_integer_bit_functions_use_the_type_width(host_only: str) -> None:
    out = run("""
        kernel void bits(device float* out [[buffer(0)]], uint i [[thread_index_in_threadgroup]]) {
            if (i != 0) return;
            out[0] = float(clz(ushort(1)));   out[1] = float(ctz(ushort(0)));
            out[2] = float(popcount(0xFFFFFFFF00000000ul)); out[3] = float(clz(uchar(1)));
            out[4] = float(mulhi(0xFFFFFFFFFFFFFFFFul, 2ul)); out[5] = float(clz(1u));
        }""", "bits", 6, threads=1)
    np.testing.assert_array_equal(out, [15, 16, 32, 7, 1, 31])


def test_max_total_threads_attribute_is_honoured(host_only: str) -> None:
    k = kernel("""
        [[max_total_threads_per_threadgroup(64)]]
        kernel void small(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) { out[i] = 1.0f; }
        """, "small")
    assert k.info(host_only).max_total_threads_per_threadgroup == 64
    with pytest.raises(ap.ResourceLimitError, match="128 threads per threadgroup exceeds the pipeline.s limit of 64"):
        k(np.zeros(128, np.float32), grid=1, threadgroup=128, backend=host_only)


def test_const_qualified_constant_kernel_named_b_and_pragma_once(host_only: str, tmp_path: Path) -> None:
    (tmp_path / "p.h").write_text("#pragma once\nstruct P { float a; };\n")
    src = tmp_path / "b.metal"
    src.write_text(HEADER + '#include "p.h"\n#include "p.h"\n/* #include "missing.h" */\n'
                   "constant const uint N [[function_constant(0)]];\n"
                   "kernel void b(device float* pos [[buffer(0)]], constant P& p [[buffer(1)]],\n"
                   "              uint i [[thread_position_in_grid]]) { pos[i] = p.a * float(N); }\n")
    out = np.zeros(4, np.float32)
    ap.Kernel.from_file(src, "b", constants={"N": 3})(out, np.float32(2.0), grid=1, threadgroup=4,
                                                      backend=host_only)
    np.testing.assert_array_equal(out, 6.0)


def test_concurrent_first_compiles_in_one_process(host_only: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APROTO_CACHE_DIR", str(tmp_path))
    errors: list[BaseException] = []
    results: dict[int, np.ndarray] = {}

    def build(j: int) -> None:
        try:
            out = np.zeros(4, np.float32)
            kernel("""
                constant int J [[function_constant(0)]];
                kernel void jth(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = float(J); }
                """, "jth", J=j % 3)(out, grid=1, threadgroup=4, backend=host_only)
            results[j] = out
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=build, args=(j,)) for j in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for j, out in results.items():
        np.testing.assert_array_equal(out, float(j % 3))


def test_one_helper_called_from_two_divergent_branches(host_only: str) -> None:
    """The helper's simd_sum runs once per branch, each time with that branch's lanes only."""
    out = run("""
        float reduce(float x) { return simd_sum(x); }
        __attribute__((noinline)) float reduce_call(float x) { return simd_sum(x); }
        kernel void both(device float* out [[buffer(0)]], uint l [[thread_index_in_simdgroup]]) {
            float r, q;
            if (l < 12) { r = reduce(1.0f); q = reduce_call(1.0f); }
            else        { r = reduce(2.0f); q = reduce_call(2.0f); }
            out[l] = r + 1000.0f * q;
        }""", "both", 32)
    expected = np.where(np.arange(32) < 12, 12.0, 40.0)
    np.testing.assert_array_equal(out, expected + 1000.0 * expected)


def test_generated_msl_constructs(host_only: str) -> None:
    """What CubeCL, Slang and TileLang emit (prototype 5): const and __restrict pointer parameters, an
    index-less info buffer,
    `alignas(n) threadgroup char[]` viewed through metal::array, `threadgroup array<T, N>` whose
    template arguments hold a comma, and <metal_texture> included but unused."""
    src = """
        #include <metal_texture>
        struct info_st { uint32_t scalars[4]; };
        kernel void gen(device float const* const x [[buffer(0)]], device float* __restrict out [[buffer(1)]],
                        constant info_st const* const info, uint i [[thread_index_in_threadgroup]]) {
            alignas(16) threadgroup char raw[128];
            threadgroup array<float, int(32)> pairs;
            threadgroup array<float, 32>* view = reinterpret_cast<threadgroup array<float, 32>*>(&raw[0]);
            (*view)[i] = x[i] * float(info->scalars[0]);
            pairs[i] = float(view->size());
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[i] = (*view)[31 - i] + pairs[i];
        }
    """
    x = np.arange(32, dtype=np.float32)
    out = np.full(32, np.nan, np.float32)
    kernel(src, "gen")(x, out, np.array([3, 0, 0, 0], np.uint32), grid=1, threadgroup=32, backend="host")
    np.testing.assert_array_equal(out, 3 * x[::-1] + 32)
