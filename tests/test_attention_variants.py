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
