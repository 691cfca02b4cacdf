"""Flash attention forward (shaders/flash_attention.metal) against the FP64 reference.

Every numerics test poisons `out` and `lse_out` with NaN, hands exactly those arrays to the kernel and
checks every element against the reference, so an element the kernel never wrote fails the test.

Tolerances are relative Frobenius errors of the output. The reference sees the same (rounded) inputs,
so the error comes from the kernel's own roundings: P = exp2(S - max) is rounded to the input type
before the P V product and the output is rounded once at the end (float accumulation throughout).
That is a few unit roundoffs u of the type: float16 u = 2^-11 = 4.9e-4 -> 2e-3; bfloat16 u = 2^-8 =
3.9e-3 -> 2e-2; float32 (u = 6e-8, error growing with the sum length) -> 1e-5. The logsumexp comes
from float scores of exactly representable products, so it gets an absolute 1e-4 for every dtype.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap
from attention_proto import _core, reference
from attention_proto.flash_attention import (
    DEFAULT_TILES, HEAD_DIMS, MAX_BLOCK_K, fitting_tiles, flash_attention_timed, pipeline_info, threadgroup_bytes,
)

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}
LSE_ATOL = 1e-4


def make_inputs(rng: np.random.Generator, dtype: str, batch: int, q_heads: int, kv_heads: int, q_len: int,
                kv_len: int, head_dim: int, q_gain: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh standard-normal q, k, v (q times `q_gain` to sharpen the softmax) in `dtype`."""
    t = DTYPES[dtype]
    q = (q_gain * rng.standard_normal((batch, q_heads, q_len, head_dim))).astype(t)
    k = rng.standard_normal((batch, kv_heads, kv_len, head_dim)).astype(t)
    v = rng.standard_normal((batch, kv_heads, kv_len, head_dim)).astype(t)
    return q, k, v


def poisoned(shape: tuple[int, ...], dtype: object) -> np.ndarray:
    """A page-aligned array full of NaN (page-aligned: the Metal backend writes into it directly)."""
    a = ap.empty(shape, dtype)
    a[...] = np.nan
    return a


def check(q: np.ndarray, k: np.ndarray, v: np.ndarray, backend: str, *, causal: bool,
          scale: float | None = None, block_q: int | None = None, block_k: int | None = None) -> None:
    """Runs the kernel into poisoned arrays and compares every element with the FP64 reference."""
    dtype = q.dtype.name
    out = poisoned(q.shape, q.dtype)
    lse = poisoned(q.shape[:3], np.float32)
    got, got_lse = ap.flash_attention(q, k, v, causal=causal, scale=scale, block_q=block_q, block_k=block_k,
                                      return_lse=True, backend=backend, out=out, lse_out=lse)
    assert got is out and got_lse is lse
    expected, expected_lse = reference.attention(q, k, v, causal=causal, scale=scale, return_lse=True)
    assert not np.isnan(out.astype(np.float32)).any(), "the kernel left output elements unwritten"
    assert not np.isnan(lse).any(), "the kernel left logsumexp elements unwritten"
    err = np.linalg.norm(out.astype(np.float64) - expected) / max(np.linalg.norm(expected), 1e-30)
    assert err < TOLERANCE[dtype], f"relative error {err:.3g} over {TOLERANCE[dtype]} ({dtype})"
    # Rows that see no key: exactly 0 and -inf (np.testing treats equal infinities as equal).
    np.testing.assert_allclose(lse, expected_lse, rtol=0, atol=LSE_ATOL)
    empty_rows = np.isneginf(expected_lse)
    assert (out.astype(np.float32)[empty_rows] == 0).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_every_head_dim_and_dtype(backend: str, rng: np.random.Generator, head_dim: int, dtype: str,
                                  causal: bool) -> None:
    # Nq != Nk, both off the tile grid; GQA with two query heads per kv head.
    q, k, v = make_inputs(rng, dtype, 1, 2, 1, 37, 45, head_dim)
    check(q, k, v, backend, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len, kv_len", [(1, 1), (1, 7), (7, 1), (7, 33), (33, 7), (33, 100), (100, 33),
                                           (100, 100)])
def test_odd_lengths(backend: str, rng: np.random.Generator, q_len: int, kv_len: int, causal: bool) -> None:
    # Causal with q_len > kv_len leaves the first q_len - kv_len rows without keys (output 0, lse -inf).
    q, k, v = make_inputs(rng, "float32", 1, 1, 1, q_len, kv_len, 64)
    check(q, k, v, backend, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_long_sequence(backend: str, rng: np.random.Generator, causal: bool) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 1, 1, 777, 777, 32)
    check(q, k, v, backend, causal=causal)


def test_long_keys_few_queries(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 1, 1, 7, 777, 32)
    check(q, k, v, backend, causal=True)


@pytest.mark.parametrize("q_heads, kv_heads", [(4, 2), (4, 1), (3, 3)])
def test_grouped_query_heads(backend: str, rng: np.random.Generator, q_heads: int, kv_heads: int) -> None:
    q, k, v = make_inputs(rng, "float16", 2, q_heads, kv_heads, 33, 20, 64)
    check(q, k, v, backend, causal=True)


@pytest.mark.parametrize("block_q, block_k", [(8, 8), (16, 64), (64, 16), (8, 128), (128, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_tile_configs_with_partial_edge_tiles(backend: str, rng: np.random.Generator, block_q: int,
                                              block_k: int, causal: bool) -> None:
    # 100 x 77 leaves partial tiles on both axes for every config; a sharper softmax (q x 3) makes the
    # running max change between key blocks, which exercises the rescaling.
    q, k, v = make_inputs(rng, "float16", 1, 2, 2, 100, 77, 32, q_gain=3.0)
    check(q, k, v, backend, causal=causal, block_q=block_q, block_k=block_k)


def test_custom_scale(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 2, 1, 37, 45, 64)
    check(q, k, v, backend, causal=False, scale=0.3)


def test_without_lse_and_inputs_untouched(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "bfloat16", 1, 2, 1, 20, 30, 64)
    before = [a.copy() for a in (q, k, v)]
    out = poisoned(q.shape, q.dtype)
    got = ap.flash_attention(q, k, v, backend=backend, out=out)
    assert got is out and not np.isnan(out.astype(np.float32)).any()
    err = np.linalg.norm(out.astype(np.float64) - reference.attention(q, k, v)) / np.linalg.norm(
        reference.attention(q, k, v))
    assert err < TOLERANCE["bfloat16"]
    for a, b in zip((q, k, v), before):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_misaligned_inputs_are_copied_not_misread(backend: str, rng: np.random.Generator) -> None:
    # A view starting 4 bytes into a buffer: the kernel reads 16-byte vectors, so the API copies it.
    raw = rng.standard_normal(1 + 1 * 2 * 24 * 32).astype(np.float32)
    q = raw[1:].reshape(1, 2, 24, 32)
    assert q.ctypes.data % 16 != 0
    k = rng.standard_normal((1, 2, 24, 32)).astype(np.float32)
    check(q, k, k.copy(), backend, causal=True)


def test_timing(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 2, 2, 37, 45, 64)
    out, lse, timing = flash_attention_timed(q, k, v, backend=backend)
    assert lse is None and out.shape == q.shape
    assert timing.backend == backend and timing.seconds > 0
    assert timing.timer == ("gpu" if backend == "metal" else "wall")


# ---------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", [32, 80, 256])
def test_threadgroup_bytes_is_what_the_kernel_is_given(backend: str, rng: np.random.Generator, head_dim: int,
                                                       dtype: str) -> None:
    # The kernel declares no threadgroup arrays (function constants cannot size arrays in MSL): its
    # tiles are the [[threadgroup(0)]] buffer, dispatched with exactly threadgroup_bytes() bytes.
    block_q, block_k = DEFAULT_TILES[(head_dim, dtype)]
    q, k, v = make_inputs(rng, dtype, 1, 1, 1, 9, 9, head_dim)
    out = poisoned(q.shape, q.dtype)
    view = (lambda a: a.view(np.uint16)) if dtype == "bfloat16" else (lambda a: a)
    result = _core.flash_attention(view(q), view(k), view(v), view(out), None, dtype, True, 0.125, block_q,
                                   block_k, backend, str(ap.shader_dir()))
    expected = threadgroup_bytes(block_q, block_k, head_dim, dtype)
    assert result["threadgroup_memory"] == {0: expected}
    assert expected % 16 == 0  # Metal's rule for a threadgroup-memory length
    assert _core.flash_attention_threadgroup_bytes(block_q, block_k, head_dim, dtype) == expected
    assert not np.isnan(out.astype(np.float32)).any()
    # Nothing beyond the dispatched buffer (host: measured by the last dispatch; Metal: the pipeline's
    # staticThreadgroupMemoryLength).
    info = pipeline_info(head_dim, dtype, block_q=block_q, block_k=block_k, causal=True, backend=backend)
    assert info["static_threadgroup_memory"] == 0


def test_threadgroup_bytes_formula() -> None:
    # (Br + 2 Bc) rows of D elements + 16 bytes: D=128 half, Br=32, Bc=16 -> 64 * 272
    assert threadgroup_bytes(32, 16, 128, np.float16) == 17408
    assert threadgroup_bytes(8, 8, 256, "float32") == 24960
    assert threadgroup_bytes(16, 8, 256, "float32") == 33280  # over 32 KB


def test_default_tiles_cover_every_config_and_fit() -> None:
    for head_dim in HEAD_DIMS:
        for dtype in DTYPES:
            tile = DEFAULT_TILES[(head_dim, dtype)]
            assert tile in fitting_tiles(head_dim, dtype, 32768), (head_dim, dtype, tile)


def test_fitting_tiles() -> None:
    assert fitting_tiles(256, "float32") == [(8, 8)]
    assert (128, 128) in fitting_tiles(32, "float16")
    assert (8, 256) not in fitting_tiles(32, "float16", sizes=(8, 256))  # block_k over MAX_BLOCK_K
    assert all(threadgroup_bytes(bq, bk, 96, "bfloat16") <= 32768 for bq, bk in fitting_tiles(96, "bfloat16"))


def test_tiles_over_32kb_are_rejected_before_dispatch(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 1, 1, 8, 8, 256)
    with pytest.raises(ValueError, match=r"33280 bytes of threadgroup memory.*32768.*\(8, 8\)"):
        ap.flash_attention(q, k, v, block_q=16, block_k=8, backend=backend)
    # The C++ entry point re-checks it on its own, before any dispatch: `out` stays untouched.
    out = poisoned(q.shape, q.dtype)
    with pytest.raises(ap.ResourceLimitError, match=r"\[flash_attention\].*33280"):
        _core.flash_attention(q, k, v, out, None, "float32", False, 0.1, 16, 8, backend, str(ap.shader_dir()))
    assert np.isnan(out).all()


def test_block_k_over_the_register_arrays_is_rejected(backend: str, rng: np.random.Generator) -> None:
    # The score registers are sized for MAX_BLOCK_K keys (a literal: MSL array sizes cannot be
    # function constants); a bigger block_k is an error, not an out-of-bounds register write.
    q, k, v = make_inputs(rng, "float16", 1, 1, 1, 8, 8, 32)
    bigger = MAX_BLOCK_K + 8
    assert threadgroup_bytes(8, bigger, 32, "float16") <= 32768  # rejected for the registers alone
    with pytest.raises(ValueError, match=rf"block_k must be at most {MAX_BLOCK_K}.*got {bigger}"):
        ap.flash_attention(q, k, v, block_q=8, block_k=bigger, backend=backend)
    out = np.empty_like(q)
    with pytest.raises(ValueError, match=rf"\[flash_attention\] block_k {bigger} must be a multiple of 8 in "
                                         rf"8..{MAX_BLOCK_K}"):
        _core.flash_attention(q, k, v, out, None, "float16", False, 0.1, 8, bigger, backend, str(ap.shader_dir()))


# ---------------------------------------------------------------------------------------- errors


@pytest.fixture
def qkv(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_inputs(rng, "float32", 1, 4, 2, 8, 8, 64)


def test_dtype_mix(qkv: tuple[np.ndarray, ...]) -> None:
    q, k, v = qkv
    with pytest.raises(TypeError, match="share one dtype.*float32, float16, float32"):
        ap.flash_attention(q, k.astype(np.float16), v)
    with pytest.raises(TypeError, match="float32, float16, bfloat16.*float64"):
        ap.flash_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))


def test_shape_mismatch(qkv: tuple[np.ndarray, ...]) -> None:
    q, k, v = qkv
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        ap.flash_attention(q, k, v[:, :, :4].copy())
    with pytest.raises(ValueError, match=r"k shape .* does not match q shape"):
        ap.flash_attention(q[:, :, :, :32].copy(), k, v)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        ap.flash_attention(q[0], k, v)


def test_unsupported_head_dim(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 1, 1, 8, 8, 72)
    with pytest.raises(ValueError, match="head dim 72 .*supported: 32, 64, 80, 96, 128, 256"):
        ap.flash_attention(q, k, v)


def test_heads_not_divisible(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 3, 2, 8, 8, 32)
    with pytest.raises(ValueError, match=r"q heads \(3\) must be a multiple of k/v heads \(2\)"):
        ap.flash_attention(q, k, v)


def test_other_bad_arguments(qkv: tuple[np.ndarray, ...]) -> None:
    q, k, v = qkv
    with pytest.raises(ValueError, match="q must be C-contiguous"):
        ap.flash_attention(np.swapaxes(q, 1, 2).copy().swapaxes(1, 2), k, v)
    with pytest.raises(ValueError, match="block_q must be a positive multiple of 8"):
        ap.flash_attention(q, k, v, block_q=12)
    with pytest.raises(TypeError, match="block_k must be an int"):
        ap.flash_attention(q, k, v, block_k=16.0)
    with pytest.raises(ValueError, match="backend 'cuda' is not available here"):
        ap.flash_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="scale must be a finite number"):
        ap.flash_attention(q, k, v, scale=math.inf)
    with pytest.raises(ValueError, match=r"out must have shape \(1, 4, 8, 64\) and dtype float32"):
        ap.flash_attention(q, k, v, out=np.empty((1, 4, 8, 64), np.float16))
    with pytest.raises(ValueError, match="out must not overlap k"):
        ap.flash_attention(q[:, :2].copy(), k, v, out=k)
    with pytest.raises(TypeError, match="k must be a numpy array"):
        ap.flash_attention(q, k.tolist(), v)


def test_cpp_entry_point_rechecks_shapes(backend: str, qkv: tuple[np.ndarray, ...]) -> None:
    """The binding trusts nothing: each bad call is a ValueError before any memory is read."""
    q, k, v = qkv
    out = np.empty_like(q)
    sd = str(ap.shader_dir())

    def call(q=q, k=k, v=v, out=out, lse=None, dtype="float32"):
        _core.flash_attention(q, k, v, out, lse, dtype, True, 0.125, 16, 16, backend, sd)

    call()  # the well-formed call works
    cases = [
        (dict(v=v[:, :, :4].copy()), "v shape .* must equal k shape"),
        (dict(out=out[:, :, :4].copy()), "out shape .* must equal q shape"),
        (dict(k=k[:, :1].repeat(3, 1), v=v[:, :1].repeat(3, 1)), r"q heads \(4\) must be a multiple of kv heads \(3\)"),
        (dict(q=np.swapaxes(q, 2, 3)), "q must be C-contiguous"),
        (dict(q=q[:, :, ::2]), "q must be C-contiguous"),
        (dict(lse=np.empty((1, 4, 7), np.float32)), r"lse shape \(1, 4, 7\) must be"),
        (dict(dtype="float16"), "q must hold float16 elements"),
        (dict(q=q[:, :, :, :36].copy(), k=k[..., :36].copy(), v=v[..., :36].copy(), out=out[..., :36].copy()),
         "head_dim 36 not supported"),
        (dict(dtype="float64"), "dtype 'float64' not supported"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=r"\[flash_attention\] " + message):
            call(**kwargs)
    with pytest.raises(TypeError):  # a read-only output: nanobind refuses it as a writable array
        ro = np.empty_like(q)
        ro.flags.writeable = False
        call(out=ro)


# ---------------------------------------------------------------------------------------- bench


def test_bench_smoke(host_only: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both bench modes on a tiny problem: tables, heatmap, findings labelled as CPU results, peers."""
    from attention_proto import bench, kb
    from attention_proto.benches import flash_attention as fa_bench

    peer = bench.PeerResult("torch", "torch cpu", bench.TimingStats.from_samples([0.002, 0.003]))
    monkeypatch.setattr(bench, "run_peers", lambda *args, **kwargs: {"torch": peer})  # no MLX/torch here
    findings = tmp_path / "findings.jsonl"
    common = ["--backend", host_only, "--findings", str(findings), "--head-dims", "32", "--dtypes", "float16",
              "--seq", "24", "--heads", "1", "--repeat", "1"]
    assert fa_bench.main(common) == 0
    assert fa_bench.main(common + ["--quick"]) == 0
    out = tmp_path / "flash_attention"
    for name in ("baseline.json", "tiles.csv", "best_tiles.json", "numerics.json", "memory.json",
                 "tiles_D32_float16.png"):
        assert (out / name).is_file(), name
    loaded = kb.load(findings)
    kinds = {f.kind for f in loaded}
    assert kinds == {"performance", "numerics", "memory"}
    for f in loaded:
        assert f.device["backend"] == "host"
        if f.kind == "performance":
            assert f.claim.startswith("CPU result"), f.claim
    default = [f for f in loaded if f.metric == "default_tile_tflops"]
    assert len(default) == 1 and "torch 2.5 ms (torch cpu)" in default[0].claim
    assert fa_bench.main(common + ["--quick"]) == 0  # a re-run replaces its findings
    assert len(kb.load(findings)) == len(loaded)
