"""SIMD-group functions against numpy, on every backend."""
from __future__ import annotations

import numpy as np
import pytest

import attention_proto as ap

SIMD_OPS = r"""
#include <metal_stdlib>
using namespace metal;

kernel void simd_ops(device const float* x    [[buffer(0)]],
                     device const uint*  bits [[buffer(1)]],
                     device float*       out  [[buffer(2)]],
                     device uint*        uout [[buffer(3)]],
                     uint gid  [[thread_position_in_grid]],
                     uint lane [[thread_index_in_simdgroup]])
{
    const float v = x[gid];
    const uint b = bits[gid];
    const uint n = 16;  // results per thread
    out[gid * n + 0] = simd_sum(v);
    out[gid * n + 1] = simd_max(v);
    out[gid * n + 2] = simd_min(v);
    out[gid * n + 3] = simd_product(v);
    out[gid * n + 4] = simd_prefix_inclusive_sum(v);
    out[gid * n + 5] = simd_prefix_exclusive_sum(v);
    out[gid * n + 6] = simd_shuffle(v, ushort((lane * 7) % 32));
    out[gid * n + 7] = simd_shuffle_xor(v, ushort(5));
    out[gid * n + 8] = simd_shuffle_up(v, ushort(3));
    out[gid * n + 9] = simd_shuffle_down(v, ushort(3));
    out[gid * n + 10] = simd_broadcast(v, ushort(9));
    out[gid * n + 11] = simd_broadcast_first(v);
    out[gid * n + 12] = simd_shuffle_rotate_down(v, ushort(4));
    out[gid * n + 13] = simd_all(v > -10.0f) ? 1.0f : 0.0f;
    out[gid * n + 14] = simd_any(v > 2.5f) ? 1.0f : 0.0f;
    out[gid * n + 15] = simd_prefix_inclusive_product(v);
    uout[gid * 4 + 0] = simd_and(b);
    uout[gid * 4 + 1] = simd_or(b);
    uout[gid * 4 + 2] = simd_xor(b);
    uout[gid * 4 + 3] = uint(ulong(simd_ballot(v > 0.0f)));
}
"""


def test_simd_functions_match_numpy(backend: str, rng: np.random.Generator) -> None:
    groups = 3
    x = rng.uniform(-2, 3, size=32 * groups).astype(np.float32)
    x[::7] = np.float32(1.0) + rng.uniform(-0.05, 0.05, size=x[::7].shape).astype(np.float32)
    bits = rng.integers(0, 2**32, size=32 * groups, dtype=np.uint32)
    out = np.full((32 * groups, 16), np.nan, dtype=np.float32)
    uout = np.zeros((32 * groups, 4), dtype=np.uint32)
    ap.Kernel(SIMD_OPS, "simd_ops")(x, bits, out, uout, grid=groups, threadgroup=32, backend=backend)
    assert np.isfinite(out).all(), "every result must be written"
    for g in range(groups):
        v = x[32 * g:32 * (g + 1)].astype(np.float64)
        o = out[32 * g:32 * (g + 1)]
        lanes = np.arange(32)
        np.testing.assert_allclose(o[:, 0], v.sum(), rtol=1e-5)
        np.testing.assert_array_equal(o[:, 1], np.float32(v.max()))
        np.testing.assert_array_equal(o[:, 2], np.float32(v.min()))
        np.testing.assert_allclose(o[:, 3], np.prod(v), rtol=1e-4)
        np.testing.assert_allclose(o[:, 4], np.cumsum(v), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(o[:, 5], np.cumsum(v) - v, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(o[:, 6], v[(lanes * 7) % 32].astype(np.float32))
        np.testing.assert_array_equal(o[:, 7], v[lanes ^ 5].astype(np.float32))
        np.testing.assert_array_equal(o[:, 8], v[np.where(lanes >= 3, lanes - 3, lanes)].astype(np.float32))
        np.testing.assert_array_equal(o[:, 9], v[np.where(lanes + 3 < 32, lanes + 3, lanes)].astype(np.float32))
        np.testing.assert_array_equal(o[:, 10], np.float32(v[9]))
        np.testing.assert_array_equal(o[:, 11], np.float32(v[0]))
        np.testing.assert_array_equal(o[:, 12], v[(lanes + 4) % 32].astype(np.float32))
        np.testing.assert_array_equal(o[:, 13], 1.0)
        np.testing.assert_array_equal(o[:, 14], float((v > 2.5).any()))
        np.testing.assert_allclose(o[:, 15], np.cumprod(v), rtol=1e-4)
        b = bits[32 * g:32 * (g + 1)]
        u = uout[32 * g:32 * (g + 1)]
        np.testing.assert_array_equal(u[:, 0], np.bitwise_and.reduce(b))
        np.testing.assert_array_equal(u[:, 1], np.bitwise_or.reduce(b))
        np.testing.assert_array_equal(u[:, 2], np.bitwise_xor.reduce(b))
        ballot = sum(1 << i for i in range(32) if v[i] > 0)
        np.testing.assert_array_equal(u[:, 3], np.uint32(ballot))


DIVERGENT = r"""
#include <metal_stdlib>
using namespace metal;
// Lanes below `split` and lanes from `split` up reduce separately: a SIMD function acts on the
// lanes that execute it together (the active lanes). The two arms differ (operation and where they
// write) so that no compiler can merge them into one unconditional, non-divergent statement.
kernel void divergent(device const float* x [[buffer(0)]],
                      device float* out [[buffer(1)]],
                      device uint* active [[buffer(2)]],
                      constant uint& split [[buffer(3)]],
                      uint lane [[thread_index_in_simdgroup]])
{
    float v = x[lane];
    if (lane < split) {
        out[lane] = simd_sum(v);
        active[lane] = uint(ulong(simd_active_threads_mask()));        // low half of `active`
    } else {
        out[lane] = simd_max(v);
        active[32 + lane] = uint(ulong(simd_active_threads_mask()));   // high half of `active`
    }
}
"""


@pytest.mark.parametrize("split", [1, 13, 31])
def test_simd_function_in_divergent_branch_uses_active_lanes(backend: str, rng: np.random.Generator,
                                                             split: int) -> None:
    x = rng.normal(size=32).astype(np.float32)
    out = np.full(32, np.nan, dtype=np.float32)
    untouched = np.uint32(0xDEADBEEF)
    active = np.full(64, untouched, dtype=np.uint32)  # [0, 32): lanes < split; [32, 64): the others
    ap.Kernel(DIVERGENT, "divergent")(x, out, active, np.uint32(split), grid=1, threadgroup=32, backend=backend)
    np.testing.assert_allclose(out[:split], x[:split].astype(np.float64).sum(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[split:], x[split:].max())
    low = (1 << split) - 1
    np.testing.assert_array_equal(active[:split], np.uint32(low))
    np.testing.assert_array_equal(active[32 + split:], np.uint32(0xFFFFFFFF ^ low))
    # each lane wrote only in its own arm's half
    np.testing.assert_array_equal(active[split:32 + split], untouched)


PARTIAL_SIMDGROUP = r"""
#include <metal_stdlib>
using namespace metal;
kernel void partial(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                    uint tid [[thread_index_in_threadgroup]],
                    uint sg [[simdgroup_index_in_threadgroup]],
                    uint nsg [[simdgroups_per_threadgroup]])
{
    out[tid] = simd_sum(x[tid]) + 1000.0f * float(sg) + 100000.0f * float(nsg);
}
"""


def test_partial_last_simdgroup(backend: str, rng: np.random.Generator) -> None:
    n = 45  # one full SIMD-group and one of 13 lanes
    x = rng.normal(size=n).astype(np.float32)
    out = np.full(n, np.nan, dtype=np.float32)
    ap.Kernel(PARTIAL_SIMDGROUP, "partial")(x, out, grid=1, threadgroup=n, backend=backend)
    np.testing.assert_allclose(out[:32], x[:32].sum() + 200000.0, rtol=1e-6)
    np.testing.assert_allclose(out[32:], x[32:].sum() + 1000.0 + 200000.0, rtol=1e-6)
