"""The runtime on every backend: pipeline specs (constants, defines, linked functions, max threads),
compile stages and caches, repeated dispatches, typed results, errors, and first contact with Metal.

Tests marked metal_only run on a Mac with an Apple GPU and are skipped elsewhere with the reason.
"""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import attention_proto as ap
from attention_proto import metal

metal_only = pytest.mark.skipif("metal" not in ap.backends(),
                                reason="needs the Metal backend: a Mac with an Apple GPU")

SOURCE = """
#include <metal_stdlib>
using namespace metal;
constant float SCALE [[function_constant(0)]];
constant uint UNUSED_HERE [[function_constant(1)]];  // used only by `other`
kernel void scale(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                  uint i [[thread_position_in_grid]]) {
#ifdef OFFSET
    y[i] = x[i] * SCALE + OFFSET;
#else
    y[i] = x[i] * SCALE;
#endif
}
kernel void other(device float* y [[buffer(0)]], uint i [[thread_position_in_grid]]) { y[i] = float(UNUSED_HERE); }
kernel void bump(device atomic_uint* n [[buffer(0)]], uint i [[thread_position_in_grid]]) {
    atomic_fetch_add_explicit(n, 1u, memory_order_relaxed);
}
"""


def run_scale(backend: str, rng: np.random.Generator, **spec) -> tuple[np.ndarray, np.ndarray, ap.DispatchTiming]:
    x = rng.standard_normal(96).astype(np.float32)
    y = np.full(96, np.nan, np.float32)
    t = ap.Kernel(SOURCE, "scale", **spec)(x, y, grid=3, threadgroup=32, backend=backend)
    return x, y, t


def test_constants_for_functions_that_do_not_use_them_are_ignored(backend: str, rng: np.random.Generator) -> None:
    # Metal ignores values for constants the function does not use; the host does the same.
    x, y, _ = run_scale(backend, rng, constants={"SCALE": 3.0, "UNUSED_HERE": 7})
    np.testing.assert_allclose(y, 3 * x, rtol=1e-6)


def test_unknown_constant_names_are_errors_on_every_backend(backend: str, rng: np.random.Generator) -> None:
    with pytest.raises(ap.ShaderCompileError, match=r"constant 'SCALLE' was given but the source declares no such "
                                                    r"function constant \(declared: SCALE \(0\), UNUSED_HERE \(1\)\)"):
        run_scale(backend, rng, constants={"SCALLE": 3.0})
    with pytest.raises(ap.ShaderCompileError, match=r"constant '#5' was given"):
        run_scale(backend, rng, constants={5: 3.0})
    x, y, _ = run_scale(backend, rng, constants={0: 2.0})  # by index
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)


def test_defines_are_preprocessor_macros_and_part_of_the_key(backend: str, rng: np.random.Generator) -> None:
    x, y, t = run_scale(backend, rng, constants={"SCALE": 2.0}, defines={"OFFSET": "0.5f"})
    np.testing.assert_allclose(y, 2 * x + 0.5, rtol=1e-6)
    assert t.launches[0].key == "scale[SCALE=2.0f]{OFFSET=0.5f}"
    x, y, t = run_scale(backend, rng, constants={"SCALE": 2.0})
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)
    assert t.launches[0].key == "scale[SCALE=2.0f]"
    with pytest.raises(ap.ShaderCompileError, match="define '1X' is not a macro name"):
        run_scale(backend, rng, constants={"SCALE": 2.0}, defines={"1X": "1"})


def test_compile_stages_and_caches(backend: str, rng: np.random.Generator) -> None:
    # A define the kernel uses, with a value never used before: a library this process (and the disk
    # cache) never saw.
    fresh = {"SCALE": 1.5}, {"OFFSET": f"{rng.integers(1 << 40)}.0f"}
    first = ap.Kernel(SOURCE, "scale", constants=fresh[0], defines=fresh[1]).info(backend)
    assert first.cache == "compiled" and first.library_origin == "source"
    assert first.library_seconds > 0 and first.compile_seconds >= first.library_seconds
    again = ap.Kernel(SOURCE, "scale", constants=fresh[0], defines=fresh[1]).info(backend)
    assert again.cache == "memory" and again.library_origin == "memory" and again.compile_seconds == 0
    assert again.key == first.key
    names = [(a.kind, a.index, a.name, a.dtype, a.writable) for a in first.arguments]
    assert names == [("buffer", 0, "x", "float32", False), ("buffer", 1, "y", "float32", True),
                     ("position", 0, "i", "uint32", False)]


def test_max_threads_hint_limits_the_pipeline(backend: str, rng: np.random.Generator) -> None:
    k = ap.Kernel(SOURCE, "scale", constants={"SCALE": 1.0}, max_threads_per_threadgroup=64)
    assert k.info(backend).max_total_threads_per_threadgroup <= 64
    assert k.info(backend).key.endswith("@64")
    x, y = np.ones(128, np.float32), np.zeros(128, np.float32)
    k(x, y, grid=2, threadgroup=64, backend=backend)
    with pytest.raises(ap.ResourceLimitError, match="128 threads per threadgroup exceeds the pipeline's limit"):
        k(x, y, grid=1, threadgroup=128, backend=backend)


def test_repeat_runs_the_dispatch_n_times(backend: str) -> None:
    counter = np.zeros(1, np.uint32)
    t = ap.Kernel(SOURCE, "bump")(counter, grid=2, threadgroup=32, backend=backend, repeat=5)
    assert counter[0] == 5 * 64 and t.repeat == 5 and t.seconds > 0 and t.wall_seconds > 0
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        ap.Kernel(SOURCE, "bump")(counter, grid=1, threadgroup=1, backend=backend, repeat=0)


def test_a_linked_function_must_be_visible() -> None:
    """Linking is tested in test_score_mod_attention.py; a name no library publishes is a compile error."""
    with pytest.raises(ap.ShaderCompileError, match="linked function 'helper' is not a \\[\\[visible\\]\\]"):
        ap.Kernel(SOURCE, "scale", constants={"SCALE": 1.0}, linked_functions=["helper"]).info("host")


def test_typed_device_info() -> None:
    info = ap.device_info("host")
    assert isinstance(info, ap.DeviceInfo) and info.backend == "host" and info.family == "cpu"
    assert info.max_threadgroup_memory == 32768 and info.simd_width == 32
    d = info.as_dict()
    assert d["name"] == info.name and d["extra"]["timer"].startswith("wall clock")


def test_bad_input_is_value_or_type_error_everywhere() -> None:
    assert issubclass(ap.ResourceLimitError, ValueError) and issubclass(ap.ResourceLimitError, ap.DispatchError)
    assert issubclass(ap.BackendUnavailableError, ValueError)
    assert issubclass(ap.ShaderCompileError, RuntimeError) and not issubclass(ap.ShaderCompileError, ValueError)
    k = ap.Kernel(SOURCE, "scale", constants={"SCALE": 1.0})
    with pytest.raises(ValueError, match="unknown or unavailable backend 'tpu'"):
        k(np.ones(4, np.float32), np.ones(4, np.float32), grid=1, threadgroup=4, backend="tpu")
    with pytest.raises(TypeError, match="grid must be an int or a tuple"):
        k(np.ones(4, np.float32), np.ones(4, np.float32), grid=1.5, threadgroup=4)
    with pytest.raises(TypeError, match=r"holds float32 elements, got a float64 array"):
        k(np.ones(4), np.ones(4, np.float32), grid=1, threadgroup=4)


@pytest.mark.skipif(metal.available(), reason="checks what a machine without the Metal backend says")
def test_metal_controls_say_they_need_metal() -> None:
    with pytest.raises(ap.BackendUnavailableError, match=r"\[metal\] .*need the Metal backend"):
        metal.set_archive("/tmp/x.metallib")
    with pytest.raises(ValueError):
        metal.stats()


@pytest.mark.skipif(not (sys.platform == "darwin" and platform.machine() == "arm64"),
                    reason="first contact with Metal: only an Apple Silicon Mac must have a Metal device")
def test_apple_silicon_finds_its_metal_device() -> None:
    # APROTO_REQUIRE_METAL=0 lets a GPU-less Mac (a VM, CI) run on the host alone; otherwise no device is
    # an error at backends(), so the suite never passes on the CPU alone by accident.
    import os

    if os.environ.get("APROTO_REQUIRE_METAL") == "0":
        pytest.skip("APROTO_REQUIRE_METAL=0: host-only run requested")
    assert "metal" in ap.backends()
    assert ap.device_info("metal").family.startswith("apple")


@metal_only
def test_metal_wraps_package_memory_and_copies_the_rest(rng: np.random.Generator) -> None:
    k = ap.Kernel(SOURCE, "scale", constants={"SCALE": 2.0})
    n = 156 * 32
    x = ap.aligned(rng.standard_normal(n).astype(np.float32))
    y = ap.empty(n, np.float32)
    t = k(x, y, grid=156, threadgroup=32, backend="metal")
    assert t.bytes_copied == 0 and t.buffers_copied == 0
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)
    plain_x, plain_y = np.array(x), np.zeros(n, np.float32)  # numpy's own (malloc'd) memory
    t = k(plain_x, plain_y, grid=156, threadgroup=32, backend="metal")
    assert t.buffers_copied == 2 and t.bytes_copied == 3 * n * 4  # x in; y in and out
    np.testing.assert_allclose(plain_y, 2 * plain_x, rtol=1e-6)


@metal_only
def test_metal_repeat_uses_the_gpu_timer() -> None:
    counter = np.zeros(1, np.uint32)
    t = ap.Kernel(SOURCE, "bump")(counter, grid=64, threadgroup=256, backend="metal", repeat=10)
    assert counter[0] == 10 * 64 * 256 and t.timer == "gpu" and 0 < t.seconds <= t.wall_seconds


@metal_only
def test_metal_archive_round_trip_without_compiling(tmp_path: Path) -> None:
    archive = tmp_path / "a.metallib"
    spec = {"constants": {"SCALE": 4.0}, "defines": {"OFFSET": "1.0f"}, "max_threads_per_threadgroup": 64}
    metal.set_archive(archive)
    try:
        metal.archive_add(ap.Kernel(SOURCE, "scale", **spec))
        metal.archive_serialize()
    finally:
        metal.clear_archive()
    assert archive.stat().st_size > 0
    script = textwrap.dedent(f"""
        import numpy as np, attention_proto as ap
        from attention_proto import metal
        metal.set_archive({str(archive)!r}, fail_on_miss=True)
        k = ap.Kernel({SOURCE!r}, "scale", **{spec!r})
        x = np.ones(64, np.float32); y = np.zeros(64, np.float32)
        k(x, y, grid=1, threadgroup=64, backend="metal")
        print(k.info("metal").cache, y[0])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["archive", "5.0"]


def test_the_process_exits_cleanly_after_errors_and_arrays() -> None:
    # A static Python handle released after the interpreter is gone crashed the process at exit (signal
    # 11 after every test passed); a subprocess exercises errors, package arrays and a dispatch, then exits.
    script = textwrap.dedent("""
        import numpy as np, attention_proto as ap
        a = ap.empty((1, 1, 8, 36), np.float32)
        try:
            ap.flash_attention(a, a, a)
        except ValueError as e:
            print(type(e).__name__)
        q = np.ones((1, 1, 8, 32), np.float32)
        print(float(ap.flash_attention(q, q, q)[0, 0, 0, 0]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert out.stdout.split() == ["ValueError", "1.0"]
