"""Prototype 7: the RoPE pass (shaders/rope.metal), ALiBi slopes, and flash attention's variants (ALiBi,
softcap, fused RoPE) against the FP64 references.

RoPE bounds. The kernel computes theta_i = pos * exp2(i * freq_exp) in float: the float angle is off by
at most about |pos| * 2^-22 rad (the exponent's rounding costs |y| ln2 u relative with
y = i * freq_exp, and pos * 2^-y * |y| ln2 <= 0.53 pos; exp2 and the product add a few u of theta), and
each output element is a rotation of a pair, so its error is at most the pair's magnitude times the
angle error plus a few u. The bound is therefore |o - r| <= atol * (1 + max|x|) with
atol = 2^-21 * (1 + max|pos|) in float32, plus half an ulp of the output type when it is rounded to
float16 (u = 2^-11 -> 1e-3 with headroom) or bfloat16 (u = 2^-8 -> 8e-3). Every output is poisoned with
NaN first and checked everywhere.

Flash attention bounds: those of tests/test_flash_attention.py (same kernel, same roundings). Fused RoPE
rounds the rotated Q and K to the input type, as the separate pass does; the reference rotates in
float64 without rounding, which adds about u/sqrt(2) to each score (well inside those bounds) and, in
float32, the angle error above (positions here stay below 100: under 5e-5 rad).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap
from attention_proto import reference
from conftest import poisoned

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
ROUNDING = {"float32": 0.0, "float16": 1e-3, "bfloat16": 8e-3}


def rope_atol(dtype: str, max_pos: float) -> float:
    """The element-wise bound of the module docstring, per unit of max|x|."""
    return 2.0 ** -21 * (1 + abs(max_pos)) + ROUNDING[dtype]


def check_rope(x: np.ndarray, backend: str, memory: str = "package", **kwargs) -> np.ndarray:
    """Runs the RoPE pass into a poisoned output and compares every element with reference.rope."""
    out = poisoned(x.shape, x.dtype, memory)
    got = ap.rope(x, out=out, backend=backend, **kwargs)
    assert got is out
    expected = reference.rope(x, **kwargs)
    got64 = out.astype(np.float64)
    assert not np.isnan(got64).any(), "the kernel left output elements unwritten"
    positions = kwargs.get("positions")
    max_pos = np.abs(positions).max() if positions is not None else abs(kwargs.get("offset", 0)) + x.shape[2] - 1
    bound = rope_atol(x.dtype.name, max_pos) * (1 + np.abs(x.astype(np.float64)).max())
    err = np.abs(got64 - expected)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err[worst] <= bound, f"element {worst}: got {got64[worst]:.7g}, expected {expected[worst]:.7g} (bound {bound:.3g})"
    return out


# ---------------------------------------------------------------------------------------- rope


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("style", ["neox", "gptj"])
@pytest.mark.parametrize("head_dim, rotary_dim", [(64, None), (40, 6), (33, 10), (256, 128)])
def test_rope_matches_reference(backend: str, rng: np.random.Generator, head_dim: int, rotary_dim: int | None,
                                style: str, dtype: str) -> None:
    # Partial rotary dims (6: three pairs per half, 10 of an odd D = 33 with 23 dims passed through), rows
    # off the 8-row threadgroups (17), and D = 256 (128 pairs: 4 steps of the SIMD-group across a row).
    x = rng.standard_normal((2, 3, 17, head_dim)).astype(DTYPES[dtype])
    offset = int(rng.integers(0, 80))
    check_rope(x, backend, "plain" if rotary_dim == 6 else "package", offset=offset, style=style,
               rotary_dim=rotary_dim)


@pytest.mark.parametrize("style", ["neox", "gptj"])
@pytest.mark.parametrize("per_batch", [False, True])
def test_rope_positions_arrays(backend: str, rng: np.random.Generator, per_batch: bool, style: str) -> None:
    # Any int32 positions, negative and repeated ones included: [N] shared by the batch or [B, N].
    x = rng.standard_normal((3, 2, 9, 32)).astype(np.float16)
    positions = rng.integers(-40, 300, (3, 9) if per_batch else (9,)).astype(np.int32)
    out = check_rope(x, backend, positions=positions, style=style, base=500.0, rotary_dim=24)
    np.testing.assert_array_equal(out[..., 24:].view(np.uint16), x[..., 24:].view(np.uint16))  # copied exactly


def test_rope_at_position_zero_is_the_identity(backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 2, 5, 64)).astype(ml_dtypes.bfloat16)
    out = ap.rope(x, positions=np.zeros(5, np.int32), backend=backend)
    np.testing.assert_array_equal(out.view(np.uint16), x.view(np.uint16))


def test_rope_large_offset_and_one_row(backend: str, rng: np.random.Generator) -> None:
    # Decode: one row at position 4095 (float32 angles up to 4095 rad: the bound grows with the position).
    x = rng.standard_normal((2, 4, 1, 128)).astype(np.float32)
    check_rope(x, backend, "offset", offset=4095)


@pytest.mark.parametrize("style", ["neox", "gptj"])
def test_reference_rope_is_a_complex_rotation(rng: np.random.Generator, style: str) -> None:
    # The reference against the other way to write RoPE: pairs as complex numbers times e^{i theta},
    # and the property RoPE exists for: q(m) . k(n) depends on m - n only.
    x = rng.standard_normal((1, 1, 6, 16))
    positions = np.array([3, 0, 7, 100, -2, 11])
    half = np.arange(4)
    a, b = (half, half + 4) if style == "neox" else (2 * half, 2 * half + 1)
    z = (x[..., a] + 1j * x[..., b]) * np.exp(1j * positions[:, None] * 50.0 ** (-2.0 * half / 8))
    got = reference.rope(x, positions=positions, base=50.0, style=style, rotary_dim=8)
    np.testing.assert_allclose(got[..., a], z.real, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[..., b], z.imag, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[..., 8:], x[..., 8:])
    q, k = rng.standard_normal((2, 1, 1, 1, 16))
    dots = [np.sum(reference.rope(q, offset=m, style=style) * reference.rope(k, offset=m - 5, style=style))
            for m in (5, 17, 300)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-9)


def test_rope_errors(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 1, 6, 16)).astype(np.float32)
    cases = [
        (dict(rotary_dim=7), r"\[rope\] rotary_dim must be even and in 2..16 \(the head dim\), got 7"),
        (dict(rotary_dim=18), r"rotary_dim must be even and in 2..16 \(the head dim\), got 18"),
        (dict(rotary_dim=0), r"rotary_dim must be even .* got 0"),
        (dict(style="llama"), r"\[rope\] style must be 'neox' or 'gptj', got 'llama'"),
        (dict(base=-1.0), r"\[rope\] base must be > 0"),
        (dict(base=float("nan")), r"base must be a finite number"),
        (dict(positions=np.arange(7, dtype=np.int32)), r"positions has shape \(7,\), expected \[N\] with N = 6"),
        (dict(positions=np.zeros((3, 6), np.int32)), r"positions has shape \(3, 6\), expected \[B, N\] with B = 2"),
        (dict(positions=np.zeros((1, 2, 6), np.int32)),
         r"positions must have 1 dimensions \[N\] or 2 dimensions \[B, N\], got shape \(1, 2, 6\)"),
        (dict(positions=np.arange(6, dtype=np.int32), offset=3), r"offset must be 0 when positions are given"),
        (dict(offset=2 ** 31 - 3), r"offset must keep the positions .* in int32"),
        (dict(out=x), r"out must not overlap x"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            ap.rope(x, **kwargs)
    with pytest.raises(TypeError, match=r"\[rope\] positions must be int32, got int64"):
        ap.rope(x, positions=np.arange(6))
    with pytest.raises(TypeError, match=r"\[rope\] x must be float32, float16 or bfloat16, got float64"):
        ap.rope(x.astype(np.float64))
    with pytest.raises(TypeError, match=r"\[rope\] rotary_dim must be an int"):
        ap.rope(x, rotary_dim=8.0)


# ---------------------------------------------------------------------------------------- alibi slopes


def test_alibi_slopes_any_head_count() -> None:
    # Press et al.'s slopes: 2^(-8i/n) for a power of two; otherwise those of the largest power of two
    # p < n, then 2^(-4i/p) for odd i (BLOOM's build_alibi_tensor gives the same numbers).
    np.testing.assert_array_equal(ap.alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    twelve = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    np.testing.assert_allclose(ap.alibi_slopes(12), twelve, rtol=1e-7)
    twenty = [2.0 ** (-i / 2) for i in range(1, 17)] + [2.0 ** -0.25, 2.0 ** -0.75, 2.0 ** -1.25, 2.0 ** -1.75]
    np.testing.assert_allclose(ap.alibi_slopes(20), twenty, rtol=1e-7)
    assert ap.alibi_slopes(1).tolist() == [2.0 ** -8]
    assert ap.alibi_slopes(12).dtype == np.float32 and ap.alibi_slopes(12).shape == (12,)
    with pytest.raises(ValueError, match="num_heads must be >= 1, got 0"):
        ap.alibi_slopes(0)
    with pytest.raises(TypeError):
        ap.alibi_slopes(2.5)


# ---------------------------------------------------------------------------------------- flash attention variants
# The bounds of tests/test_flash_attention.py, whose helpers these reuse (make_inputs: standard-normal
# q, k, v; assert_close: the norm and element-wise bounds).

from test_flash_attention import LSE_ATOL, assert_close, make_inputs  # noqa: E402

HEAD_DIMS = ap.protos.flash_attention.HEAD_DIMS


def check_variant(q: np.ndarray, k: np.ndarray, v: np.ndarray, backend: str, *, causal: bool = False,
                  memory: str = "package", block_q: int | None = None, block_k: int | None = None,
                  **variants) -> np.ndarray:
    """Flash attention with ``variants`` into poisoned out / lse, every element against reference.attention."""
    out = poisoned(q.shape, q.dtype, memory)
    lse = poisoned(q.shape[:3], np.float32, memory)
    got, got_lse = ap.flash_attention(q, k, v, causal=causal, return_lse=True, backend=backend, out=out, lse_out=lse,
                                      block_q=block_q, block_k=block_k, **variants)
    assert got is out and got_lse is lse
    expected, expected_lse = reference.attention(q, k, v, causal=causal, return_lse=True, **variants)
    assert not np.isnan(out.astype(np.float32)).any(), "the kernel left output elements unwritten"
    assert not np.isnan(lse).any(), "the kernel left logsumexp elements unwritten"
    assert_close(out, expected, q.dtype.name)
    assert (out.astype(np.float32)[np.isneginf(expected_lse)] == 0).all()  # rows that see no key
    seen = np.isfinite(expected_lse)
    assert (lse[~seen] == expected_lse[~seen]).all()  # -inf where a row sees no key
    bound = LSE_ATOL + np.broadcast_to(rope_score_error(q, k, variants), lse.shape)[seen]
    excess = np.abs(lse[seen] - expected_lse[seen]) - bound
    assert excess.max() <= 0, f"logsumexp off by {excess.max():.3g} over its bound"
    return out


def rope_score_error(q: np.ndarray, k: np.ndarray, variants: dict) -> np.ndarray | float:
    """How far a score may move when fused RoPE rounds the rotated q and k to float16 or bfloat16 (the
    reference rotates in float64): each element by at most u |x|, so q.k by at most 2u ||q_i|| ||k_j||
    (rotations keep norms), times the scale; the logsumexp of row i, a softmax-weighted mean of its
    scores' moves, by at most its largest. 0 without RoPE or in float32 (module docstring)."""
    if variants.get("rope") is None or q.dtype == np.float32:
        return 0.0
    u = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}[q.dtype.name]
    q_norm = np.linalg.norm(q.astype(np.float64), axis=-1)  # [B, Hq, Nq]
    k_norm = np.linalg.norm(k.astype(np.float64), axis=-1).max(axis=-1)  # [B, Hkv]
    k_norm = np.repeat(k_norm, q.shape[1] // k.shape[1], axis=1)[..., None]
    return 2 * u * q_norm * k_norm / np.sqrt(q.shape[-1])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_all_variants_every_head_dim_and_dtype(backend: str, rng: np.random.Generator, head_dim: int,
                                               dtype: str) -> None:
    # ALiBi + softcap + fused RoPE (partial, gptj on odd head dims / 8) + causal + GQA + lse, Nq != Nk.
    q, k, v = make_inputs(rng, dtype, 1, 6, 2, 37, 45, head_dim, q_gain=2.0)
    style = "gptj" if (head_dim // 8) % 2 else "neox"
    rope = ap.Rotary(style=style, rotary_dim=head_dim // 2 + 8 if head_dim >= 64 else None, q_offset=8, k_offset=0)
    check_variant(q, k, v, backend, causal=True, alibi_slopes=ap.alibi_slopes(6), softcap=4.0, rope=rope)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", ["alibi", "softcap", "rope_neox", "rope_gptj_partial"])
def test_each_variant_alone(backend: str, rng: np.random.Generator, variant: str, causal: bool) -> None:
    # q x 3 sharpens the softmax, so a wrong bias, cap or rotation moves the output.
    q, k, v = make_inputs(rng, "float32", 2, 4, 4, 33, 50, 64, q_gain=3.0)
    variants = {"alibi": {"alibi_slopes": (0.1 + rng.random(4)).astype(np.float32)},  # not the standard slopes
                "softcap": {"softcap": 2.5},
                "rope_neox": {"rope": ap.Rotary(q_offset=17, k_offset=0)},
                "rope_gptj_partial": {"rope": ap.Rotary(style="gptj", rotary_dim=40, base=1000.0, k_offset=9)}}
    check_variant(q, k, v, backend, causal=causal, **variants[variant])


@pytest.mark.parametrize("q_heads, kv_heads", [(12, 4), (20, 1), (12, 12)])
def test_causal_alibi_gqa_non_power_of_two_heads(backend: str, rng: np.random.Generator, q_heads: int,
                                                 kv_heads: int) -> None:
    # 12 and 20 heads: the slopes past the largest power of two; GQA groups of 3, MQA with 20.
    q, k, v = make_inputs(rng, "float16", 1, q_heads, kv_heads, 29, 41, 64)
    check_variant(q, k, v, backend, causal=True, alibi_slopes=ap.alibi_slopes(q_heads))


@pytest.mark.parametrize("q_len, kv_len", [(21, 60), (60, 21), (1, 77)])
def test_fused_rope_causal_offsets(backend: str, rng: np.random.Generator, q_len: int, kv_len: int) -> None:
    # Nq != Nk both ways (60 > 21: rows without keys) and decode; the queries sit at the end of the keys.
    q, k, v = make_inputs(rng, "bfloat16", 1, 4, 2, q_len, kv_len, 128)
    rope = ap.Rotary(q_offset=max(kv_len - q_len, 0) + 5, k_offset=5)
    check_variant(q, k, v, backend, causal=True, rope=rope)


def test_softcap_and_alibi_on_large_scores(backend: str, rng: np.random.Generator) -> None:
    # q x 10: raw scores near 10 in magnitude, which a cap of 3 bends hard (Gemma 2 caps at 50).
    q, k, v = make_inputs(rng, "float16", 2, 4, 2, 40, 40, 96, q_gain=10.0)
    check_variant(q, k, v, backend, softcap=3.0, alibi_slopes=ap.alibi_slopes(4), memory="plain")


def test_decode_with_every_variant(backend: str, rng: np.random.Generator) -> None:
    # Nq = 1 at position Nk - 1: the ALiBi distances are all <= 0, the bias 0 on the last key.
    q, k, v = make_inputs(rng, "float16", 3, 8, 2, 1, 300, 64)
    check_variant(q, k, v, backend, causal=True, alibi_slopes=ap.alibi_slopes(8), softcap=30.0,
                  rope=ap.Rotary(q_offset=299))


@pytest.mark.parametrize("block_q, block_k", [(8, 8), (16, 64), (64, 16)])
def test_variants_on_partial_edge_tiles(backend: str, rng: np.random.Generator, block_q: int, block_k: int) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 2, 1, 100, 77, 32, q_gain=3.0)
    check_variant(q, k, v, backend, causal=True, block_q=block_q, block_k=block_k, memory="offset",
                  alibi_slopes=ap.alibi_slopes(2), rope=ap.Rotary(style="gptj", k_offset=23, q_offset=0))


ULP = {"float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("rope", [ap.Rotary(q_offset=30, k_offset=22),
                                  ap.Rotary(style="gptj", rotary_dim=20, base=500.0, q_offset=3)])
def test_fused_rope_equals_the_separate_pass(backend: str, rng: np.random.Generator, rope: ap.Rotary,
                                             dtype: str) -> None:
    # Both rotate in float and round the rotated element to the input type once (rope.h is shared), so
    # the attention inputs agree to an ulp and the outputs to a few ulps of the output type.
    q, k, v = make_inputs(rng, dtype, 1, 4, 2, 37, 45, 64)
    kwargs = dict(style=rope.style, rotary_dim=rope.rotary_dim, base=rope.base, backend=backend)
    separate = ap.flash_attention(ap.rope(q, offset=rope.q_offset, **kwargs), ap.rope(k, offset=rope.k_offset, **kwargs),
                                  v, causal=True, backend=backend).astype(np.float64)
    fused = ap.flash_attention(q, k, v, causal=True, rope=rope, backend=backend).astype(np.float64)
    assert np.abs(fused - separate).max() <= 4 * ULP[dtype] * (1 + np.abs(separate).max())


def test_no_variant_runs_the_base_kernel(backend: str, rng: np.random.Generator) -> None:
    # Prototype 1 unchanged: every variant constant off in the pipeline key when none is asked for.
    q, k, v = make_inputs(rng, "float16", 1, 2, 2, 9, 9, 64)
    _, _, timing = ap.flash_attention_timed(q, k, v, backend=backend)
    for name in ("USE_ALIBI", "USE_SOFTCAP", "USE_ROPE"):
        assert f"{name}=false" in timing.launches[0].key, timing.launches[0].key
    _, _, timing = ap.flash_attention_timed(q, k, v, softcap=1.0, backend=backend)
    assert "USE_SOFTCAP=true" in timing.launches[0].key and "USE_ALIBI=false" in timing.launches[0].key


def test_variant_errors(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float32", 1, 4, 2, 8, 8, 64)
    slopes = ap.alibi_slopes(4)
    value_errors = [
        (dict(alibi_slopes=slopes[:3].copy()), r"\[flash_attention\] alibi_slopes has shape \(3,\), expected \[Hq\] "
                                              r"with Hq = 4 \(from q\)"),
        (dict(alibi_slopes=slopes[None]), r"alibi_slopes must have 1 dimensions \[Hq\]"),
        (dict(alibi_slopes=np.array([0.5, np.nan, 0.1, 0.2], np.float32)),
         r"alibi_slopes must be finite, got nan at index 1"),
        (dict(softcap=0.0), r"\[flash_attention\] softcap must be > 0, got 0"),
        (dict(softcap=-2.0), r"softcap must be > 0"),
        (dict(softcap=float("inf")), r"softcap must be a finite number"),
        (dict(softcap=float("nan")), r"softcap must be a finite number"),
        (dict(rope=ap.Rotary(rotary_dim=33)), r"\[flash_attention\] rope.rotary_dim must be even and in 2..64"),
        (dict(rope=ap.Rotary(rotary_dim=72)), r"rope.rotary_dim must be even and in 2..64 \(the head dim\), got 72"),
        (dict(rope=ap.Rotary(style="glm")), r"rope.style must be 'neox' or 'gptj', got 'glm'"),
        (dict(rope=ap.Rotary(base=0.0)), r"rope.base must be > 0"),
        (dict(rope=ap.Rotary(k_offset=2 ** 31)), r"rope.k_offset must keep the positions"),
    ]
    for kwargs, message in value_errors:
        with pytest.raises(ValueError, match=message):
            ap.flash_attention(q, k, v, **kwargs)
    with pytest.raises(TypeError, match=r"\[flash_attention\] alibi_slopes must be float32, got float64"):
        ap.flash_attention(q, k, v, alibi_slopes=slopes.astype(np.float64))
    with pytest.raises(TypeError, match=r"rope must be an attention_proto.Rotary or None, got dict"):
        ap.flash_attention(q, k, v, rope={"style": "neox"})
    with pytest.raises(TypeError, match=r"rope.q_offset must be an int"):
        ap.flash_attention(q, k, v, rope=ap.Rotary(q_offset=1.5))


# ---------------------------------------------------------------------------------------- bench


def test_bench_smoke(host_only: str, tmp_path) -> None:
    """The bench on tiny shapes: tables, bar charts, findings (timings labelled as CPU results)."""
    from attention_proto import kb
    from attention_proto.benches import attention_variants as av_bench

    findings = tmp_path / "findings.jsonl"
    args = ["--backend", host_only, "--findings", str(findings), "--quick", "--head-dim", "32", "--heads", "8",
            "--seq", "16", "--context", "24", "--samples", "1"]
    assert av_bench.main(args) == 0
    out = tmp_path / "attention_variants"
    for name in ("variants.json", "variants.csv", "gqa.json", "numerics.json", "variants.png", "gqa.png"):
        assert (out / name).is_file(), name
    loaded = kb.load(findings)
    assert {f.question for f in loaded} == {"variant_cost", "rope_fusion", "gqa_effect", "function_constants",
                                            "accuracy"}
    for f in loaded:
        assert f.device["backend"] == "host"
        assert f.kind != "performance" or f.claim.startswith("CPU result"), f.claim
    accuracy = next(f for f in loaded if f.question == "accuracy")
    assert accuracy.value <= 4 * 2.0 ** -10 * 4  # fused RoPE = the separate pass to a few float16 ulps
