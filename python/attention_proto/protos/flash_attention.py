"""Prototype 1: flash attention forward in MSL (``shaders/flash_attention.metal``).

``flash_attention(q, k, v)`` computes ``softmax(scale * Q K^T + mask) V`` with q ``[B, Hq, Nq, D]`` and
k/v ``[B, Hkv, Nk, D]`` (GQA/MQA when ``Hkv < Hq``), C-contiguous float32, float16 or
``ml_dtypes.bfloat16`` arrays, accumulating in float32. Causal masks are bottom-right aligned (query i
sees keys ``j <= i + Nk - Nq``); a query row that sees no key (``Nq > Nk``) outputs 0 and its
logsumexp is ``-inf``.

Tiles: each threadgroup computes ``block_q`` query rows (one SIMD-group per 8 rows) and walks the keys
``block_k`` at a time (at most :data:`MAX_BLOCK_K`). The Q, K and V tiles live in the kernel's
``[[threadgroup(0)]]`` buffer of :func:`threadgroup_bytes` bytes; configurations over the device's
limit (32 KB on Apple GPUs) raise ResourceLimitError (a ValueError) before any dispatch.

Every argument is checked by the C++ entry point (``attention_proto._core.flash_attention``): bad input
raises ValueError or TypeError naming the argument. Timing: :func:`flash_attention_timed` returns
``(out, lse | None, DispatchTiming)``; its ``seconds`` are GPU time on ``metal`` and the CPU wall time of
the emulation on ``host``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _core, memory
from .attention_variants import Rotary, rope_options

_FACTS = _core.proto_facts("flash_attention")

HEAD_DIMS: tuple[int, ...] = tuple(_FACTS["head_dims"])
"""Head dimensions the kernel supports."""

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
"""Element types of q, k, v and the output (numpy dtype names; bfloat16 is ``ml_dtypes.bfloat16``)."""

BLOCK_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128)
"""Candidate values of block_q and block_k for sweeps (the kernel accepts any multiple of 8)."""

MAX_BLOCK_Q: int = _FACTS["max_block_q"][0]
"""block_q / 8 SIMD-groups of 32 threads: 256 rows is Apple's limit of 1024 threads per threadgroup."""

MAX_BLOCK_K: int = _FACTS["max_block_k"][0]
"""The shader's score registers are an array of MAX_BLOCK_K / 8 fragments, a literal size because MSL
array sizes must be compile-time constants (function constants are not)."""

# Default (block_q, block_k) per (head_dim, dtype). Source: an M4 prior, not a measurement of ours.
# MLX's full-attention kernel (mlx/backend/metal/scaled_dot_product_attention.cpp) uses 4 SIMD-groups
# on 32 query rows (bq = 32) and bk = 32 keys for D < 128, bk = 16 for D >= 128. Our kernel also runs
# one SIMD-group per 8 rows, so block_q = 32 is the same split. Where that tile does not fit 32 KB in
# our layout (separate Q, K and V tiles, see threadgroup_bytes) block_k is halved down to 8 first,
# then block_q. Sweeps on the host backend rank tiles by CPU time and do not update this table; replace
# entries only with `attention-proto bench flash_attention --sweep --backend metal` results from an M4.
DEFAULT_TILES: dict[tuple[int, str], tuple[int, int]] = {
    (32, "float32"): (32, 32), (32, "float16"): (32, 32), (32, "bfloat16"): (32, 32),
    (64, "float32"): (32, 32), (64, "float16"): (32, 32), (64, "bfloat16"): (32, 32),
    (80, "float32"): (32, 32), (80, "float16"): (32, 32), (80, "bfloat16"): (32, 32),
    (96, "float32"): (32, 16), (96, "float16"): (32, 32), (96, "bfloat16"): (32, 32),
    (128, "float32"): (32, 8), (128, "float16"): (32, 16), (128, "bfloat16"): (32, 16),
    (256, "float32"): (8, 8), (256, "float16"): (32, 8), (256, "bfloat16"): (32, 8),
}


def flash_attention_timed(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    block_q: int | None = None, block_k: int | None = None, return_lse: bool = False,
    backend: str | None = None, out: np.ndarray | None = None, lse_out: np.ndarray | None = None,
    repeat: int = 1, alibi_slopes: np.ndarray | None = None, softcap: float | None = None, rope: Rotary | None = None,
) -> tuple[np.ndarray, np.ndarray | None, _core.DispatchTiming]:
    """Like :func:`flash_attention`, and also returns the dispatch timing.

    Returns ``(out, lse, timing)``: ``lse`` is None unless ``return_lse``. ``timing.seconds`` is the
    kernel's GPU time on Metal (``GPUEndTime - GPUStartTime``) and the wall time of the CPU emulation on
    the host backend (a CPU number, never an Apple-GPU one); ``timing.wall_seconds`` is wall time on both.
    With ``repeat`` the kernel runs that many times in one submission and the times are per run. The
    first call of a configuration also compiles its pipeline; that is not part of the timing.
    """
    if lse_out is not None and not return_lse:
        raise ValueError("lse_out is given but return_lse is False")
    # Defaults need q's shape and dtype; anything malformed goes on to the entry point, which says what.
    shaped = isinstance(q, np.ndarray) and q.ndim == 4
    if shaped:
        default_q, default_k = DEFAULT_TILES.get((q.shape[3], q.dtype.name), (None, None))
        block_q = default_q if block_q is None else block_q
        block_k = default_k if block_k is None else block_k
        scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
        # Fresh outputs live in package memory, so the Metal backend writes into them without a copy.
        out = memory.empty(q.shape, q.dtype) if out is None else out
        if return_lse and lse_out is None:
            lse_out = memory.empty(q.shape[:3], np.float32)
    timing = _core.flash_attention(
        {"q": q, "k": k, "v": v, "out": out, "lse": lse_out if return_lse else None, "alibi_slopes": alibi_slopes},
        {"causal": causal, "scale": scale, "block_q": block_q, "block_k": block_k, "softcap": softcap,
         **rope_options(rope)}, backend or "", repeat)
    return out, lse_out if return_lse else None, timing  # type: ignore[return-value]


def flash_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    block_q: int | None = None, block_k: int | None = None, return_lse: bool = False,
    backend: str | None = None, out: np.ndarray | None = None, lse_out: np.ndarray | None = None,
    alibi_slopes: np.ndarray | None = None, softcap: float | None = None, rope: Rotary | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Flash attention forward: ``softmax(scale * Q K^T + mask) V``.

    Args:
        q: ``[B, Hq, Nq, D]``; k, v: ``[B, Hkv, Nk, D]`` with ``Hq % Hkv == 0``. One dtype for all three
            (float32, float16 or ``ml_dtypes.bfloat16``), C-contiguous, ``D`` in :data:`HEAD_DIMS`.
        causal: bottom-right aligned causal mask (query i sees keys ``j <= i + Nk - Nq``).
        scale: softmax scale, ``1 / sqrt(D)`` when None.
        block_q, block_k: tile sizes (multiples of 8, block_q <= :data:`MAX_BLOCK_Q`, block_k <=
            :data:`MAX_BLOCK_K`); defaults from :data:`DEFAULT_TILES`.
        return_lse: also return the logsumexp of each query row (natural log, float32 ``[B, Hq, Nq]``).
        backend: ``"metal"`` or ``"host"``; None picks the best available.
        out, lse_out: arrays to write the results into (shape and dtype as returned); allocated if None.
        alibi_slopes, softcap, rope: prototype 7's variants, each a function constant of the kernel (off
            when None): float32 ``[Hq]`` slopes adding ``slope_h * (j - (i + Nk - Nq))`` to the scaled
            score (:func:`attention_proto.alibi_slopes`); ``softcap > 0`` capping the scaled scores to
            ``softcap * tanh(score / softcap)`` before bias and mask; an :class:`attention_proto.Rotary`
            rotating Q and K as their tiles load (see :mod:`attention_proto.protos.attention_variants`).

    Returns:
        The output ``[B, Hq, Nq, D]`` in the input dtype, or ``(out, lse)`` with ``return_lse``. A row
        that sees no key outputs 0 with logsumexp ``-inf``.

    Raises:
        TypeError / ValueError naming the argument for bad inputs (dtype mix, shape mismatch,
        unsupported head dim, ``Hq % Hkv != 0``, non-contiguous or overlapping arrays, bad tiles,
        unknown backend); ResourceLimitError (a ValueError) for tiles over the threadgroup memory.
    """
    result, lse, _ = flash_attention_timed(q, k, v, causal=causal, scale=scale, block_q=block_q,
                                           block_k=block_k, return_lse=return_lse, backend=backend, out=out,
                                           lse_out=lse_out, alibi_slopes=alibi_slopes, softcap=softcap, rope=rope)
    return (result, lse) if return_lse else result


def plan(head_dim: int, dtype: Any, *, block_q: int, block_k: int, causal: bool = False,
         return_lse: bool = False, backend: str | None = None, build: bool = False) -> list[_core.LaunchInfo]:
    """The launch one configuration makes (pipeline key, grid, threadgroup memory) without running it;
    with ``build`` its pipeline is built too (``launch.pipeline``)."""
    shape, dt = (1, 1, 8, int(head_dim)), np.dtype(dtype)
    shapes: dict[str, Any] = {name: (shape, dt) for name in ("q", "k", "v", "out")}
    if return_lse:
        shapes["lse"] = (shape[:3], np.dtype(np.float32))
    options = {"causal": causal, "scale": 1.0, "block_q": block_q, "block_k": block_k}
    return _core.plan("flash_attention", shapes, options, backend or "", build)


def threadgroup_bytes(block_q: int, block_k: int, head_dim: int, dtype: Any) -> int:
    """Threadgroup memory of one configuration in bytes: the length of the kernel's ``[[threadgroup(0)]]``
    buffer, which the dispatch sets and the kernel carves into its tiles.

    A Q tile of ``block_q`` rows, then K and V tiles of ``block_k`` rows each; a row holds ``head_dim``
    elements plus 16 bytes of padding (which keeps the 8 rows of an 8x8 fragment load on different
    threadgroup-memory banks): ``(block_q + 2 * block_k) * (head_dim * itemsize + 16)``. The C++ entry
    point computes it (this asks it), so the number is the one dispatched.
    """
    return int(plan(head_dim, dtype, block_q=block_q, block_k=block_k)[0].threadgroup_bytes)


def fitting_tiles(head_dim: int, dtype: Any, limit: int = 32768,
                  sizes: tuple[int, ...] = BLOCK_SIZES) -> list[tuple[int, int]]:
    """Every ``(block_q, block_k)`` from ``sizes`` the kernel accepts whose threadgroup memory is at most
    ``limit`` bytes."""
    return [(bq, bk) for bq in sizes for bk in sizes
            if bq <= MAX_BLOCK_Q and bk <= MAX_BLOCK_K and threadgroup_bytes(bq, bk, head_dim, dtype) <= limit]


def pipeline_info(head_dim: int, dtype: Any, *, block_q: int, block_k: int, causal: bool = False,
                  return_lse: bool = False, backend: str | None = None) -> _core.PipelineInfo:
    """Facts of one configuration's pipeline (built on first use): key, compile stages and cache, limits,
    and ``static_threadgroup_memory`` (the kernel declares none: its tiles are the ``[[threadgroup(0)]]``
    buffer; on the host backend the value is what runs of the pipeline measured)."""
    launch = plan(head_dim, dtype, block_q=block_q, block_k=block_k, causal=causal, return_lse=return_lse,
                  backend=backend, build=True)[0]
    assert launch.pipeline is not None
    return launch.pipeline
