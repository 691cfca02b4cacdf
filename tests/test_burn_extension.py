"""Prototype 8 (rust/burn_extension): the crate's own cargo tests, and the extension on Burn's Flex CPU
backend against prototype 1's MSL flash attention (host backend) and the FP64 references on the same inputs.

The cargo tests (rust/burn_extension/tests/attention.rs) check the CPU implementation against an FP64
reference written there (odd lengths, tile edges, causal with Nq != Nk, GQA, every option), against Burn's
own attention op, the gradients of the Autodiff implementation against finite differences and Burn's
autodiff, code generic over backends, and the errors. They get this session's APROTO_TEST_SEED. A cold
build takes a few minutes (once: later runs reuse the cargo target folder). Without cargo, everything here
skips and says why.

Bounds: both implementations compute in float32 from the same float32 inputs, so the norm bound and MLX's
element-wise rule ``|o - r| <= atol (1 + |r|)`` use atol = 2e-5 (sums of up to 777 float32 terms: about
sqrt(777) u = 1.7e-6 of typical error, with margin for the exp).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import attention_proto as ap
from attention_proto import reference
from attention_proto.protos import burn_extension as bx
from conftest import SESSION_SEED

ATOL = 2e-5

try:
    bx.rust_dir(), bx.cargo()
except bx.CargoUnavailable as exc:
    pytest.skip(f"prototype 8 (Burn extension) needs cargo and the rust/ sources: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def built() -> None:
    bx.build()


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), f"{what}: -inf rows differ"
    finite = np.isfinite(want)
    assert np.isfinite(got[finite]).all(), f"{what}: not every element written"
    err = np.abs(got[finite].astype(np.float64) - want[finite])
    assert (err <= ATOL * (1 + np.abs(want[finite]))).all(), f"{what}: max error {err.max()}"
    assert np.linalg.norm(err) <= ATOL * max(np.linalg.norm(want[finite]), 1.0), what


def test_cargo_tests_pass(built: None) -> None:
    proc = bx.cargo_run("test", "--locked", "-p", bx.CRATE, env={"APROTO_TEST_SEED": str(SESSION_SEED)})
    passed = sum(int(n) for n in re.findall(r"test result: ok\. (\d+) passed", proc.stdout))
    assert passed >= 8, proc.stdout  # the integration tests ran, not only empty unit-test harnesses


@pytest.mark.parametrize("shape,causal", [((1, 4, 2, 33, 100, 64), True), ((2, 2, 1, 100, 33, 32), True),
                                          ((1, 3, 3, 77, 777, 64), False)])
def test_extension_agrees_with_msl_flash_attention(built: None, rng: np.random.Generator,
                                                   shape: tuple[int, ...], causal: bool) -> None:
    b, hq, hkv, nq, nk, d = shape
    q = rng.standard_normal((b, hq, nq, d)).astype(np.float32)
    k, v = (rng.standard_normal((b, hkv, nk, d)).astype(np.float32) for _ in range(2))
    ours = bx.run(q, k, v, causal=causal)
    out = ap.empty(q.shape, np.float32)
    out[...] = np.nan
    msl, msl_lse = ap.flash_attention(q, k, v, causal=causal, return_lse=True, out=out, backend="host")
    want, want_lse = reference.attention(q, k, v, causal=causal, return_lse=True)
    assert_close(ours.out, want, "extension out")
    assert ours.lse is not None
    assert_close(ours.lse, want_lse, "extension lse")
    assert_close(ours.out, msl.astype(np.float64), "extension vs MSL out")
    assert_close(ours.lse, msl_lse.astype(np.float64), "extension vs MSL lse")


def test_variants_and_burns_op_against_fp64(built: None, rng: np.random.Generator) -> None:
    q = rng.standard_normal((1, 4, 45, 32)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 70, 32)).astype(np.float32) for _ in range(2))
    slopes = reference.alibi_slopes(4)
    opts = dict(causal=True, scale=0.4, softcap=2.5, alibi_slopes=slopes)
    want, want_lse = reference.attention(q, k, v, return_lse=True, **opts)
    ours = bx.run(q, k, v, **opts)
    assert_close(ours.out, want, "extension variants")
    assert ours.lse is not None
    assert_close(ours.lse, want_lse, "extension variants lse")
    assert_close(bx.run(q, k, v, impl="burn", **opts).out, want, "Burn's attention op (kv heads repeated, bias)")


def test_bridge_errors(built: None) -> None:
    x = np.ones((1, 2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="impl must be"):
        bx.run(x, x, x, impl="mlx")
    with pytest.raises(RuntimeError, match=r"\[burn_extension\] alibi_slopes: needs one slope per query head \(2\)"):
        bx.run(x, x, x, alibi_slopes=np.ones(3))
