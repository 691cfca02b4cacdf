"""Prototype 6: linear attention with a decay gate, FLA's chunked form in MSL (``shaders/linear_attention.metal``).

The recurrence (simple GLA; RetNet and Lightning attention fix the decay, no gate is plain causal linear
attention), per batch and head, with a float32 state ``S`` of ``[K, V]``::

    S_t = exp(g_t) S_{t-1} + k_t v_t^T        o_t = scale * q_t S_t

``mode="chunk"`` computes it as flash-linear-attention does (``fla/ops/common/chunk_h.py``, ``chunk_o.py``):
:func:`chunk_h` walks the chunks of ``chunk_size`` steps and stores the state entering each one into ``h``,
float32 ``[B, N, H, K, V]`` with ``N = ceil(T / chunk_size)``; :func:`chunk_o` computes each chunk from that
state and its own causal attention; the two run as one dispatch sequence. ``mode="recurrent"`` runs the
recurrence step by step (the decode path).

Arguments (FLA's layout): q, k ``[B, T, H, K]`` and v ``[B, T, H, V]`` of one dtype (float32, float16 or
``ml_dtypes.bfloat16``), C-contiguous, K and V any value in 8..128 (padded to a multiple of 8 inside the
kernels, never copied), any ``T >= 1``; g ``[B, T, H]`` float32 log decay (finite, <= 0) or None (no decay);
``initial_state`` float32 ``[B, H, K, V]`` or None (zeros); ``scale`` default ``K ** -0.5``; ``chunk_size``
16, 32 or 64; ``block_k``, ``block_v`` the state block a threadgroup carries (multiples of 8, at most 128);
``backend`` ``"metal"`` or ``"host"`` (None: the best available); ``out``, ``final_state_out`` arrays to
write into (allocated in package memory if None). Products run on float32 fragments; the output is rounded
to the input type once.

Every argument is checked by the C++ entry points (``_core.linear_attention``, ``_core.linear_attention_chunk_h``,
``_core.linear_attention_chunk_o``): bad input raises ValueError or TypeError naming the argument (positive
or non-finite g, mismatched shapes or dtypes, a chunk size not in :data:`CHUNK_SIZES`, K or V outside
8..128, a bad initial state, an unknown mode), and configurations over the device's threadgroup memory
(:func:`threadgroup_bytes`; 32 KB on Apple GPUs) raise ResourceLimitError (a ValueError) before dispatch.
The ``_timed`` functions also return the DispatchTiming: ``seconds`` is GPU time on Metal and the CPU wall
time of the emulation on the host backend, per run of ``repeat`` runs in one submission.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core, memory

CHUNK_SIZES: tuple[int, ...] = tuple(_core.proto_facts("linear_attention")["chunk_sizes"])
"""Chunk sizes the kernels support."""

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
"""Element types of q, k, v and the output."""

BLOCK_K = BLOCK_V = 32
"""Default blocks: FLA's chunk_o block on GPUs without Hopper-size shared memory (fla/ops/common/chunk_o.py,
BKV_LIST = [32]); with them every chunk size fits 32 KB for every dtype and K, V <= 128. An M4 prior, not a
measurement: ``attention-proto bench linear_attention --backend metal`` on an M4 decides."""


def _dims(a: Any, v: Any) -> tuple[int, int, int, int, int] | None:
    """(B, T, H, K, V) from q or k and v; None when malformed (the entry point then says what)."""
    ok = isinstance(a, np.ndarray) and a.ndim == 4 and isinstance(v, np.ndarray) and v.ndim == 4
    return (*a.shape, v.shape[3]) if ok else None  # type: ignore[return-value]


def _states(dims: tuple[int, ...], chunk_size: Any) -> np.ndarray:
    b, t, h, kd, vd = dims
    chunks = -(-t // chunk_size) if isinstance(chunk_size, int) and chunk_size > 0 else 1
    return memory.empty((b, chunks, h, kd, vd), np.float32)


def _final(dims: tuple[int, ...] | None, wanted: bool, given: np.ndarray | None) -> np.ndarray | None:
    if not wanted or given is not None or dims is None:
        return given if wanted else None
    return memory.empty((dims[0], dims[2], dims[3], dims[4]), np.float32)


def _scale(dims: tuple[int, ...] | None, scale: float | None) -> float | None:
    return dims[3] ** -0.5 if scale is None and dims is not None else scale


def chunk_h_timed(
    k: np.ndarray, v: np.ndarray, g: np.ndarray | None = None, *, chunk_size: int = 64,
    initial_state: np.ndarray | None = None, output_final_state: bool = False, block_k: int = BLOCK_K,
    block_v: int = BLOCK_V, backend: str | None = None, out: np.ndarray | None = None,
    final_state_out: np.ndarray | None = None, repeat: int = 1,
) -> tuple[np.ndarray, np.ndarray | None, _core.DispatchTiming]:
    """Like :func:`chunk_h`, returning ``(h, final_state | None, timing)``."""
    dims = _dims(k, v)
    out = _states(dims, chunk_size) if out is None and dims is not None else out
    final = _final(dims, output_final_state, final_state_out)
    timing = _core.linear_attention_chunk_h(
        {"k": k, "v": v, "g": g, "initial_state": initial_state, "h": out, "final_state": final},
        {"chunk_size": chunk_size, "block_k": block_k, "block_v": block_v}, backend or "", repeat)
    return out, final, timing  # type: ignore[return-value]


def chunk_h(k: np.ndarray, v: np.ndarray, g: np.ndarray | None = None, *, chunk_size: int = 64,
            initial_state: np.ndarray | None = None, output_final_state: bool = False, block_k: int = BLOCK_K,
            block_v: int = BLOCK_V, backend: str | None = None, out: np.ndarray | None = None,
            final_state_out: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """FLA's ``chunk_h``: h, float32 ``[B, N, H, K, V]``, with ``h[:, n]`` the state before step
    ``n * chunk_size``; with ``output_final_state`` also the state after the last step, ``(h, final_state)``
    (arguments: the module docstring)."""
    h, final, _ = chunk_h_timed(k, v, g, chunk_size=chunk_size, initial_state=initial_state,
                                output_final_state=output_final_state, block_k=block_k, block_v=block_v,
                                backend=backend, out=out, final_state_out=final_state_out)
    return (h, final) if output_final_state else h  # type: ignore[return-value]


def chunk_o_timed(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, h: np.ndarray, g: np.ndarray | None = None, *,
    chunk_size: int = 64, scale: float | None = None, block_k: int = BLOCK_K, block_v: int = BLOCK_V,
    backend: str | None = None, out: np.ndarray | None = None, repeat: int = 1,
) -> tuple[np.ndarray, _core.DispatchTiming]:
    """Like :func:`chunk_o`, returning ``(o, timing)``."""
    dims = _dims(q, v)
    out = memory.empty((*dims[:3], dims[4]), q.dtype) if out is None and dims is not None else out
    timing = _core.linear_attention_chunk_o(
        {"q": q, "k": k, "v": v, "h": h, "g": g, "o": out},
        {"chunk_size": chunk_size, "scale": _scale(dims, scale), "block_k": block_k, "block_v": block_v},
        backend or "", repeat)
    return out, timing  # type: ignore[return-value]


def chunk_o(q: np.ndarray, k: np.ndarray, v: np.ndarray, h: np.ndarray, g: np.ndarray | None = None, *,
            chunk_size: int = 64, scale: float | None = None, block_k: int = BLOCK_K, block_v: int = BLOCK_V,
            backend: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """FLA's ``chunk_o``: ``o = scale * (exp(G) q h[n] + causal(q k^T * exp(G_i - G_j)) v)`` per chunk, with G
    the cumulative sum of g inside the chunk and h the states :func:`chunk_h` returns. Returns o
    ``[B, T, H, V]`` in q's dtype (arguments: the module docstring)."""
    return chunk_o_timed(q, k, v, h, g, chunk_size=chunk_size, scale=scale, block_k=block_k, block_v=block_v,
                         backend=backend, out=out)[0]


def linear_attention_timed(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None = None, *, scale: float | None = None,
    initial_state: np.ndarray | None = None, output_final_state: bool = False, chunk_size: int = 64,
    mode: str = "chunk", block_k: int = BLOCK_K, block_v: int = BLOCK_V, backend: str | None = None,
    out: np.ndarray | None = None, final_state_out: np.ndarray | None = None, repeat: int = 1,
) -> tuple[np.ndarray, np.ndarray | None, _core.DispatchTiming]:
    """Like :func:`linear_attention`, returning ``(o, final_state | None, timing)``; in chunk mode the timing
    covers both launches (``timing.launches``: chunk_h, chunk_o)."""
    dims = _dims(q, v)
    out = memory.empty((*dims[:3], dims[4]), q.dtype) if out is None and dims is not None else out
    final = _final(dims, output_final_state, final_state_out)
    states = _states(dims, chunk_size) if mode == "chunk" and dims is not None else None
    timing = _core.linear_attention(
        {"q": q, "k": k, "v": v, "g": g, "initial_state": initial_state, "h": states, "o": out, "final_state": final},
        {"mode": mode, "chunk_size": chunk_size, "scale": _scale(dims, scale), "block_k": block_k,
         "block_v": block_v}, backend or "", repeat)
    return out, final, timing  # type: ignore[return-value]


def linear_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None = None, *, scale: float | None = None,
    initial_state: np.ndarray | None = None, output_final_state: bool = False, chunk_size: int = 64,
    mode: str = "chunk", block_k: int = BLOCK_K, block_v: int = BLOCK_V, backend: str | None = None,
    out: np.ndarray | None = None, final_state_out: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Causal linear attention with a scalar decay gate (simple GLA):
    ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = scale * q_t S_t``; ``mode`` ``"chunk"`` (FLA's chunk_h
    then chunk_o) or ``"recurrent"`` (step by step); the other arguments: the module docstring.

    Returns o ``[B, T, H, V]`` in the input dtype, or ``(o, final_state)`` with ``output_final_state``.
    """
    o, final, _ = linear_attention_timed(q, k, v, g, scale=scale, initial_state=initial_state,
                                         output_final_state=output_final_state, chunk_size=chunk_size, mode=mode,
                                         block_k=block_k, block_v=block_v, backend=backend, out=out,
                                         final_state_out=final_state_out)
    return (o, final) if output_final_state else o  # type: ignore[return-value]


def threadgroup_bytes(key_dim: int, value_dim: int, dtype: Any, *, chunk_size: int = 64,
                      block_k: int = BLOCK_K, block_v: int = BLOCK_V) -> dict[str, int]:
    """Threadgroup memory in bytes of each chunk kernel, ``{"chunk_h": ..., "chunk_o": ...}``: the lengths of
    their ``[[threadgroup(0)]]`` buffers as the C++ plan computes and the dispatch sets them. With ``s`` the
    itemsize, ``ROW(n, s) = n * s + 16`` and blocks capped at K, V rounded up to 8: chunk_h
    ``chunk * (ROW(block_k, s) + ROW(block_v, s) + 8)``, chunk_o ``chunk * (2 ROW(block_k, s) + ROW(block_v, s)
    + 8) + block_k * ROW(block_v, 4)`` (the h tile is float; 8 bytes a step hold the cumulative decay)."""
    dt, f32, t = np.dtype(dtype), np.dtype(np.float32), chunk_size
    shapes = {"q": ((1, t, 1, key_dim), dt), "k": ((1, t, 1, key_dim), dt), "v": ((1, t, 1, value_dim), dt),
              "o": ((1, t, 1, value_dim), dt), "g": ((1, t, 1), f32), "h": ((1, 1, 1, key_dim, value_dim), f32)}
    options = {"mode": "chunk", "chunk_size": chunk_size, "scale": 1.0, "block_k": block_k, "block_v": block_v}
    launches = _core.plan("linear_attention", shapes, options, "", False)
    return {"chunk_h": int(launches[0].threadgroup_bytes), "chunk_o": int(launches[1].threadgroup_bytes)}
