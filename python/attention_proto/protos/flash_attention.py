"""Prototype 1: flash attention forward in MSL (``shaders/flash_attention.metal``).

``flash_attention(q, k, v)`` computes ``softmax(scale * Q K^T + mask) V`` with q ``[B, Hq, Nq, D]`` and
k/v ``[B, Hkv, Nk, D]`` (GQA/MQA when ``Hkv < Hq``), C-contiguous float32, float16 or
``ml_dtypes.bfloat16`` arrays, accumulating in float32. Causal masks are bottom-right aligned (query i
sees keys ``j <= i + Nk - Nq``); a query row that sees no key (``Nq > Nk``) outputs 0 and its
logsumexp is ``-inf``.

Tiles: each threadgroup computes ``block_q`` query rows (one SIMD-group per 8 rows) and walks the keys
``block_k`` at a time (at most :data:`MAX_BLOCK_K`). Q, K and V tiles live in the kernel's
``[[threadgroup(0)]]`` buffer, whose length :func:`threadgroup_bytes` gives and the dispatch sets;
configurations over the device's limit (32 KB on Apple GPUs) are rejected before dispatch.

Timing: :func:`flash_attention_timed` returns ``(out, lse | None, DispatchTiming)``; the timing is GPU
time on the ``metal`` backend and CPU wall time of the emulation on the ``host`` backend.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from . import _core, memory
from .kernel import DispatchTiming
from .runtime import backends, device_info, shader_dir

HEAD_DIMS: tuple[int, ...] = tuple(_core.flash_attention_head_dims())
"""Head dimensions the kernel supports."""

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
"""Element types of q, k, v and the output (numpy dtype names; bfloat16 is ``ml_dtypes.bfloat16``)."""

BLOCK_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128)
"""Candidate values of block_q and block_k for sweeps (the kernel accepts any multiple of 8)."""

MAX_BLOCK_Q = 256
"""block_q / 8 SIMD-groups of 32 threads: 256 rows is Apple's limit of 1024 threads per threadgroup."""

MAX_BLOCK_K = 128
"""MAX_BLOCK_K in the shader: its score registers are an array of MAX_BLOCK_K / 8 fragments, a literal
size because MSL array sizes must be compile-time constants (function constants are not)."""

_ROW_PAD_BYTES = 16  # ROW_PAD_BYTES in the shader: padding after each tile row (bank conflicts)

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


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def itemsize(dtype: Any) -> int:
    """Bytes per element of a supported dtype."""
    name = _dtype_name(dtype)
    if name not in DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(DTYPES)}, got {name}")
    return 4 if name == "float32" else 2


def threadgroup_bytes(block_q: int, block_k: int, head_dim: int, dtype: Any) -> int:
    """Threadgroup memory of one configuration in bytes: the length of the kernel's ``[[threadgroup(0)]]``
    buffer, which the dispatch sets and the kernel carves into its tiles.

    A Q tile of ``block_q`` rows, then K and V tiles of ``block_k`` rows each; a row holds ``head_dim``
    elements plus 16 bytes of padding (which keeps the 8 rows of an 8x8 fragment load on different
    threadgroup-memory banks)::

        (block_q + 2 * block_k) * (head_dim * itemsize + 16)

    Every tile is a multiple of 16 bytes, so each starts 16-byte aligned and the total is the multiple
    of 16 Metal requires of a threadgroup-memory length.
    """
    for name, value in (("block_q", block_q), ("block_k", block_k), ("head_dim", head_dim)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return (int(block_q) + 2 * int(block_k)) * (int(head_dim) * itemsize(dtype) + _ROW_PAD_BYTES)


def fitting_tiles(head_dim: int, dtype: Any, limit: int = 32768,
                  sizes: tuple[int, ...] = BLOCK_SIZES) -> list[tuple[int, int]]:
    """Every ``(block_q, block_k)`` from ``sizes`` whose threadgroup memory is at most ``limit`` bytes."""
    return [(bq, bk) for bq in sizes for bk in sizes
            if bq <= MAX_BLOCK_Q and bk <= MAX_BLOCK_K and threadgroup_bytes(bq, bk, head_dim, dtype) <= limit]


@functools.lru_cache(maxsize=None)
def _threadgroup_limit(backend: str) -> int:
    return int(device_info(backend)["max_threadgroup_memory"])


def _backend_name(backend: str | None) -> str:
    available = backends()
    if backend is None:
        return available[0]
    if not isinstance(backend, str) or backend not in available:
        raise ValueError(f"backend {backend!r} is not available here (available: {', '.join(available)})")
    return backend


def _check_array(name: str, x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions [B, H, N, D], got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray({name}))")
    return x


def _aligned(x: np.ndarray) -> np.ndarray:
    """``x``, or a copy at a 16-byte aligned address: the kernel reads inputs four elements at a time."""
    if x.ctypes.data % 16 == 0:
        return x
    copy = memory.empty(x.shape, x.dtype)
    copy[...] = x
    return copy


def _kernel_view(x: np.ndarray) -> np.ndarray:
    """What the binding receives: bfloat16 as a uint16 view (numpy's DLPack export lacks bfloat16)."""
    return x.view(np.uint16) if x.dtype.name == "bfloat16" else x


def _check_out(name: str, out: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"{name} must have shape {shape} and dtype {dtype.name}, got {out.shape} {out.dtype.name}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writable C-contiguous array")
    return out


def _check_block(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 8 or value % 8 != 0:
        raise ValueError(f"{name} must be a positive multiple of 8 (the kernel works on 8x8 tiles), got {value}")
    return int(value)


class _Call(NamedTuple):
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    out: np.ndarray
    lse: np.ndarray | None
    dtype: str
    scale: float
    block_q: int
    block_k: int
    backend: str


def _prepare(q: Any, k: Any, v: Any, causal: bool, scale: float | None, block_q: int | None,
             block_k: int | None, return_lse: bool, backend: str | None, out: np.ndarray | None,
             lse_out: np.ndarray | None) -> _Call:
    """Validates a call (clear errors naming the argument) and fills in the defaults."""
    q, k, v = _check_array("q", q), _check_array("k", k), _check_array("v", v)
    names = {q.dtype.name, k.dtype.name, v.dtype.name}
    if len(names) != 1:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype.name}, {k.dtype.name}, {v.dtype.name}")
    dtype = q.dtype.name
    if dtype not in DTYPES:
        raise TypeError(f"q, k, v dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    batch, q_heads, q_len, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {k.shape} and v {v.shape}")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k shape {k.shape} does not match q shape {q.shape}: expected [B, Hkv, Nk, D] "
                         f"with B = {batch} and D = {head_dim}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head dim {head_dim} (q.shape[3]) not supported; supported: {', '.join(map(str, HEAD_DIMS))}")
    kv_heads = k.shape[1]
    if q_heads % kv_heads != 0:
        raise ValueError(f"q heads ({q_heads}) must be a multiple of k/v heads ({kv_heads}) for GQA")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
            or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    backend = _backend_name(backend)
    default_q, default_k = DEFAULT_TILES[(head_dim, dtype)]
    block_q = _check_block("block_q", default_q if block_q is None else block_q)
    block_k = _check_block("block_k", default_k if block_k is None else block_k)
    if block_q > MAX_BLOCK_Q:
        raise ValueError(f"block_q must be at most {MAX_BLOCK_Q} (block_q / 8 SIMD-groups of 32 threads, "
                         f"1024 threads per threadgroup), got {block_q}")
    if block_k > MAX_BLOCK_K:
        raise ValueError(f"block_k must be at most {MAX_BLOCK_K} (the kernel's score registers are sized for "
                         f"MAX_BLOCK_K = {MAX_BLOCK_K} keys), got {block_k}")
    need, limit = threadgroup_bytes(block_q, block_k, head_dim, dtype), _threadgroup_limit(backend)
    if need > limit:
        raise ValueError(f"block_q={block_q}, block_k={block_k} need {need} bytes of threadgroup memory for "
                         f"head dim {head_dim} and {dtype}, over the {limit}-byte limit of the {backend} backend; "
                         f"tiles that fit: {fitting_tiles(head_dim, dtype, limit)}")
    # Fresh outputs are page-aligned so the Metal backend writes into them without a copy.
    if out is None:
        out = memory.empty(q.shape, q.dtype)
    else:
        out = _check_out("out", out, q.shape, q.dtype)
    lse_shape = (batch, q_heads, q_len)
    if lse_out is not None and not return_lse:
        raise ValueError("lse_out is given but return_lse is False")
    if return_lse:
        lse_out = (memory.empty(lse_shape, np.float32) if lse_out is None
                   else _check_out("lse_out", lse_out, lse_shape, np.dtype(np.float32)))
    written = [("out", out)] + ([("lse_out", lse_out)] if lse_out is not None else [])
    for name, result in written:
        for other_name, other in (("q", q), ("k", k), ("v", v), *written):
            if other_name != name and np.may_share_memory(result, other):
                raise ValueError(f"{name} must not overlap {other_name}")
    return _Call(_aligned(q), _aligned(k), _aligned(v), out, lse_out, dtype, float(scale), block_q, block_k,
                 backend)


def flash_attention_timed(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    block_q: int | None = None, block_k: int | None = None, return_lse: bool = False,
    backend: str | None = None, out: np.ndarray | None = None, lse_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, DispatchTiming]:
    """Like :func:`flash_attention`, and also returns the dispatch timing.

    Returns ``(out, lse, timing)``: ``lse`` is None unless ``return_lse``; ``timing.seconds`` is the
    kernel's GPU time on Metal (``GPUEndTime - GPUStartTime``) and the wall time of the CPU emulation on
    the host backend (a CPU number, never an Apple-GPU one). The first call of a configuration also
    compiles its pipeline; that is not part of the timing.
    """
    call = _prepare(q, k, v, causal, scale, block_q, block_k, return_lse, backend, out, lse_out)
    result = _core.flash_attention(
        _kernel_view(call.q), _kernel_view(call.k), _kernel_view(call.v), _kernel_view(call.out), call.lse,
        call.dtype, bool(causal), call.scale, call.block_q, call.block_k, call.backend, str(shader_dir()))
    timing = DispatchTiming(seconds=result["seconds"], timer=result["timer"], backend=result["backend"],
                            bytes_copied=result["bytes_copied"], buffers_copied=result["buffers_copied"])
    return call.out, call.lse, timing


def flash_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    block_q: int | None = None, block_k: int | None = None, return_lse: bool = False,
    backend: str | None = None, out: np.ndarray | None = None, lse_out: np.ndarray | None = None,
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

    Returns:
        The output ``[B, Hq, Nq, D]`` in the input dtype, or ``(out, lse)`` with ``return_lse``. A row
        that sees no key outputs 0 with logsumexp ``-inf``.

    Raises:
        TypeError / ValueError naming the argument for bad inputs (dtype mix, shape mismatch,
        unsupported head dim, ``Hq % Hkv != 0``, non-contiguous arrays, bad tiles, unknown backend).
    """
    result, lse, _ = flash_attention_timed(q, k, v, causal=causal, scale=scale, block_q=block_q,
                                           block_k=block_k, return_lse=return_lse, backend=backend, out=out,
                                           lse_out=lse_out)
    return (result, lse) if return_lse else result


def pipeline_info(head_dim: int, dtype: Any, *, block_q: int, block_k: int, causal: bool = False,
                  return_lse: bool = False, backend: str | None = None) -> dict[str, Any]:
    """Facts of one configuration's pipeline (built on first use): function, key, compile seconds,
    cache, and ``static_threadgroup_memory``, which on the host backend is what the last dispatch of
    that configuration measured (0 before any dispatch). The kernel declares no threadgroup arrays, so
    it stays 0: its tiles are the ``[[threadgroup(0)]]`` buffer of :func:`threadgroup_bytes` bytes."""
    return dict(_core.flash_attention_pipeline_info(
        int(head_dim), _dtype_name(dtype), _check_block("block_q", block_q), _check_block("block_k", block_k),
        bool(causal), bool(return_lse), _backend_name(backend), str(shader_dir())))
