"""Flash attention forward (shaders/flash_attention.metal) against the FP64 reference.

Every numerics test poisons `out` and `lse_out` with NaN, hands exactly those arrays to the kernel and
checks every element against the reference, so an element the kernel never wrote fails the test. Outputs
are package arrays (which Metal wraps in place) or plain numpy arrays (which Metal copies in and out),
so both of Metal's paths run.

Two bounds per output. The relative Frobenius error of the whole output: the reference sees the same
(rounded) inputs, so the error comes from the kernel's own roundings: P = exp2(S - max) is rounded to the
input type before the P V product and the output is rounded once at the end (float accumulation
throughout). That is a few unit roundoffs u of the type: float16 u = 2^-11 = 4.9e-4 -> 2e-3; bfloat16
u = 2^-8 = 3.9e-3 -> 2e-2; float32 (u = 6e-8, growing with the sum length) -> 1e-5. And an element-wise
bound, MLX's rule max(|o - r| - atol * |r|) <= atol with a per-dtype atol, so one wrong element fails:
outputs are convex combinations of standard-normal values (|r| mostly < 3), so 2 u of headroom per
element is 4e-3 (float16), 3e-2 (bfloat16) and 2e-5 (float32). The logsumexp comes from float scores of
exactly representable products, so it gets an absolute 1e-4 for every dtype.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap
from attention_proto import _core, reference
from attention_proto.protos.flash_attention import (
    DEFAULT_TILES, HEAD_DIMS, LAYOUTS, MAX_BLOCK_K, fitting_tiles, flash_attention_timed, pipeline_info,
    threadgroup_bytes,
)
from conftest import poisoned

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}
ATOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}
LSE_ATOL = 1e-4


def make_inputs(rng: np.random.Generator, dtype: str, batch: int, q_heads: int, kv_heads: int, q_len: int,
                kv_len: int, head_dim: int, q_gain: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh standard-normal q, k, v (q times `q_gain` to sharpen the softmax) in `dtype`."""
    t = DTYPES[dtype]
    q = (q_gain * rng.standard_normal((batch, q_heads, q_len, head_dim))).astype(t)
    k = rng.standard_normal((batch, kv_heads, kv_len, head_dim)).astype(t)
    v = rng.standard_normal((batch, kv_heads, kv_len, head_dim)).astype(t)
    return q, k, v


def assert_close(got: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    """The norm bound and MLX's element-wise bound (module docstring)."""
    got64 = got.astype(np.float64)
    err = np.linalg.norm(got64 - expected) / max(np.linalg.norm(expected), 1e-30)
    assert err < TOLERANCE[dtype], f"relative error {err:.3g} over {TOLERANCE[dtype]} ({dtype})"
    excess = np.abs(got64 - expected) - ATOL[dtype] * np.abs(expected)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= ATOL[dtype], (f"element {worst}: got {got64[worst]:.6g}, expected {expected[worst]:.6g} "
                                          f"(over atol {ATOL[dtype]} + atol * |expected|, {dtype})")


def kernel_q(q: np.ndarray, scale: float | None, layout: str | None) -> np.ndarray:
    """The q a layout computes with: q itself, or for q_scaled layouts the Q the kernel holds, q times
    c = float32(scale * log2 e) rounded to q's dtype, divided by c again in float64 (the reference then
    sees exactly the kernel's Q; the bench's numerics table measures that rounding against plain q)."""
    if not LAYOUTS.get(layout or "", {}).get("q_scaled"):
        return q
    c = np.float32((1.0 / math.sqrt(q.shape[3]) if scale is None else scale) * math.log2(math.e))
    return (q.astype(np.float32) * c).astype(q.dtype).astype(np.float64) / np.float64(c)


def check(q: np.ndarray, k: np.ndarray, v: np.ndarray, backend: str, *, causal: bool,
          scale: float | None = None, block_q: int | None = None, block_k: int | None = None,
          memory: str = "package", with_lse: bool = True, layout: str | None = None,
          kernel: str | None = None) -> None:
    """Runs the kernel into poisoned arrays and compares every element with the FP64 reference."""
    dtype = q.dtype.name
    out = poisoned(q.shape, q.dtype, memory)
    lse = poisoned(q.shape[:3], np.float32, memory) if with_lse else None
    result = ap.flash_attention(q, k, v, causal=causal, scale=scale, block_q=block_q, block_k=block_k,
                                return_lse=with_lse, backend=backend, out=out, lse_out=lse, layout=layout,
                                kernel=kernel)
    got, got_lse = result if with_lse else (result, None)
    assert got is out and got_lse is lse
    expected, expected_lse = reference.attention(kernel_q(q, scale, layout), k, v, causal=causal, scale=scale,
                                                 return_lse=True)
    assert not np.isnan(out.astype(np.float32)).any(), "the kernel left output elements unwritten"
    assert_close(out, expected, dtype)
    empty_rows = np.isneginf(expected_lse)
    assert (out.astype(np.float32)[empty_rows] == 0).all()  # rows that see no key: exactly 0
    if with_lse:
        assert not np.isnan(lse).any(), "the kernel left logsumexp elements unwritten"
        np.testing.assert_allclose(lse, expected_lse, rtol=0, atol=LSE_ATOL)  # -inf where no key: equal infinities


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_every_head_dim_and_dtype(backend: str, rng: np.random.Generator, head_dim: int, dtype: str,
                                  causal: bool) -> None:
    # Nq != Nk, both off the tile grid; GQA with two query heads per kv head.
    q, k, v = make_inputs(rng, dtype, 1, 2, 1, 37, 45, head_dim)
    check(q, k, v, backend, causal=causal)


@pytest.mark.parametrize("memory", ["plain", "offset"])
@pytest.mark.parametrize("with_lse", [True, False])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_plain_and_misaligned_outputs(backend: str, rng: np.random.Generator, dtype: str, with_lse: bool,
                                      memory: str) -> None:
    # Memory the package did not allocate: Metal copies it in and back; the host writes it in place.
    q, k, v = make_inputs(rng, dtype, 1, 3, 1, 21, 50, 64)
    check(q, k, v, backend, causal=True, memory=memory, with_lse=with_lse)


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


def test_inputs_untouched(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "bfloat16", 1, 2, 1, 20, 30, 64)
    before = [a.copy() for a in (q, k, v)]
    check(q, k, v, backend, causal=False, with_lse=False)
    for a, b in zip((q, k, v), before):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_misaligned_inputs_are_copied_not_misread(backend: str, rng: np.random.Generator) -> None:
    # A view starting 4 bytes into a buffer: the kernel reads 16-byte vectors, so the entry point runs it
    # from an aligned copy, and counts the copy.
    raw = rng.standard_normal(1 + 1 * 2 * 24 * 32).astype(np.float32)
    q = raw[1:].reshape(1, 2, 24, 32)
    assert q.ctypes.data % 16 != 0
    k = rng.standard_normal((1, 2, 24, 32)).astype(np.float32)
    check(q, k, k.copy(), backend, causal=True)
    _, _, timing = flash_attention_timed(q, ap.aligned(k), ap.aligned(k), backend=backend)
    assert timing.buffers_copied >= 1 and timing.bytes_copied >= q.nbytes


def test_timing(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 2, 2, 37, 45, 64)
    out, lse, timing = flash_attention_timed(q, k, v, backend=backend)
    assert lse is None and out.shape == q.shape
    assert timing.backend == backend and timing.seconds > 0 and timing.wall_seconds > 0
    assert timing.timer == ("gpu" if backend == "metal" else "wall")
    assert timing.repeat == 1
    launch = timing.launches[0]
    assert launch.function == "flash_attention_f16" and tuple(launch.grid) == (2, 2, 1)  # ceil(37 / 32) x Hq x B
    assert launch.pipeline.key == launch.key and "BLOCK_Q=32u" in launch.key


def test_repeat_runs_the_kernel_n_times_and_reports_per_run(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 1, 1, 16, 300, 64)
    out = poisoned(q.shape, q.dtype)
    _, _, timing = flash_attention_timed(q, k, v, out=out, backend=backend, repeat=4)
    assert timing.repeat == 4 and timing.seconds > 0
    assert_close(out, reference.attention(q, k, v), "float32")  # the same result however many runs
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        flash_attention_timed(q, k, v, backend=backend, repeat=0)


# ---------------------------------------------------------------------------------------- layouts
# Every layout on three cases that between them cover each dtype, small and large D, causal with and
# without lse, GQA, rows without keys (Nq > Nk) and partial tiles on both axes, and each through
# several key blocks (so KV_DEVICE's direct blocks and its staged edge block both run).
LAYOUT_CASES = {  # name: (dtype, B, Hq, Hkv, Nq, Nk, D, causal, lse, block_q, block_k)
    "f16_d64_causal_gqa": ("float16", 1, 2, 1, 100, 77, 64, True, True, 16, 32),
    "bf16_d128": ("bfloat16", 1, 1, 1, 37, 45, 128, False, False, 32, 16),
    "f32_d32_rows_without_keys": ("float32", 1, 1, 1, 33, 21, 32, True, True, 8, 8),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout(backend: str, rng: np.random.Generator, layout: str, case: str) -> None:
    dtype, b, hq, hkv, nq, nk, d, causal, lse, bq, bk = LAYOUT_CASES[case]
    q, k, v = make_inputs(rng, dtype, b, hq, hkv, nq, nk, d)
    check(q, k, v, backend, causal=causal, block_q=bq, block_k=bk, with_lse=lse, layout=layout)


@pytest.mark.parametrize("case, gain", [("f16_d64_causal_gqa", 25.0), ("bf16_d128", 30.0)])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_large_magnitude(backend: str, rng: np.random.Generator, layout: str, case: str,
                                      gain: float) -> None:
    # q x 25-30: scores in the hundreds, softmaxes peaked on one key, where an exp2 overflow, a
    # sentinel leaking into the sum or a rescale skipped would show.
    dtype, b, hq, hkv, nq, nk, d, causal, lse, bq, bk = LAYOUT_CASES[case]
    q, k, v = make_inputs(rng, dtype, b, hq, hkv, nq, nk, d, q_gain=gain)
    check(q, k, v, backend, causal=causal, block_q=bq, block_k=bk, with_lse=lse, layout=layout)


def test_layout_threadgroup_bytes() -> None:
    # Rows of D * itemsize + 16 bytes, by hand: D=64 half -> 144-byte rows; Br=16, Bc=128.
    assert threadgroup_bytes(16, 128, 64, "float16", "separate") == (16 + 256) * 144  # 39 KB: over 32 KB
    assert threadgroup_bytes(16, 128, 64, "float16", "aliased") == (16 + 128) * 144 == 20736
    assert threadgroup_bytes(16, 128, 64, "float16", "direct_kv") == (16 + 128) * 144  # the edge tile
    assert threadgroup_bytes(16, 128, 64, "float16", "regs_q") == 128 * 144  # Q staged under K/V
    assert threadgroup_bytes(64, 16, 64, "float16", "regs_q") == 64 * 144
    assert threadgroup_bytes(32, 16, 128, "float16", None) == 17408  # None: the default layout
    # MFA's D = 64 fp16 tile reaches the sweep in a layout with one K/V tile, not in "separate".
    assert (16, 128) in fitting_tiles(64, "float16", layout="aliased")
    assert (16, 128) not in fitting_tiles(64, "float16", layout="separate")
    assert (32, 16) in fitting_tiles(256, "float16", layout="aliased")  # D = 256 past Bc = 8
    assert fitting_tiles(256, "float16", layout="regs_q") == []  # q_regs: D <= 128
    for layout in LAYOUTS:
        assert all(threadgroup_bytes(bq, bk, 80, "float32", layout) <= 32768
                   for bq, bk in fitting_tiles(80, "float32", layout=layout))


@pytest.mark.parametrize("layout", ["aliased", "regs_q"])
def test_layout_dispatches_its_planned_memory(backend: str, rng: np.random.Generator, layout: str) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 1, 1, 16, 16, 64)
    _, _, timing = flash_attention_timed(q, k, v, block_q=16, block_k=128, layout=layout, backend=backend)
    assert timing.launches[0].threadgroup_memory == {0: threadgroup_bytes(16, 128, 64, "float16", layout)}
    assert "KV_ALIAS=true" in timing.launches[0].key


def test_layout_errors(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 1, 1, 8, 8, 256)
    with pytest.raises(ValueError, match=r"layout must be one of separate, aliased, .* or None, got 'fast'"):
        ap.flash_attention(q, k, v, layout="fast")
    with pytest.raises(ValueError, match=r"\[flash_attention\] q_regs keeps D / 8 Q fragments in registers: "
                                         r"head_dim up to 128, got 256"):
        ap.flash_attention(q, k, v, layout="regs_q")


# ---------------------------------------------------------------------------------------- decode
# The decode kernel (shaders/flash_decode.metal): Nq <= 8, forced with kernel="decode" so a change of
# the default rule cannot silently route these to the flash kernel.


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_decode_every_head_dim_and_dtype(backend: str, rng: np.random.Generator, head_dim: int, dtype: str) -> None:
    # GQA (2 q heads per kv head share one pass), Nq from 1 to 6 across the head dims, causal with lse.
    q_len = HEAD_DIMS.index(head_dim) + 1
    q, k, v = make_inputs(rng, dtype, 2, 4, 2, q_len, 37, head_dim)
    check(q, k, v, backend, causal=True, kernel="decode")


@pytest.mark.parametrize("dtype, b, hq, hkv, nq, nk, d, causal, lse", [
    ("float32", 1, 1, 1, 1, 1, 64, False, True),       # one key
    ("float32", 1, 2, 2, 8, 3, 32, True, True),        # Nq > Nk: 5 rows see no key (0, lse -inf)
    ("float16", 1, 3, 1, 7, 100, 96, False, False),    # 21 rows of one kv head: three threadgroups
    ("bfloat16", 1, 8, 1, 8, 50, 64, True, True),      # MQA, 64 rows: eight threadgroups of 8
    ("float16", 1, 8, 2, 2, 4096, 128, True, True),    # long context
])
def test_decode_shapes(backend: str, rng: np.random.Generator, dtype: str, b: int, hq: int, hkv: int, nq: int,
                       nk: int, d: int, causal: bool, lse: bool) -> None:
    q, k, v = make_inputs(rng, dtype, b, hq, hkv, nq, nk, d)
    check(q, k, v, backend, causal=causal, with_lse=lse, kernel="decode")


@pytest.mark.parametrize("dtype, gain", [("float16", 25.0), ("bfloat16", 30.0)])
def test_decode_large_magnitude(backend: str, rng: np.random.Generator, dtype: str, gain: float) -> None:
    q, k, v = make_inputs(rng, dtype, 1, 4, 2, 4, 300, 64, q_gain=gain)
    check(q, k, v, backend, causal=True, kernel="decode")
    check(q, k, v, backend, causal=False, memory="plain", with_lse=False, kernel="decode")


def test_decode_is_picked_for_few_query_rows(backend: str, rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 4, 2, 8, 40, 64)
    _, _, timing = flash_attention_timed(q, k, v, backend=backend)
    launch = timing.launches[0]
    assert launch.function == "flash_decode_f16" and tuple(launch.grid) == (2, 2, 1)  # 16 rows per kv head / 8
    assert launch.threadgroup_memory == {0: 4 * 8 * (2 * 8 + 64)}  # the shader's header formula
    for flash in ({"block_q": 8}, {"layout": "aliased"}, {"kernel": "flash"}):  # any flash option: flash
        assert flash_attention_timed(q, k, v, backend=backend, **flash)[2].launches[0].function == "flash_attention_f16"
    q9 = make_inputs(rng, "float16", 1, 4, 2, 9, 40, 64)[0]
    assert flash_attention_timed(q9, k, v, backend=backend)[2].launches[0].function == "flash_attention_f16"


def test_decode_errors(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 2, 1, 9, 16, 64)
    with pytest.raises(ValueError, match=r"\[flash_decode\] the decode kernel takes up to 8 query rows \(Nq\), got 9"):
        ap.flash_attention(q, k, v, kernel="decode")
    with pytest.raises(ValueError, match="block_q, block_k, layout, alibi_slopes, softcap and rope are options of kernel='flash'"):
        ap.flash_attention(q[:, :, :4], k, v, kernel="decode", block_k=16)
    with pytest.raises(ValueError, match="kernel must be 'flash', 'decode' or None, got 'vector'"):
        ap.flash_attention(q, k, v, kernel="vector")
    with pytest.raises(ValueError, match=r"\[flash_decode\] head_dim 72 not supported"):
        ap.flash_attention(*make_inputs(rng, "float32", 1, 1, 1, 2, 8, 72), kernel="decode")


# ---------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", [32, 80, 256])
def test_threadgroup_memory_dispatched_is_the_planned_tile_buffer(backend: str, rng: np.random.Generator,
                                                                 head_dim: int, dtype: str) -> None:
    # The kernel declares no threadgroup arrays (function constants cannot size arrays in MSL): its
    # tiles are the [[threadgroup(0)]] buffer, dispatched with exactly the planned bytes.
    block_q, block_k = DEFAULT_TILES[(head_dim, dtype)]
    q, k, v = make_inputs(rng, dtype, 1, 1, 1, 9, 9, head_dim)
    _, _, timing = flash_attention_timed(q, k, v, causal=True, backend=backend)
    itemsize = 4 if dtype == "float32" else 2
    expected = (block_q + 2 * block_k) * (head_dim * itemsize + 16)
    assert timing.launches[0].threadgroup_memory == {0: expected}
    assert threadgroup_bytes(block_q, block_k, head_dim, dtype) == expected
    assert expected % 16 == 0  # Metal's rule for a threadgroup-memory length
    # Nothing beyond the dispatched buffer (host: measured by the runs; Metal: staticThreadgroupMemoryLength).
    info = pipeline_info(head_dim, dtype, block_q=block_q, block_k=block_k, causal=True, backend=backend)
    assert info.static_threadgroup_memory == 0


def test_threadgroup_bytes_formula() -> None:
    # (Br + 2 Bc) rows of D elements + 16 bytes, worked by hand: D=128 half, Br=32, Bc=16 -> 64 * 272
    assert threadgroup_bytes(32, 16, 128, np.float16) == 17408
    assert threadgroup_bytes(8, 8, 256, "float32") == 24 * 1040
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
    out = poisoned(q.shape, q.dtype)
    with pytest.raises(ap.ResourceLimitError, match=r"\[flash_attention\] .*BLOCK_Q=16u.* needs 33280 bytes of "
                                                    r"threadgroup memory \(limit 32768"):
        ap.flash_attention(q, k, v, block_q=16, block_k=8, backend=backend, out=out)
    assert np.isnan(out).all()  # nothing ran
    with pytest.raises(ValueError):  # ResourceLimitError is a ValueError: it is the caller's configuration
        ap.flash_attention(q, k, v, block_q=16, block_k=8, backend=backend)


def test_block_k_over_the_register_arrays_is_rejected(backend: str, rng: np.random.Generator) -> None:
    # The score registers are sized for MAX_BLOCK_K keys (a literal: MSL array sizes cannot be
    # function constants); a bigger block_k is an error, not an out-of-bounds register write.
    q, k, v = make_inputs(rng, "float16", 1, 1, 1, 8, 8, 32)
    bigger = MAX_BLOCK_K + 8
    with pytest.raises(ValueError, match=rf"\[flash_attention\] block_k must be a multiple of 8 in 8..{MAX_BLOCK_K}, "
                                         rf"got {bigger}"):
        ap.flash_attention(q, k, v, block_q=8, block_k=bigger, backend=backend)


# ---------------------------------------------------------------------------------------- errors
# Validation lives once, in the C++ entry point: these go through the public API and through the raw
# binding alike, with the same messages.


@pytest.fixture
def qkv(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_inputs(rng, "float32", 1, 4, 2, 8, 8, 64)


def test_dtype_errors_are_type_errors(qkv: tuple[np.ndarray, ...]) -> None:
    q, k, v = qkv
    with pytest.raises(TypeError, match=r"\[flash_attention\] k must have the dtype of q \(float32\), got float16"):
        ap.flash_attention(q, k.astype(np.float16), v)
    with pytest.raises(TypeError, match=r"q must be float32, float16 or bfloat16, got float64"):
        ap.flash_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    with pytest.raises(TypeError, match=r"\[flash_attention\] k must be a numpy array, got list"):
        ap.flash_attention(q, k.tolist(), v)
    with pytest.raises(TypeError, match=r"causal must be a bool"):
        ap.flash_attention(q, k, v, causal=1)
    with pytest.raises(TypeError, match="block_k must be an int"):
        ap.flash_attention(q, k, v, block_k=16.0)


def test_shape_mismatch(qkv: tuple[np.ndarray, ...]) -> None:
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"v has shape \(1, 2, 4, 64\), expected \[B, Hkv, Nk, D\] with Nk = 8 "
                                         r"\(from k\)"):
        ap.flash_attention(q, k, v[:, :, :4].copy())
    with pytest.raises(ValueError, match=r"k has shape .* with D = 32 \(from q\)"):
        ap.flash_attention(q[:, :, :, :32].copy(), k, v)
    with pytest.raises(ValueError, match=r"q must have 4 dimensions \[B, Hq, Nq, D\], got shape \(4, 8, 64\)"):
        ap.flash_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"out has shape \(1, 4, 8, 32\), expected \[B, Hq, Nq, D\] with D = 64"):
        ap.flash_attention(q, k, v, out=np.empty((1, 4, 8, 32), np.float32))
    with pytest.raises(ValueError, match=r"lse has shape \(1, 4, 7\), expected \[B, Hq, Nq\] with Nq = 8"):
        ap.flash_attention(q, k, v, return_lse=True, lse_out=np.empty((1, 4, 7), np.float32))


def test_unsupported_head_dim(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 1, 1, 8, 8, 72)
    with pytest.raises(ValueError, match=r"head_dim 72 not supported \(supported: 32, 64, 80, 96, 128, 256\)"):
        ap.flash_attention(q, k, v)


def test_heads_not_divisible(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 3, 2, 8, 8, 32)
    with pytest.raises(ValueError, match=r"q heads \(3\) must be a multiple of kv heads \(2\)"):
        ap.flash_attention(q, k, v)


def test_other_bad_arguments(qkv: tuple[np.ndarray, ...]) -> None:
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"q must be C-contiguous"):
        ap.flash_attention(np.swapaxes(q, 1, 2).copy().swapaxes(1, 2), k, v)
    with pytest.raises(ValueError, match=r"q must be C-contiguous"):
        ap.flash_attention(q[:, :, ::2], k, v)
    with pytest.raises(ValueError, match="block_q must be a multiple of 8 in 8..256, got 12"):
        ap.flash_attention(q, k, v, block_q=12)
    with pytest.raises(ap.BackendUnavailableError, match="backend 'cuda'"):
        ap.flash_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="backend 'cuda'"):  # BackendUnavailableError is a ValueError
        ap.flash_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="scale must be a finite number"):
        ap.flash_attention(q, k, v, scale=math.inf)
    with pytest.raises(TypeError, match="out must have the dtype of q"):
        ap.flash_attention(q, k, v, out=np.empty((1, 4, 8, 64), np.float16))
    with pytest.raises(ValueError, match="out must not overlap k"):
        ap.flash_attention(q[:, :2].copy(), k, v, out=k)
    with pytest.raises(ValueError, match="lse_out is given but return_lse is False"):
        ap.flash_attention(q, k, v, lse_out=np.empty((1, 4, 8), np.float32))
    frozen = np.empty_like(q)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        ap.flash_attention(q, k, v, out=frozen)


def test_the_entry_point_validates_on_its_own(backend: str, qkv: tuple[np.ndarray, ...]) -> None:
    """The binding trusts nothing from Python: each bad call is an error before any memory is read."""
    q, k, v = qkv
    out = np.full_like(q, np.nan)
    options = {"causal": True, "scale": 0.125, "block_q": 16, "block_k": 16}

    def call(**arrays):
        return _core.flash_attention({"q": q, "k": k, "v": v, "out": out, **arrays}, options, backend)

    call()  # the well-formed call works
    assert not np.isnan(out).any()
    with pytest.raises(TypeError, match=r"\[flash_attention\] missing array argument 'out'"):
        _core.flash_attention({"q": q, "k": k, "v": v}, options, backend)
    with pytest.raises(TypeError, match=r"\[flash_attention\] option 'block_q' is required"):
        _core.flash_attention({"q": q, "k": k, "v": v, "out": out}, {**options, "block_q": None}, backend)
    with pytest.raises(TypeError, match=r"unknown option 'tiles'"):
        _core.flash_attention({"q": q, "k": k, "v": v, "out": out}, {**options, "tiles": 3}, backend)
    with pytest.raises(ValueError, match=r"q heads \(4\) must be a multiple of kv heads \(3\)"):
        call(k=k[:, :1].repeat(3, 1), v=v[:, :1].repeat(3, 1))
    with pytest.raises(ValueError, match="q must be C-contiguous"):
        call(q=np.swapaxes(q, 2, 3))
    with pytest.raises(ValueError, match=r"head_dim 36 not supported"):
        call(q=q[..., :36].copy(), k=k[..., :36].copy(), v=v[..., :36].copy(), out=out[..., :36].copy())


# ---------------------------------------------------------------------------------------- bench


def test_bench_smoke(host_only: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both bench modes on a tiny problem: tables, heatmap, findings labelled as CPU results, peers."""
    from attention_proto import bench, kb
    from attention_proto.benches import flash_attention as fa_bench

    peer = bench.PeerResult("torch", "torch cpu", bench.TimingStats.from_samples([0.002, 0.003]))
    monkeypatch.setattr(bench, "run_peers", lambda *args, **kwargs: {"torch": peer})  # no MLX/torch here
    findings = tmp_path / "findings.jsonl"
    common = ["--backend", host_only, "--findings", str(findings), "--head-dims", "32", "--dtypes", "float16",
              "--seq", "24", "--heads", "1", "--samples", "1"]
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
    assert len(default) == 1 and "torch 2.5 ms wall (torch cpu)" in default[0].claim
    assert {f.question for f in loaded} == {"best_tile", "default_tile", "error", "tiles_fit"}
    assert fa_bench.main(common + ["--quick"]) == 0  # a re-run replaces its findings
    assert len(kb.load(findings)) == len(loaded)
