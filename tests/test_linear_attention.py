"""Linear attention (shaders/linear_attention.metal): chunked and recurrent against the FP64 recurrence.

Every numerics test poisons the outputs (o, and the states where there are any) with NaN, hands exactly
those arrays to the kernels and checks every element against ``reference.linear_attention``, so an
element never written fails. Outputs are package arrays (Metal wraps them) or plain numpy arrays (Metal
copies them in and out).

Two bounds per output. The norm bound is FLA's (``fla.utils.assert_close``: RMS of the error over RMS of
the reference): 4e-3 for float16 / bfloat16 (FLA's own bound for ``chunk_simple_gla``'s output in
tests/ops/test_simple_gla.py) and 1e-5 for float32. The element-wise bound is MLX's rule
``max(|o - r| - atol |r|) <= atol`` applied to the outputs divided by the reference's RMS (linear
attention is not normalised: outputs grow with the state), i.e. ``|o - r| <= atol (|r| + rms(r))``.
Calibration: the reference sees the same rounded inputs, every product runs on float32 fragments and the
output is rounded to its type once, so for half types the element error is that one rounding, at most u |r|
(u = 2^-11 for float16, 2^-8 for bfloat16; measured 0.87 u and 0.84 u over T up to 1024): atol = 2 u. For
float32 (and for the float32 states of every dtype) the error is the float32 arithmetic's, largest without
decay, where the state sums all T steps (about sqrt(T) u = 2e-6 at T = 1024; measured worst 3.1e-6):
atol = 1e-5. It does not grow with decay strength: the chunk-local cumulative sum G is kept in two floats
(the shader's chunk_cumsum); a plain float sum measured 3.6e-5 at g = logsigmoid(x) / 0.03.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap
from attention_proto import _core, reference
from attention_proto.protos import linear_attention as la

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
RMS_BOUND = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 4e-3}
ATOL = {"float32": 1e-5, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}
STATE = "float32"  # states are float32 for every input dtype: float32 bounds


def make_inputs(rng: np.random.Generator, dtype: str, b: int, t: int, h: int, k: int, v: int,
                gate: float | None = 1.0) -> tuple[np.ndarray, ...]:
    """Fresh q, k, v (standard normal, in `dtype`) and FLA's test gate g = logsigmoid(x) / gate with x
    standard normal (float32; None without a gate): larger `gate` is weaker decay."""
    ty = DTYPES[dtype]
    q = rng.standard_normal((b, t, h, k)).astype(ty)
    key = rng.standard_normal((b, t, h, k)).astype(ty)
    val = rng.standard_normal((b, t, h, v)).astype(ty)
    g = None if gate is None else (-np.logaddexp(0.0, -rng.standard_normal((b, t, h))) / gate).astype(np.float32)
    return q, key, val, g


def initial(rng: np.random.Generator, q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """An initial state as FLA's tests draw it (uniform in [0, 1)), float32 [B, H, K, V]."""
    return rng.random((q.shape[0], q.shape[2], q.shape[3], v.shape[3])).astype(np.float32)


def poisoned(shape: tuple[int, ...], dtype: object, memory: str = "package") -> np.ndarray:
    """NaN everywhere, in package memory (Metal writes it in place) or a plain numpy array (copied)."""
    a = ap.empty(shape, dtype) if memory == "package" else np.empty(shape, dtype)
    a[...] = np.nan
    return a


def assert_close(got: np.ndarray, expected: np.ndarray, dtype: str, what: str = "o") -> None:
    """Every element written, then the norm bound and the element-wise bound (module docstring)."""
    got64 = got.astype(np.float64)
    assert not np.isnan(got64).any(), f"{what}: the kernel left elements unwritten"
    rms = np.sqrt(np.mean(expected ** 2))
    ratio = np.sqrt(np.mean((got64 - expected) ** 2)) / rms
    assert ratio < RMS_BOUND[dtype], f"{what}: RMS error / RMS reference {ratio:.3g} over {RMS_BOUND[dtype]} ({dtype})"
    excess = np.abs(got64 - expected) - ATOL[dtype] * (np.abs(expected) + rms)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 0, (f"{what} {worst}: got {got64[worst]:.6g}, expected {expected[worst]:.6g} (over "
                                f"atol {ATOL[dtype]:.3g} x (|expected| + rms {rms:.3g}), {dtype})")


def check(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None, backend: str, *,
          h0: np.ndarray | None = None, final: bool = True, memory: str = "package", scale: float | None = None,
          **options: object) -> None:
    """Runs linear_attention into poisoned outputs and compares them with the FP64 recurrence."""
    dtype = q.dtype.name
    out = poisoned((*q.shape[:3], v.shape[3]), q.dtype, memory)
    final_out = poisoned((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), np.float32, memory) if final else None
    result = ap.linear_attention(q, k, v, g, scale=scale, initial_state=h0, output_final_state=final,
                                 backend=backend, out=out, final_state_out=final_out, **options)
    got, got_final = result if final else (result, None)
    assert got is out and got_final is final_out
    expected, expected_final = reference.linear_attention(q, k, v, g, scale=scale, initial_state=h0)
    assert_close(out, expected, dtype)
    if final:
        assert_close(final_out, expected_final, STATE, "final_state")


MODES = ["chunk", "recurrent"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("t", [1, 15, 16, 63, 64, 65, 300, 1000])
def test_every_length(backend: str, rng: np.random.Generator, t: int, mode: str) -> None:
    # Partial, exact and multiple chunks of 64; K != V.
    q, k, v, g = make_inputs(rng, "float16", 1, t, 2, 32, 40)
    check(q, k, v, g, backend, h0=initial(rng, q, v), mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key_dim, value_dim", [(32, 32), (60, 60), (64, 64), (100, 100), (128, 128), (60, 100),
                                                (128, 32), (8, 128), (13, 9)])
def test_every_head_dim(backend: str, rng: np.random.Generator, key_dim: int, value_dim: int, mode: str) -> None:
    # 60, 100 and 13, 9 are not multiples of 8: padded inside the kernels (the inputs are used as they are).
    q, k, v, g = make_inputs(rng, "float32", 1, 70, 1, key_dim, value_dim)
    check(q, k, v, g, backend, h0=initial(rng, q, v), mode=mode, chunk_size=32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gate", [None, 1.0])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_dtype_with_and_without_gate(backend: str, rng: np.random.Generator, dtype: str,
                                           gate: float | None, mode: str) -> None:
    # Without g this is plain causal linear attention: the state only grows.
    q, k, v, g = make_inputs(rng, dtype, 2, 130, 2, 64, 60, gate)
    check(q, k, v, g, backend, mode=mode, final=gate is not None)


@pytest.mark.parametrize("memory", ["package", "plain"])
@pytest.mark.parametrize("chunk_size", la.CHUNK_SIZES)
def test_every_chunk_size(backend: str, rng: np.random.Generator, chunk_size: int, memory: str) -> None:
    q, k, v, g = make_inputs(rng, "bfloat16", 1, 100, 3, 48, 64, gate=0.5)
    check(q, k, v, g, backend, h0=initial(rng, q, v), chunk_size=chunk_size, memory=memory)


@pytest.mark.parametrize("block_k, block_v", [(8, 8), (8, 128), (128, 8), (24, 40)])
def test_block_sizes_with_partial_blocks(backend: str, rng: np.random.Generator, block_k: int, block_v: int) -> None:
    # K = V = 100: every block size leaves a partial last block (and 128 is capped at 104).
    q, k, v, g = make_inputs(rng, "float16", 1, 50, 1, 100, 100)
    check(q, k, v, g, backend, h0=initial(rng, q, v), chunk_size=16, block_k=block_k, block_v=block_v)


# FLA's held-out cases for chunk_simple_gla (tests/ops/test_simple_gla.py::test_chunk: random q, k, v,
# g = logsigmoid(randn) / gate_logit_normalizer, h0 = rand, scale 1 or 0.1), B and H cut for the CPU.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b, t, h, d, scale, gate, dtype", [
    (1, 63, 1, 64, 1.0, 1.0, "float16"),
    (2, 500, 3, 60, 1.0, 1.0, "float16"),
    (1, 1000, 1, 128, 1.0, 0.1, "float16"),
    (1, 1024, 1, 128, 0.1, 1.0, "bfloat16"),
    (1, 1024, 1, 100, 0.1, 10.0, "float16"),
    (1, 1024, 1, 64, 1.0, 0.1, "float32"),
])
def test_fla_held_out_cases(backend: str, rng: np.random.Generator, b: int, t: int, h: int, d: int, scale: float,
                            gate: float, dtype: str, mode: str) -> None:
    q, k, v, g = make_inputs(rng, dtype, b, t, h, d, d, gate)
    check(q, k, v, g, backend, h0=initial(rng, q, v), scale=scale, mode=mode)


def reference_states(k: np.ndarray, v: np.ndarray, g: np.ndarray | None, chunk_size: int,
                     h0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The FP64 state entering every chunk [B, N, H, K, V], and the final one, chunk by chunk."""
    state, states = h0, []
    zeros = np.zeros_like(k)
    for start in range(0, k.shape[1], chunk_size):
        part = slice(start, start + chunk_size)
        states.append(np.zeros((k.shape[0], k.shape[2], k.shape[3], v.shape[3])) if state is None else state)
        _, state = reference.linear_attention(zeros[:, part], k[:, part], v[:, part],
                                              None if g is None else g[:, part], initial_state=state)
    return np.stack(states, axis=1), state


@pytest.mark.parametrize("dtype, t, gate, with_h0", [("float32", 300, 1.0, True), ("bfloat16", 64, None, False),
                                                     ("float16", 129, 10.0, False)])
def test_chunk_h_alone(backend: str, rng: np.random.Generator, dtype: str, t: int, gate: float | None,
                       with_h0: bool) -> None:
    _, k, v, g = make_inputs(rng, dtype, 2, t, 2, 40, 72, gate)
    h0 = initial(rng, k, v) if with_h0 else None
    chunks = -(-t // 32)
    out = poisoned((2, chunks, 2, 40, 72), np.float32)
    final_out = poisoned((2, 2, 40, 72), np.float32, "plain")
    h, final = la.chunk_h(k, v, g, chunk_size=32, initial_state=h0, output_final_state=True, backend=backend,
                          out=out, final_state_out=final_out)
    assert h is out and final is final_out
    expected, expected_final = reference_states(k, v, g, 32, h0)
    assert_close(h, expected, STATE, "h")
    assert_close(final, expected_final, STATE, "final_state")
    assert la.chunk_h(k, v, g, chunk_size=32, initial_state=h0, backend=backend).shape == h.shape


@pytest.mark.parametrize("dtype, gate", [("float16", 1.0), ("float32", None)])
def test_chunk_o_alone(backend: str, rng: np.random.Generator, dtype: str, gate: float | None) -> None:
    # From the FP64 states (rounded to float32): chunk_o alone must give the recurrence's output.
    q, k, v, g = make_inputs(rng, dtype, 1, 90, 2, 24, 56, gate)
    h0 = initial(rng, q, v)
    states, _ = reference_states(k, v, g, 16, h0)
    out = poisoned((1, 90, 2, 56), q.dtype, "plain")
    o = la.chunk_o(q, k, v, states.astype(np.float32), g, chunk_size=16, scale=0.3, backend=backend, out=out)
    assert o is out
    assert_close(o, reference.linear_attention(q, k, v, g, scale=0.3, initial_state=h0)[0], dtype)


def test_inputs_untouched_and_defaults(backend: str, rng: np.random.Generator) -> None:
    q, k, v, g = make_inputs(rng, "bfloat16", 1, 40, 1, 32, 32)
    h0 = initial(rng, q, v)
    before = [a.copy() for a in (q, k, v, g, h0)]
    o = ap.linear_attention(q, k, v, g, initial_state=h0, backend=backend)  # scale K^-0.5, chunk 64
    assert o.shape == (1, 40, 1, 32) and o.dtype == q.dtype and ap.in_package_memory(o)
    assert_close(o, reference.linear_attention(q, k, v, g, initial_state=h0)[0], "bfloat16")
    for a, b in zip((q, k, v, g, h0), before):
        assert a.tobytes() == b.tobytes()


def test_timing_chunk_mode_is_two_launches(backend: str, rng: np.random.Generator) -> None:
    q, k, v, g = make_inputs(rng, "float16", 2, 100, 3, 64, 32)
    o, final, timing = la.linear_attention_timed(q, k, v, g, chunk_size=32, backend=backend, repeat=3)
    assert final is None and timing.repeat == 3 and timing.seconds > 0 and timing.wall_seconds > 0
    assert timing.timer == ("gpu" if backend == "metal" else "wall")
    h_launch, o_launch = timing.launches
    assert h_launch.function == "linear_attention_chunk_h_f16" and o_launch.function == "linear_attention_chunk_o_f16"
    assert tuple(h_launch.grid) == (2, 1, 6) and tuple(h_launch.threadgroup) == (128, 1, 1)  # K/32, V/32, B*H
    assert tuple(o_launch.grid) == (1, 4, 6) and tuple(o_launch.threadgroup) == (128, 1, 1)  # V/32, chunks, B*H
    assert "CHUNK=32u" in o_launch.key and "USE_G=true" in o_launch.key
    assert_close(o, reference.linear_attention(q, k, v, g)[0], "float16")  # repeated runs: the same result
    _, _, timing = la.linear_attention_timed(q, k, v, g, mode="recurrent", backend=backend)
    assert [launch.function for launch in timing.launches] == ["linear_attention_recurrent_f16"]
    assert tuple(timing.launches[0].grid) == (1, 3, 2)  # ceil(V / 32), H, B


# ---------------------------------------------------------------------------------------- memory


def test_threadgroup_bytes_formula() -> None:
    # Worked by hand from the shader's layouts (ROW(n, s) = n s + 16):
    # float32, chunk 64, blocks 32: chunk_h 64 (144 + 144 + 8); chunk_o 64 (3 x 144 + 8) + 32 x 144, exactly 32 KB.
    assert la.threadgroup_bytes(128, 128, np.float32) == {"chunk_h": 18944, "chunk_o": 32768}
    # float16, chunk 16, block_k 64, block_v 32: 16 (144 + 80 + 8); 16 (2 x 144 + 80 + 8) + 64 x 144.
    assert la.threadgroup_bytes(64, 64, "float16", chunk_size=16, block_k=64) == {"chunk_h": 3712, "chunk_o": 15232}
    # blocks are capped at K, V rounded up to 8: K = V = 20 -> 24
    assert la.threadgroup_bytes(20, 20, "float16", block_k=64, block_v=64) == la.threadgroup_bytes(
        20, 20, "float16", block_k=24, block_v=24)
    for dtype in DTYPES:
        for chunk in la.CHUNK_SIZES:  # the default blocks fit 32 KB for every chunk size, dtype and head dim
            assert max(la.threadgroup_bytes(128, 128, dtype, chunk_size=chunk).values()) <= 32768


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_dispatched_threadgroup_memory_is_the_planned(backend: str, rng: np.random.Generator, dtype: str) -> None:
    q, k, v, g = make_inputs(rng, dtype, 1, 20, 1, 60, 100)
    _, _, timing = la.linear_attention_timed(q, k, v, g, chunk_size=16, block_k=64, block_v=40, backend=backend)
    planned = la.threadgroup_bytes(60, 100, dtype, chunk_size=16, block_k=64, block_v=40)
    assert [launch.threadgroup_memory for launch in timing.launches] == [{0: planned["chunk_h"]},
                                                                        {0: planned["chunk_o"]}]
    assert all(bytes_ % 16 == 0 for bytes_ in planned.values())  # Metal's rule for a threadgroup-memory length
    for launch in timing.launches:  # nothing beyond the dispatched buffer
        assert launch.pipeline.static_threadgroup_memory == 0


def test_configurations_over_32kb_are_rejected_before_dispatch(backend: str, rng: np.random.Generator) -> None:
    q, k, v, g = make_inputs(rng, "float32", 1, 64, 1, 64, 64)
    out = poisoned((1, 64, 1, 64), np.float32)
    # float32, chunk 64, block_k 32, block_v 64: chunk_h fits, 64 (144 + 272 + 8) = 27136 bytes, but chunk_o
    # needs 64 (2 x 144 + 272 + 8) + 32 x 272 = 45056
    assert la.threadgroup_bytes(64, 64, np.float32, block_v=64) == {"chunk_h": 27136, "chunk_o": 45056}
    with pytest.raises(ap.ResourceLimitError, match=r"\[linear_attention\] linear_attention_chunk_o_f32\[.*CHUNK=64u"
                                                    r".* needs 45056 bytes of threadgroup memory \(limit 32768"):
        ap.linear_attention(q, k, v, g, block_v=64, backend=backend, out=out)
    assert np.isnan(out).all()  # nothing ran, not even chunk_h
    with pytest.raises(ValueError):  # ResourceLimitError is a ValueError: the caller's configuration
        la.chunk_o(q, k, v, np.zeros((1, 1, 1, 64, 64), np.float32), g, block_v=64, backend=backend)


# ---------------------------------------------------------------------------------------- errors
# Validation lives once, in the C++ entry points: the public API and the raw bindings give the same messages.


@pytest.fixture
def qkvg(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    return make_inputs(rng, "float32", 1, 20, 2, 16, 24)


def test_gate_values(qkvg: tuple[np.ndarray, ...]) -> None:
    q, k, v, g = qkvg
    for bad in (0.5, np.nan, -np.inf):
        worse = g.copy()
        worse[0, 3, 1] = bad
        for call in (lambda: ap.linear_attention(q, k, v, worse), lambda: la.chunk_h(k, v, worse),
                     lambda: ap.linear_attention(q, k, v, worse, mode="recurrent")):
            with pytest.raises(ValueError, match=r"g must be finite and <= 0 \(a log decay\), got .* at flat index 7"):
                call()
    ap.linear_attention(q, k, v, np.zeros_like(g))  # g = 0: no decay, allowed


def test_shape_and_dtype_errors(qkvg: tuple[np.ndarray, ...]) -> None:
    q, k, v, g = qkvg
    with pytest.raises(ValueError, match=r"\[linear_attention\] k has shape \(1, 20, 2, 8\), expected \[B, T, H, K\] "
                                         r"with K = 16 \(from q\)"):
        ap.linear_attention(q, k[..., :8].copy(), v, g)
    with pytest.raises(ValueError, match=r"v has shape \(1, 19, 2, 24\), expected \[B, T, H, V\] with T = 20"):
        ap.linear_attention(q, k, v[:, :19].copy(), g)
    with pytest.raises(ValueError, match=r"g has shape \(1, 20, 1\), expected \[B, T, H\] with H = 2"):
        ap.linear_attention(q, k, v, g[..., :1].copy())
    with pytest.raises(TypeError, match=r"k must have the dtype of q \(float32\), got float16"):
        ap.linear_attention(q, k.astype(np.float16), v, g)
    with pytest.raises(TypeError, match=r"g must be float32, got float16"):
        ap.linear_attention(q, k, v, g.astype(np.float16))
    with pytest.raises(TypeError, match=r"q must be float32, float16 or bfloat16, got float64"):
        ap.linear_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    with pytest.raises(TypeError, match=r"initial_state must be float32, got float16"):
        ap.linear_attention(q, k, v, g, initial_state=np.zeros((1, 2, 16, 24), np.float16))
    with pytest.raises(ValueError, match=r"initial_state has shape \(1, 2, 24, 16\), expected \[B, H, K, V\] with "
                                         r"K = 16"):
        ap.linear_attention(q, k, v, g, initial_state=np.zeros((1, 2, 24, 16), np.float32))
    with pytest.raises(ValueError, match=r"q must be C-contiguous"):
        ap.linear_attention(np.swapaxes(np.swapaxes(q, 1, 2).copy(), 1, 2), k, v, g)
    with pytest.raises(ValueError, match=r"o has shape \(1, 20, 2, 16\), expected \[B, T, H, V\] with V = 24"):
        ap.linear_attention(q, k, v, g, out=np.empty((1, 20, 2, 16), np.float32))


def test_unsupported_sizes_and_options(rng: np.random.Generator, qkvg: tuple[np.ndarray, ...]) -> None:
    q, k, v, g = qkvg
    for chunk in (17, 0, 128):
        with pytest.raises(ValueError, match=rf"chunk_size {chunk} not supported \(supported: 16, 32, 64\)"):
            ap.linear_attention(q, k, v, g, chunk_size=chunk)
    for kd, vd, name, size in ((4, 24, "K", 4), (136, 24, "K", 136), (16, 130, "V", 130)):
        qq, kk, vv, gg = make_inputs(rng, "float32", 1, 5, 1, kd, vd)
        for mode in MODES:
            with pytest.raises(ValueError, match=rf"\[linear_attention\] {name} must be in 8..128, got {size}"):
                ap.linear_attention(qq, kk, vv, gg, mode=mode)
    with pytest.raises(ValueError, match=r"mode must be 'chunk' or 'recurrent', got 'parallel'"):
        ap.linear_attention(q, k, v, g, mode="parallel")
    with pytest.raises(ValueError, match=r"block_k must be a multiple of 8 in 8..128, got 12"):
        ap.linear_attention(q, k, v, g, block_k=12)
    with pytest.raises(ValueError, match=r"block_v must be a multiple of 8 in 8..128, got 136"):
        la.chunk_o(q, k, v, np.zeros((1, 1, 2, 16, 24), np.float32), g, block_v=136)
    with pytest.raises(ValueError, match=r"\[linear_attention_chunk_h\] h must hold one state per chunk: N = 2"):
        la.chunk_h(k, v, g, chunk_size=16, out=np.empty((1, 1, 2, 16, 24), np.float32))
    with pytest.raises(ValueError, match=r"scale must be a finite number"):
        ap.linear_attention(q, k, v, g, scale=np.inf)
    with pytest.raises(ap.BackendUnavailableError, match="backend 'cuda'"):
        ap.linear_attention(q, k, v, g, backend="cuda")


def test_the_entry_points_validate_on_their_own(backend: str, qkvg: tuple[np.ndarray, ...]) -> None:
    """The bindings trust nothing from Python: each bad call fails before any memory is read or written."""
    q, k, v, g = qkvg
    o = np.full((1, 20, 2, 24), np.nan, np.float32)
    h = np.full((1, 2, 2, 16, 24), np.nan, np.float32)
    options = {"mode": "chunk", "chunk_size": 16, "scale": 0.25, "block_k": 32, "block_v": 32}
    arrays = {"q": q, "k": k, "v": v, "g": g, "h": h, "o": o}
    _core.linear_attention(arrays, options, backend)  # the well-formed call works
    assert not np.isnan(o).any() and not np.isnan(h).any()
    with pytest.raises(ValueError, match=r"\[linear_attention\] mode 'chunk' needs the state buffer h"):
        _core.linear_attention({**arrays, "h": None}, options, backend)
    with pytest.raises(ValueError, match=r"h \(chunk states\) is not used with mode 'recurrent'"):
        _core.linear_attention(arrays, {**options, "mode": "recurrent"}, backend)
    with pytest.raises(TypeError, match=r"\[linear_attention\] option 'scale' is required"):
        _core.linear_attention(arrays, {**options, "scale": None}, backend)
    with pytest.raises(TypeError, match=r"\[linear_attention_chunk_o\] missing array argument 'h'"):
        _core.linear_attention_chunk_o({"q": q, "k": k, "v": v, "o": o},
                                       {name: x for name, x in options.items() if name != "mode"}, backend)
    with pytest.raises(ValueError, match=r"h must be writable"):
        frozen = h.copy()
        frozen.flags.writeable = False
        _core.linear_attention({**arrays, "h": frozen}, options, backend)
    with pytest.raises(ValueError, match=r"o must not overlap v"):
        _core.linear_attention({**arrays, "o": v}, options, backend)


# ---------------------------------------------------------------------------------------- bench


def test_bench_smoke(host_only: str, tmp_path) -> None:
    """--quick on a tiny problem: tables, plots and findings, CPU-labelled where they are timings."""
    from attention_proto import kb
    from attention_proto.benches import linear_attention as bench

    findings = tmp_path / "findings.jsonl"
    argv = ["--backend", host_only, "--findings", str(findings), "--quick", "--samples", "1", "--dims", "32",
            "--dtypes", "float16", "--seq", "64", "--seqs", "16", "64"]
    assert bench.main(argv) == 0
    out = tmp_path / "linear_attention"
    for name in ("chunk_sizes.json", "best_chunks.json", "memory.json", "over_seq.json", "numerics.json",
                 "chunk_sizes_D32.png", "over_seq.png"):
        assert (out / name).is_file(), name
    loaded = kb.load(findings)
    assert {f.question for f in loaded} == {q.id for q in bench.SPEC.questions}
    for f in loaded:
        assert f.device["backend"] == "host"
        if f.kind == "performance":
            assert f.claim.startswith("CPU result"), f.claim
    assert bench.main(argv) == 0  # a re-run replaces its findings
    assert len(kb.load(findings)) == len(loaded)
