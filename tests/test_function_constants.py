"""Prototype 4: the 72 flash-kernel variants and their three specialisation strategies.

Every strategy must be prototype 1 numerically, so each runs a sample of the variants (every head dim and
dtype at least once per strategy, causal and not, each of the 3 tiles) against the FP64 reference with
prototype 1's bounds (tests/test_flash_attention.py explains them), at odd lengths with partial edge
tiles and GQA, into NaN-poisoned package and plain arrays. Compile-cost measurement runs in fresh
processes; the binary-archive paths need Metal and must fail cleanly elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest

import attention_proto as ap
from attention_proto import cli, reference
from attention_proto.protos import function_constants as fc
from attention_proto.protos.flash_attention import DEFAULT_TILES, threadgroup_bytes
from conftest import poisoned
from test_flash_attention import LSE_ATOL, assert_close, make_inputs


def test_72_variants_fit_and_cover_the_grid() -> None:
    assert len(fc.VARIANTS) == 72 == len(set(fc.VARIANTS))
    assert len(fc.DEFAULT_VARIANTS) == 24
    for d in fc.HEAD_DIMS:
        for dtype in fc.DTYPES:
            tiles = fc.variant_tiles(d, dtype)
            assert len(set(tiles)) == 3 and tiles[0] == DEFAULT_TILES[(d, dtype)]
            assert all(threadgroup_bytes(bq, bk, d, fc._dtype(dtype)) <= 32768 for bq, bk in tiles)
            for causal in (False, True):
                assert sorted((v.block_q, v.block_k) for v in fc.VARIANTS
                              if (v.head_dim, v.dtype, v.causal) == (d, dtype, causal)) == sorted(tiles)
    assert ap.function_constants.VARIANTS is fc.VARIANTS
    assert max(v.head_dim for v in fc.VARIANTS) <= fc.RUNTIME_MAX_HEAD_DIM
    assert max(v.block_k for v in fc.VARIANTS) <= fc.RUNTIME_MAX_BLOCK_K


def test_pipeline_keys_per_strategy() -> None:
    keys = {s: [fc.plan_variant(v, s, backend="host").key for v in fc.VARIANTS] for s in fc.STRATEGIES}
    assert len(set(keys["constants"])) == 72 and len(set(keys["defines"])) == 72
    assert len(set(keys["runtime"])) == 3  # one pipeline per dtype: everything else is a runtime value
    assert not set(keys["constants"]) & set(keys["defines"])
    assert "APROTO_SPECIALISE_BY_DEFINES" in keys["defines"][0] and "HEAD_DIM=64u" in keys["constants"][0]


def sample(strategy: str) -> list[fc.Variant]:
    """Four variants, one per head dim: every dtype, both masks and all three tiles appear."""
    s = fc.STRATEGIES.index(strategy)
    out = []
    for i, d in enumerate(fc.HEAD_DIMS):
        dtype, causal = fc.DTYPES[(i + s) % 3], (i + s) % 2 == 1
        out.append([v for v in fc.VARIANTS if (v.head_dim, v.dtype, v.causal) == (d, dtype, causal)][(i + s) % 3])
    return out


CASES = [(s, v) for s in fc.STRATEGIES for v in sample(s)]


@pytest.mark.parametrize("strategy, variant", CASES, ids=[f"{s}-{v.name}" for s, v in CASES])
def test_strategy_matches_reference(backend: str, rng: np.random.Generator, strategy: str, variant: fc.Variant) -> None:
    memory = "package" if variant.head_dim % 32 == 0 else "plain"
    q, k, v = make_inputs(rng, variant.dtype, 1, 2, 1, variant.block_q + 5, 2 * variant.block_k + 3, variant.head_dim)
    out = poisoned(q.shape, q.dtype, memory)
    lse = poisoned(q.shape[:3], np.float32, memory)
    got, got_lse, timing = fc.flash_attention_variant_timed(
        q, k, v, strategy=strategy, block_q=variant.block_q, block_k=variant.block_k, causal=variant.causal,
        return_lse=True, backend=backend, out=out, lse_out=lse)
    assert got is out and got_lse is lse
    expected, expected_lse = reference.attention(q, k, v, causal=variant.causal, return_lse=True)
    assert not np.isnan(out.astype(np.float32)).any() and not np.isnan(lse).any()
    assert_close(out, expected, variant.dtype)
    np.testing.assert_allclose(lse, expected_lse, rtol=0, atol=LSE_ATOL)
    marker = {"constants": "[BLOCK_K=", "defines": "APROTO_SPECIALISE_BY_DEFINES=1", "runtime": "APROTO_RUNTIME_ARGS=1"}
    assert marker[strategy] in timing.launches[0].key


def test_runtime_kernel_rejects_values_over_its_maxima(rng: np.random.Generator) -> None:
    q, k, v = make_inputs(rng, "float16", 1, 1, 1, 8, 8, 256)
    with pytest.raises(ValueError, match=r"strategy 'runtime': head_dim 256 is over the runtime kernel's maximum 128"):
        fc.flash_attention_variant_timed(q, k, v, strategy="runtime", block_q=8, block_k=8, backend="host")
    q, k, v = make_inputs(rng, "float16", 1, 1, 1, 8, 8, 64)
    with pytest.raises(ValueError, match=r"block_k 128 is over the runtime kernel's maximum 64"):
        fc.flash_attention_variant_timed(q, k, v, strategy="runtime", block_q=8, block_k=128, backend="host")
    with pytest.raises(ValueError, match=r"strategy must be 'constants', 'defines' or 'runtime', got 'jit'"):
        fc.flash_attention_variant_timed(q, k, v, strategy="jit", block_q=8, block_k=8, backend="host")
    with pytest.raises(ValueError, match="variants must be 'default' or 'all'"):
        fc.variants("some")


def test_compile_costs_in_fresh_processes(tmp_path) -> None:
    """Host: a cold JIT with an empty disk cache, then a disk hit in a second fresh process; in-process hits."""
    items = [(fc.DEFAULT_VARIANTS[0], "runtime")]
    cold = fc.compile_costs(items, "host", cache_dir=tmp_path, note="test")
    disk = fc.compile_costs(items, "host", cache_dir=tmp_path, note="test")
    assert cold[0]["first"]["cache"] == "compiled" and cold[0]["first"]["library_s"] > 0
    assert disk[0]["first"]["cache"] == "disk" and cold[0]["memory"]["cache"] == "memory"
    assert list((tmp_path / "host").glob("flash_attention_f32-*.so"))


@pytest.mark.skipif(ap.metal.available(), reason="checks the message on machines without Metal")
def test_archive_commands_fail_cleanly_without_metal(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("build", "check"):
        assert cli.main(["archive", action, str(tmp_path / "a.metallib")]) == 1
        err = capsys.readouterr().err
        assert "binary archives need the Metal backend (macOS with an Apple GPU)" in err and "Traceback" not in err
    with pytest.raises(ap.BackendUnavailableError, match="need the Metal backend"):
        fc.archive_build(tmp_path / "a.metallib", fc.DEFAULT_VARIANTS[:1])
    assert not (tmp_path / "a.metallib").exists()


@pytest.mark.skipif(not ap.metal.available(), reason="binary archives need Metal")
def test_archive_round_trip(tmp_path) -> None:
    path = tmp_path / "flash.metallib"
    built = fc.archive_build(path, fc.DEFAULT_VARIANTS)
    assert built["bytes"] > 0 and len(built["rows"]) == 24
    checked = fc.archive_check(path)
    assert checked["misses"] == 0 and {r["first"]["cache"] for r in checked["rows"]} == {"archive"}
    assert cli.main(["archive", "check", str(path)]) == 0
