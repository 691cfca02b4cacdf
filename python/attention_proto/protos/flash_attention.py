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

Decode: for ``Nq <= DECODE_MAX_ROWS`` a second kernel (``kernel="decode"``, chosen by default there)
splits one pass over the keys across SIMD-groups instead of tiling 8 query rows per SIMD-group.

Layouts: ``layout=`` picks one of :data:`LAYOUTS`, named sets of the kernel's switches (where K, V and Q
live, how scores are scaled and exponentiated, load width, register-array sizing, the type of P);
None is :data:`DEFAULT_LAYOUT`. Each layout has its own threadgroup-memory formula
(:func:`threadgroup_bytes`), so :func:`fitting_tiles` differs per layout.

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

DECODE_MAX_ROWS: int = _core.proto_facts("flash_decode")["max_rows"][0]
"""Most query rows (Nq) of the decode kernel; ``kernel=None`` picks it up to this many."""

MAX_Q_REGS_DIM: int = _FACTS["max_q_regs_dim"][0]
"""Largest head dim of the layouts that keep Q in registers (q_regs)."""

MAX_BLOCK_K: int = _FACTS["max_block_k"][0]
"""The shader's score registers are an array of MAX_BLOCK_K / 8 fragments, a literal size because MSL
array sizes must be compile-time constants (function constants are not)."""

_FAST = {"q_scaled": True, "fast_exp": True, "vec16": True}
LAYOUTS: dict[str, dict[str, bool]] = {
    "separate": {},                                   # Q, K and V tiles: (Br + 2 Bc) rows
    "aliased": {"kv_alias": True},                    # K and V share one tile, as MLX: (Br + Bc) rows
    "aliased_scaled": {"kv_alias": True, "q_scaled": True},  # + Q scaled into the log2 domain at load
    "aliased_exp": {"kv_alias": True, "q_scaled": True, "fast_exp": True},  # + fast::exp2, finite sentinels
    "aliased_fast": {"kv_alias": True, **_FAST},      # + 16-byte loads, vector stores: MLX's choices
    "aliased_sized": {"kv_alias": True, **_FAST, "sized": True},  # + register arrays sized per variant
    "aliased_p32": {"kv_alias": True, **_FAST, "sized": True, "p_float": True},  # + P in float32 (MLX)
    "direct_kv": {"kv_device": True, **_FAST, "sized": True},  # K/V from device memory (MFA, Apple9)
    "regs_q": {"kv_alias": True, "q_regs": True, **_FAST, "sized": True},  # + Q in registers (MFA, D <= 128)
}
"""Layout name -> the kernel's switches (shaders/flash_attention.metal explains each). Each layout adds
(direct_kv: swaps) one switch relative to the one before it, or to aliased_sized for the last two, so
the sweep measures what each switch is worth."""

DEFAULT_LAYOUT: str = "separate"
"""The layout of ``layout=None``: round 1's kernel, until an M4 sweep says otherwise."""

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
    repeat: int = 1, layout: str | None = None, kernel: str | None = None, alibi_slopes: np.ndarray | None = None,
    softcap: float | None = None, rope: Rotary | None = None,
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
    if kernel not in (None, "flash", "decode"):
        raise ValueError(f"kernel must be 'flash', 'decode' or None, got {kernel!r}")
    tiled = any(x is not None for x in (block_q, block_k, layout, alibi_slopes, softcap, rope))
    if kernel == "decode" and tiled:
        raise ValueError("block_q, block_k, layout, alibi_slopes, softcap and rope are options of kernel='flash', "
                         "not of kernel='decode'")
    # Defaults need q's shape and dtype; anything malformed goes on to the entry point, which says what.
    shaped = isinstance(q, np.ndarray) and q.ndim == 4
    picked = kernel is None  # the rule: decode for Nq <= DECODE_MAX_ROWS unless a flash option was given
    if picked:
        kernel = "decode" if shaped and q.shape[2] <= DECODE_MAX_ROWS and not tiled else "flash"
    if shaped:
        default_q, default_k = DEFAULT_TILES.get((q.shape[3], q.dtype.name), (None, None))
        block_q = default_q if block_q is None else block_q
        block_k = default_k if block_k is None else block_k
        scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
        # Fresh outputs live in package memory, so the Metal backend writes into them without a copy.
        out = memory.empty(q.shape, q.dtype) if out is None else out
        if return_lse and lse_out is None:
            lse_out = memory.empty(q.shape[:3], np.float32)
    arrays = {"q": q, "k": k, "v": v, "out": out, "lse": lse_out if return_lse else None}
    flash_arrays = {**arrays, "alibi_slopes": alibi_slopes}
    timing = None
    if kernel == "decode":
        try:
            timing = _core.flash_decode(arrays, {"causal": causal, "scale": scale}, backend or "", repeat)
        except (TypeError, ValueError):
            if not picked:
                raise
            # Picked by the rule: bad input is reported as the flash kernel (the one asked for) reports it.
    if timing is None:
        timing = _core.flash_attention(flash_arrays, {"causal": causal, "scale": scale, "block_q": block_q,
                                                      "block_k": block_k, "softcap": softcap, **rope_options(rope),
                                                      **switches(layout)}, backend or "", repeat)
    return out, lse_out if return_lse else None, timing  # type: ignore[return-value]


def flash_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    block_q: int | None = None, block_k: int | None = None, return_lse: bool = False,
    backend: str | None = None, out: np.ndarray | None = None, lse_out: np.ndarray | None = None,
    layout: str | None = None, kernel: str | None = None, alibi_slopes: np.ndarray | None = None,
    softcap: float | None = None, rope: Rotary | None = None,
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
        layout: a name from :data:`LAYOUTS`; None is :data:`DEFAULT_LAYOUT`.
        kernel: ``"flash"`` (the tiled kernel) or ``"decode"`` (``shaders/flash_decode.metal``, Nq up to
            :data:`DECODE_MAX_ROWS`: one pass over the keys split across SIMD-groups, a GQA group's heads
            sharing it). None picks decode when ``Nq <= DECODE_MAX_ROWS`` and none of block_q, block_k,
            layout, alibi_slopes, softcap, rope is given, else flash.
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
                                           lse_out=lse_out, layout=layout, kernel=kernel, alibi_slopes=alibi_slopes,
                                           softcap=softcap, rope=rope)
    return (result, lse) if return_lse else result


def switches(layout: str | None) -> dict[str, bool]:
    """The kernel options of a layout name (None: :data:`DEFAULT_LAYOUT`); ValueError for unknown names."""
    if layout is None:
        return LAYOUTS[DEFAULT_LAYOUT]
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} or None, got {layout!r}")
    return LAYOUTS[layout]


def plan(head_dim: int, dtype: Any, *, block_q: int, block_k: int, causal: bool = False,
         return_lse: bool = False, backend: str | None = None, build: bool = False,
         layout: str | None = None) -> list[_core.LaunchInfo]:
    """The launch one configuration makes (pipeline key, grid, threadgroup memory) without running it;
    with ``build`` its pipeline is built too (``launch.pipeline``)."""
    shape, dt = (1, 1, 8, int(head_dim)), np.dtype(dtype)
    shapes: dict[str, Any] = {name: (shape, dt) for name in ("q", "k", "v", "out")}
    if return_lse:
        shapes["lse"] = (shape[:3], np.dtype(np.float32))
    options = {"causal": causal, "scale": 1.0, "block_q": block_q, "block_k": block_k, **switches(layout)}
    return _core.plan("flash_attention", shapes, options, backend or "", build)


def threadgroup_bytes(block_q: int, block_k: int, head_dim: int, dtype: Any, layout: str | None = None) -> int:
    """Threadgroup memory of one configuration in bytes: the length of the kernel's ``[[threadgroup(0)]]``
    buffer, which the dispatch sets and the kernel carves into its tiles.

    A Q tile of ``block_q`` rows, then K and V tiles of ``block_k`` rows each; a row holds ``head_dim``
    elements plus 16 bytes of padding (which keeps the 8 rows of an 8x8 fragment load on different
    threadgroup-memory banks): ``(block_q + 2 * block_k) * (head_dim * itemsize + 16)`` for "separate".
    Layouts whose K and V share a tile (kv_alias, kv_device) hold ``block_k`` rows for both, and with
    q_regs the Q tile is staging under the K/V tile: ``max(block_q, kv rows)`` rows instead of the sum
    (the shader's header comment). The C++ entry point computes it (this asks it), so the number is the one dispatched.
    """
    return int(plan(head_dim, dtype, block_q=block_q, block_k=block_k, layout=layout)[0].threadgroup_bytes)


def fitting_tiles(head_dim: int, dtype: Any, limit: int = 32768, sizes: tuple[int, ...] = BLOCK_SIZES,
                  layout: str | None = None) -> list[tuple[int, int]]:
    """Every ``(block_q, block_k)`` from ``sizes`` the kernel accepts in ``layout`` (None: the default)
    whose threadgroup memory is at most ``limit`` bytes. Empty for a layout the head dim cannot use."""
    if "q_regs" in switches(layout) and head_dim > MAX_Q_REGS_DIM:
        return []
    return [(bq, bk) for bq in sizes for bk in sizes if bq <= MAX_BLOCK_Q and bk <= MAX_BLOCK_K
            and threadgroup_bytes(bq, bk, head_dim, dtype, layout) <= limit]


def pipeline_info(head_dim: int, dtype: Any, *, block_q: int, block_k: int, causal: bool = False,
                  return_lse: bool = False, backend: str | None = None,
                  layout: str | None = None) -> _core.PipelineInfo:
    """Facts of one configuration's pipeline (built on first use): key, compile stages and cache, limits,
    and ``static_threadgroup_memory`` (the kernel declares none: its tiles are the ``[[threadgroup(0)]]``
    buffer; on the host backend the value is what runs of the pipeline measured)."""
    launch = plan(head_dim, dtype, block_q=block_q, block_k=block_k, causal=causal, return_lse=return_lse,
                  backend=backend, build=True, layout=layout)[0]
    assert launch.pipeline is not None
    return launch.pipeline
