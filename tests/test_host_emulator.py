"""The host backend's own machinery: barriers, deadlock reports, limits, checked mode, caches.

These errors are what make the host backend a debugging tool: each must be an exception that names
the kernel, the threads and the place, never a hang or a crashed interpreter.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import attention_proto as ap

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


def kernel(body: str, name: str, **constants: object) -> ap.Kernel:
    return ap.Kernel(HEADER + textwrap.dedent(body), name, constants=constants)  # type: ignore[arg-type]


def test_barrier_orders_threadgroup_memory(host_only: str, rng: np.random.Generator) -> None:
    k = kernel("""
        kernel void rotate(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                           uint tid [[thread_index_in_threadgroup]], uint3 tpg [[threads_per_threadgroup]],
                           uint3 tg [[threadgroup_position_in_grid]]) {
            threadgroup float t[256];
            uint base = tg.x * tpg.x;
            t[tid] = x[base + tid];
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[base + tid] = t[(tid + 1) % tpg.x] + t[(tid + tpg.x - 1) % tpg.x];
        }""", "rotate")
    x = rng.normal(size=(3, 200)).astype(np.float32)
    out = np.full_like(x, np.nan)
    k(x, out, grid=3, threadgroup=200, backend=host_only)
    np.testing.assert_allclose(out, np.roll(x, -1, axis=1) + np.roll(x, 1, axis=1), rtol=1e-6)


def test_every_threadgroup_declaration_is_shared(host_only: str, rng: np.random.Generator) -> None:
    """Several declarations in a row, one with two declarators: all live in threadgroup memory."""
    k = kernel("""
        kernel void two(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                        uint tid [[thread_index_in_threadgroup]]) {
            threadgroup float a[32];
            threadgroup float b[32], c[32];
            threadgroup float4 d[8];
            a[tid] = x[tid];
            b[tid] = 2.0f * x[tid];
            c[tid] = 3.0f * x[tid];
            if (tid < 8) d[tid] = float4(x[tid]);
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[tid] = a[31 - tid] + b[(tid + 1) % 32] + c[(tid + 2) % 32] + d[tid % 8].w;
        }""", "two")
    x = rng.normal(size=32).astype(np.float32)
    out = np.full(32, np.nan, np.float32)
    k(x, out, grid=1, threadgroup=32, backend=host_only)
    i = np.arange(32)
    expected = x[31 - i] + 2 * x[(i + 1) % 32] + 3 * x[(i + 2) % 32] + x[i % 8]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert k.info(host_only).static_threadgroup_memory == 4 * 32 * 3 + 16 * 8


def test_missing_barrier_is_caught_by_poisoned_threadgroup_memory(host_only: str) -> None:
    """Threads read a neighbour's slot before it is written: the poison (NaN) shows up in the output."""
    k = kernel("""
        kernel void racy(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
            threadgroup float t[64];
            t[tid] = float(tid);
            // threadgroup_barrier(mem_flags::mem_threadgroup);   <- forgotten
            out[tid] = t[(tid + 1) % 64];
        }""", "racy")
    out = np.zeros(64, dtype=np.float32)
    k(out, grid=1, threadgroup=64, backend=host_only)
    assert np.isnan(out).any(), "the race must be visible as NaN reads of unwritten threadgroup memory"


def test_deliberately_wrong_kernel_fails_the_comparison(host_only: str, rng: np.random.Generator) -> None:
    """A softmax that forgets to subtract the row max overflows: the numpy comparison must catch it."""
    k = kernel("""
        kernel void softmax_row(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                                uint lane [[thread_index_in_simdgroup]]) {
            float e = exp(x[lane]);             // wrong: no max subtraction
            y[lane] = e / simd_sum(e);
        }""", "softmax_row")
    x = (rng.normal(size=32) * 60 + 60).astype(np.float32)
    y = np.full(32, np.nan, dtype=np.float32)
    k(x, y, grid=1, threadgroup=32, backend=host_only)
    z = np.exp(x.astype(np.float64) - x.max())
    expected = z / z.sum()
    assert not np.allclose(y, expected, rtol=1e-4, atol=1e-6)


def test_early_return_before_barrier_is_a_deadlock(host_only: str) -> None:
    k = kernel("""
        kernel void early(device float* out [[buffer(0)]], constant uint& n [[buffer(1)]],
                          uint tid [[thread_index_in_threadgroup]]) {
            threadgroup float t[64];
            if (tid >= n) return;
            t[tid] = 1.0f;
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[tid] = t[tid];
        }""", "early")
    out = np.zeros(64, dtype=np.float32)
    with pytest.raises(ap.DeadlockError, match=r"threads 0-39 wait at threadgroup_barrier \(<early>:9\); "
                                               r"threads 40-63 returned without reaching it"):
        k(out, np.uint32(40), grid=1, threadgroup=64, backend=host_only)
    k(out, np.uint32(64), grid=1, threadgroup=64, backend=host_only)  # no thread leaves: fine
    np.testing.assert_array_equal(out, 1.0)


def test_threads_at_different_barriers_are_a_deadlock(host_only: str) -> None:
    k = kernel("""
        kernel void split(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
            if (tid < 16) {
                threadgroup_barrier(mem_flags::mem_none);
            } else {
                threadgroup_barrier(mem_flags::mem_none);
            }
            out[tid] = 1.0f;
        }""", "split")
    with pytest.raises(ap.DeadlockError, match=r"threads 0-15 wait at threadgroup_barrier \(<split>:6\); "
                                               r"threads 16-63 wait at threadgroup_barrier \(<split>:8\)"):
        k(np.zeros(64, np.float32), grid=1, threadgroup=64, backend=host_only)


def test_simdgroup_matrix_in_divergent_code_is_reported(host_only: str) -> None:
    k = kernel("""
        kernel void diverge(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
            simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8, 8>(1.0f);
            thread auto& e = m.thread_elements();
            e[0] = float(lane);
            if (lane < 8) {
                simdgroup_store(m, out, 8);
            }
        }""", "diverge")
    with pytest.raises(ap.DeadlockError, match=r"needs every lane of SIMD-group 0 .* only lanes 0-7 reach it "
                                               r"\(lanes 8-31 never do; e.g. lane 8 has returned\)"):
        k(np.zeros(64, np.float32), grid=1, threadgroup=32, backend=host_only)


def test_divergent_simdgroup_barrier_is_reported(host_only: str) -> None:
    k = kernel("""
        kernel void sgb(device float* out [[buffer(0)]], ushort lane [[thread_index_in_simdgroup]]) {
            if (lane % 2 == 0) simdgroup_barrier(mem_flags::mem_none);
            out[lane] = 1.0f;
        }""", "sgb")
    with pytest.raises(ap.DeadlockError, match="simdgroup_barrier at <sgb>:5 needs every lane"):
        k(np.zeros(32, np.float32), grid=1, threadgroup=32, backend=host_only)


def test_spin_wait_times_out_instead_of_hanging(host_only: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread 0 waits for thread 1's flag: fine on a GPU, endless for fibers that switch only at barriers."""
    k = kernel("""
        kernel void spin(device atomic_int* flag [[buffer(0)]], device float* out [[buffer(1)]],
                         uint tid [[thread_index_in_threadgroup]]) {
            if (tid == 0) {
                while (atomic_load_explicit(flag, memory_order_relaxed) == 0) {}
            }
            if (tid == 1) atomic_store_explicit(flag, 1, memory_order_relaxed);
            out[tid] = 1.0f;
        }""", "spin")
    monkeypatch.setenv("APROTO_HOST_TIMEOUT", "1")
    with pytest.raises(ap.DeadlockError, match=r"kernel 'spin' did not finish within 1 s \(APROTO_HOST_TIMEOUT\): "
                                               r"thread 0 .* was running, at no barrier"):
        k(np.zeros(1, np.int32), np.zeros(2, np.float32), grid=1, threadgroup=2, backend=host_only)
    out = np.zeros(2, np.float32)  # the dispatcher is healthy afterwards
    k(np.ones(1, np.int32), out, grid=1, threadgroup=2, backend=host_only)
    np.testing.assert_array_equal(out, 1.0)


def test_threadgroup_memory_limit_names_kernel_and_bytes(host_only: str) -> None:
    k = kernel("""
        kernel void big(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
            threadgroup float small[1024];
            threadgroup float large[7200];
            small[tid] = 0.0f;
            large[tid] = 1.0f;
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[tid] = large[tid] + small[tid];
        }""", "big")
    with pytest.raises(ap.ResourceLimitError, match=r"kernel 'big' needs 32896 bytes of threadgroup memory \(at "
                                                    r"`threadgroup` variable 'large' of 28800 bytes"):
        k(np.zeros(32, np.float32), grid=1, threadgroup=32, backend=host_only)
    ok = kernel("""
        kernel void fits(device float* out [[buffer(0)]], threadgroup float* t [[threadgroup(0)]],
                         uint tid [[thread_index_in_threadgroup]]) {
            t[tid] = 2.0f;
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[tid] = t[31 - tid];
        }""", "fits")
    out = np.zeros(32, np.float32)
    ok(out, grid=1, threadgroup=32, threadgroup_memory={0: 32768}, backend=host_only)
    np.testing.assert_array_equal(out, 2.0)
    with pytest.raises(ap.ResourceLimitError, match=r"asks for 32784 bytes of threadgroup memory \(limit 32768\)"):
        ok(out, grid=1, threadgroup=32, threadgroup_memory={0: 32769}, backend=host_only)
    with pytest.raises(ap.ResourceLimitError, match="1056 threads per threadgroup exceeds the pipeline.s limit of 1024"):
        ok(out, grid=1, threadgroup=(32, 33), threadgroup_memory={0: 128}, backend=host_only)
    with pytest.raises(ValueError, match=r"\[\[threadgroup\(0\)\]\] parameter 't' but the dispatch gave it no"):
        ok(out, grid=1, threadgroup=32, backend=host_only)
    assert issubclass(ap.ResourceLimitError, ValueError) and issubclass(ap.ResourceLimitError, ap.DispatchError)
    assert ok.info(host_only).max_total_threads_per_threadgroup == 1024


OOB = """
kernel void oob(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                constant int& shift [[buffer(2)]], constant uint& write_mode [[buffer(3)]],
                uint i [[thread_position_in_grid]]) {
    if (write_mode != 0) {
        y[int(i) + shift] = 1.0f;
    } else {
        y[i] = x[int(i) + shift];
    }
}"""


@pytest.mark.parametrize("shift,write,message", [
    (1, 1, r"out-of-bounds write of buffer 1 \('y'\) at byte offset 400 \(the buffer has 400 bytes\), by thread"),
    (1, 0, r"out-of-bounds access of buffer 0 \('x'\) at byte offset 400 \(the buffer has 400 bytes\)"),
    (-1, 1, r"out-of-bounds write before the start of buffer 1 \('y'\), 4 bytes before offset 0"),
])
def test_checked_mode_reports_buffer_and_offset(host_only: str, shift: int, write: int, message: str) -> None:
    k = kernel(OOB, "oob")
    x = np.arange(100, dtype=np.float32)
    y = np.zeros(100, dtype=np.float32)
    with pytest.raises(ap.OutOfBoundsError, match=message):
        k(x, y, np.int32(shift), np.uint32(write), grid=100, threadgroup=1, backend=host_only, checked=True)
    np.testing.assert_array_equal(y, 0.0)  # a failed checked dispatch leaves the outputs alone
    k(x, y, np.int32(0), np.uint32(0), grid=100, threadgroup=1, backend=host_only, checked=True)
    np.testing.assert_array_equal(y, x)  # in bounds: results are copied back


def test_checked_mode_keeps_aliased_slots_aliased(host_only: str) -> None:
    """Two [[buffer]] slots over one array: the second slot sees what the kernel wrote through the first."""
    k = kernel("""
        kernel void alias(device float* a [[buffer(0)]], device float* b [[buffer(1)]],
                          uint i [[thread_position_in_grid]]) {
            a[i] = float(i) + 1.0f;
            threadgroup_barrier(mem_flags::mem_device);
            b[(i + 1) % 8] += 10.0f * a[(i + 1) % 8];
        }""", "alias")
    x = np.zeros(8, np.float32)
    k(x, x, grid=1, threadgroup=8, backend=host_only, checked=True)
    np.testing.assert_array_equal(x, 11.0 * (np.arange(8) + 1))


def test_checked_mode_from_environment(host_only: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import numpy as np, attention_proto as ap
        k = ap.Kernel({HEADER + OOB!r}, "oob")
        try:
            k(np.zeros(8, np.float32), np.zeros(8, np.float32), np.int32(8), np.uint32(1), grid=8,
              threadgroup=1, backend="host")
        except ap.OutOfBoundsError as e:
            print("caught:", e)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "APROTO_CHECKED": "1"})
    assert "caught: [host] kernel 'oob': out-of-bounds write of buffer 1 ('y')" in r.stdout, r.stdout + r.stderr


def test_wild_access_without_checked_mode_raises_instead_of_crashing(host_only: str) -> None:
    k = kernel("""
        kernel void wild(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) {
            y[i + 0x40000000u] = 1.0f;   // 4 GB past the end
        }""", "wild")
    with pytest.raises(ap.DispatchError, match="invalid memory write at address .*not near any bound buffer"):
        k(np.zeros(4, np.float32), grid=1, threadgroup=4, backend=host_only)
    # the process is still healthy: the next dispatch works
    out = np.zeros(4, np.float32)
    kernel("""
        kernel void fine(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) { y[i] = 3.0f; }
        """, "fine")(out, grid=1, threadgroup=4, backend=host_only)
    np.testing.assert_array_equal(out, 3.0)


def test_stack_overflow_is_reported(host_only: str) -> None:
    k = kernel("""
        kernel void deep(device float* y [[buffer(0)]], constant uint& n [[buffer(1)]],
                         uint i [[thread_position_in_grid]]) {
            float big[200000];                 // 800 KB of locals: more than a fiber stack
            for (uint j = 0; j < n; j++) big[j] = float(j);
            y[i] = big[n - 1];
        }""", "deep")
    with pytest.raises(ap.DispatchError, match="stack overflow in thread 0"):
        k(np.zeros(1, np.float32), np.uint32(200000), grid=1, threadgroup=1, backend=host_only)


def test_compile_error_points_at_the_shader_line(host_only: str, tmp_path: Path) -> None:
    (tmp_path / "common.h").write_text("inline float twice(float x) { return 2.0f * x; }\n")
    bad = tmp_path / "bad.metal"
    bad.write_text(HEADER + '#include "common.h"\n'
                   "kernel void bad(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
                   "    y[i] = twice(undeclared_name);\n}\n")
    with pytest.raises(ap.ShaderCompileError, match=r"bad\.metal:5:\d+: error: use of undeclared identifier "
                                                    r"'undeclared_name'"):
        ap.Kernel.from_file(bad, "bad").pipeline(host_only)
    with pytest.raises(ap.ShaderCompileError, match=r"kernel function 'nope' not found \(kernels here: bad\)"):
        ap.Kernel.from_file(bad, "nope").pipeline(host_only)
    good = tmp_path / "good.metal"
    good.write_text(HEADER + '#include "common.h"\n'
                    "kernel void good(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
                    "    y[i] = twice(float(i));\n}\n")
    y = np.zeros(5, np.float32)
    ap.Kernel.from_file(good, "good")(y, grid=1, threadgroup=5, backend=host_only)
    np.testing.assert_array_equal(y, 2 * np.arange(5))


# The note the host backend adds to the C++ compiler's error (src/host/compiler.cpp).
FUNCTION_CONSTANT_ARRAY_SIZE = (r"note: in MSL a function constant, or a constant computed from one, cannot size an "
                                r"array \(Metal compiles the library before the values exist\)")


@pytest.mark.parametrize("declaration", [
    "float a[N];",                   # thread-local, sized by the function constant itself
    "threadgroup float a[N];",       # threadgroup
    "float a[HALF_N];",              # through a program-scope constant derived from it
    "threadgroup float a[HALF_N];",
])
def test_function_constant_cannot_size_an_array(host_only: str, declaration: str) -> None:
    """As on Metal, which compiles the library before function constants have values (SPIRV-Cross:
    specialization constants used as array lengths cannot be function constants in MSL): the host
    backend must not accept what Apple's compiler rejects."""
    source = """
        constant uint N [[function_constant(0)]];
        constant uint HALF_N = N / 2;
        constant constexpr uint MAX_N = 64;
        kernel void sized(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
            DECLARATION
            a[tid % HALF_N] = float(tid);
            threadgroup_barrier(mem_flags::mem_threadgroup);
            out[tid] = a[tid % HALF_N];
        }"""
    with pytest.raises(ap.ShaderCompileError, match=FUNCTION_CONSTANT_ARRAY_SIZE):
        kernel(source.replace("DECLARATION", declaration), "sized", N=8).pipeline(host_only)
    # The MSL way: a literal maximum, the function constant bounds the loops only.
    literal = declaration.replace("[N]", "[MAX_N]").replace("[HALF_N]", "[MAX_N / 2]")
    out = np.full(4, np.nan, np.float32)
    kernel(source.replace("DECLARATION", literal), "sized", N=8)(out, grid=1, threadgroup=4, backend=host_only)
    np.testing.assert_array_equal(out, np.arange(4))


def test_argument_errors_name_the_buffer(host_only: str) -> None:
    k = kernel("""
        struct P { float a; float b; };
        kernel void axpb(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                         constant P& p [[buffer(2)]], uint i [[thread_position_in_grid]]) {
            y[i] = p.a * x[i] + p.b;
        }""", "axpb")
    x = np.ones(4, np.float32)
    y = np.zeros(4, np.float32)
    p = np.array([(2.0, 1.0)], dtype=[("a", np.float32), ("b", np.float32)])[0]
    k(x, y, p, grid=1, threadgroup=4, backend=host_only)
    np.testing.assert_array_equal(y, 3.0)
    with pytest.raises(ValueError, match=r"\[\[buffer\(2\)\]\] 'p' \(const P&\) needs 8 bytes, got 4"):
        k(x, y, np.float32(2.0), grid=1, threadgroup=4, backend=host_only)
    with pytest.raises(ValueError, match=r"\[\[buffer\(2\)\]\] 'p' \(const P&\) is not bound"):
        k(x, y, grid=1, threadgroup=4, backend=host_only)
    with pytest.raises(ValueError, match=r"4 buffer arguments given, but the kernel's buffer parameters end at "
                                         r"\[\[buffer\(2\)\]\]"):
        k(x, y, p, x, grid=1, threadgroup=4, backend=host_only)
    with pytest.raises(TypeError, match=r"argument 2 .* plain Python float has no MSL type"):
        k(x, y, 2.0, grid=1, threadgroup=4, backend=host_only)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        k(x, np.zeros((4, 2), np.float32)[:, 0], p, grid=1, threadgroup=4, backend=host_only)
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"\[\[buffer\(1\)\]\] 'y' \(float\*\) is written by the kernel, but the "
                                         r"array passed is read-only"):
        k(x, frozen, p, grid=1, threadgroup=4, backend=host_only)
    # The element type is checked: an int32 array is not a float buffer unless viewed as one on purpose.
    ints = np.zeros(4, np.int32)
    with pytest.raises(TypeError, match=r"\[\[buffer\(1\)\]\] 'y' \(float\*\) holds float32 elements, got a "
                                        r"int32 array .*array.view\(np.float32\)"):
        k(x, ints, p, grid=1, threadgroup=4, backend=host_only)
    k(x, ints.view(np.float32), p, grid=1, threadgroup=4, backend=host_only)
    np.testing.assert_array_equal(ints.view(np.float32), 3.0)
    k(x.view(np.uint8), y, p, grid=1, threadgroup=4, backend=host_only)  # uint8: raw bytes, any pointer type
    with pytest.raises(ValueError, match="grid must be >= 1"):
        k(x, y, p, grid=0, threadgroup=4, backend=host_only)
    with pytest.raises(ap.BackendUnavailableError, match="unknown or unavailable backend 'cuda'"):
        k(x, y, p, grid=1, threadgroup=4, backend="cuda")


def test_cached_variant_loads_from_disk_in_a_new_process(host_only: str, tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, time, numpy as np, attention_proto as ap
        src = '''#include <metal_stdlib>
        using namespace metal;
        constant uint K [[function_constant(0)]];
        kernel void addk(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) { y[i] += float(K); }'''
        start = time.perf_counter()
        k = ap.Kernel(src, "addk", constants={"K": 7})
        info = k.info("host")
        y = np.zeros(3, np.float32)
        k(y, grid=1, threadgroup=3, backend="host")
        print(info.cache, y.tolist(), round(time.perf_counter() - start, 3))
    """)
    env = {**__import__("os").environ, "APROTO_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert first.stdout.startswith("compiled [7.0, 7.0, 7.0]"), first.stdout + first.stderr
    assert second.stdout.startswith("disk [7.0, 7.0, 7.0]"), second.stdout + second.stderr
    assert list((tmp_path / "host").glob("addk-*.so")), "the variant is cached on disk"
