"""Prototype 3: PagedAttention decode V1 and V2 on a block-table KV cache (``shaders/paged_attention.metal``)
and its cache writer (``shaders/paged_kv_write.metal``).

``paged_attention(q, k_cache, v_cache, block_tables, seq_lens)`` attends one query token per sequence,
q ``[S, Hq, D]``, to the ``seq_lens[s]`` tokens of sequence s, whose keys and values live in fixed-size
cache blocks: token j of sequence s is slot ``j % block_size`` of block ``block_tables[s, j // block_size]``.
Caches come in two layouts (``layout=``):

- ``"blocked"``: k_cache and v_cache ``[num_blocks, Hkv, block_size, D]``;
- ``"vllm"``: vLLM's own layout, K ``[num_blocks, Hkv, D // x, block_size, x]`` with ``x = 16 // itemsize``
  and V ``[num_blocks, Hkv, D, block_size]`` (vLLM, ``vllm/attention/ops/paged_attn.py``,
  ``PagedAttention.split_kv_cache``), so a vLLM cache is used as it is.

Two kernels, as in vLLM: V1 (``partition_size=0``) runs one threadgroup per (sequence, head) holding all
the sequence's scores in threadgroup memory, so its context is bounded by the 32 KB of an Apple GPU
(:func:`max_v1_context`); V2 (``partition_size > 0``) splits each sequence into partitions, one
threadgroup each, and a second kernel combines them (two launches dispatched as one sequence). The
scratch arrays V2 needs are allocated here. ``partition_size=None`` applies :func:`choose_partition_size`.
Every argument is checked by the C++ entry points (``_core.paged_attention``, ``_core.paged_kv_write``)
before any dispatch (see :func:`paged_attention`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _core, memory
from ..runtime import device_info

_FACTS = _core.proto_facts("paged_attention")

HEAD_DIMS: tuple[int, ...] = tuple(_FACTS["head_dims"])
"""Head dimensions the kernels support."""

BLOCK_SIZES: tuple[int, ...] = tuple(_FACTS["block_sizes"])
"""Tokens per cache block the kernels support."""

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
"""Element types of q, the caches and the output (float32 arithmetic throughout)."""

LAYOUTS: tuple[str, ...] = ("blocked", "vllm")
"""Cache layouts (module docstring)."""

DEFAULT_PARTITION_SIZE = 512
"""V2's tokens per partition when :func:`choose_partition_size` picks V2: vLLM's ``_PARTITION_SIZE``
(``vllm/attention/ops/paged_attn.py``), a prior, not an M4 measurement."""

V1_MIN_PARALLEL = 512
"""vLLM's rule keeps V1 for multi-partition contexts when ``num_seqs * num_heads`` exceeds this: with
that many threadgroups V2's extra parallelism buys nothing (``vllm/attention/ops/paged_attn.py``)."""


def _cache_arrays(layout: str, k_cache: Any, v_cache: Any) -> dict[str, Any]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    suffix = "_vllm" if layout == "vllm" else ""
    return {"k_cache" + suffix: k_cache, "v_cache" + suffix: v_cache}


def _block_size(k_cache: Any, layout: str) -> int | None:
    """block_size from the key cache's shape, or None when it is not an array of the layout's rank."""
    rank, axis = (5, 3) if layout == "vllm" else (4, 2)
    return k_cache.shape[axis] if isinstance(k_cache, np.ndarray) and k_cache.ndim == rank else None


def threadgroup_bytes(context: int, head_dim: int, dtype: Any = "float16", *, block_size: int = 16,
                      partition_size: int = 0, backend: str | None = None) -> int:
    """Threadgroup memory of the attention kernel for sequences of up to ``context`` tokens, in bytes:
    ``4 * (D + 8 + max(scores, 4 * D))`` with ``scores`` = the context rounded up to ``block_size`` (V1)
    or ``partition_size`` (V2) (the shader's header comment). The C++ entry point computes it (this asks
    it), so the number is the one dispatched."""
    blocks = max(1, math.ceil(context / block_size))
    dt = np.dtype(dtype)
    shapes: dict[str, Any] = {"q": ((1, 1, head_dim), dt), "out": ((1, 1, head_dim), dt),
                              "k_cache": ((1, 1, block_size, head_dim), dt), "v_cache": ((1, 1, block_size, head_dim), dt),
                              "block_tables": ((1, blocks), np.dtype(np.int32)), "seq_lens": ((1,), np.dtype(np.int32))}
    if partition_size:
        parts = math.ceil(blocks * block_size / partition_size)
        shapes.update({"tmp_out": ((1, 1, parts, head_dim), np.dtype(np.float32)),
                       "max_logits": ((1, 1, parts), np.dtype(np.float32)),
                       "exp_sums": ((1, 1, parts), np.dtype(np.float32))})
    launches = _core.plan("paged_attention", shapes, {"scale": 1.0, "partition_size": partition_size}, backend or "")
    return int(launches[0].threadgroup_bytes)


def max_v1_context(head_dim: int, dtype: Any = "float16", *, block_size: int = 16, limit: int = 32768) -> int:
    """The longest context (a multiple of ``block_size``) whose V1 scores fit ``limit`` bytes of
    threadgroup memory: a search over :func:`threadgroup_bytes`."""
    lo, hi = 0, limit // 4 // block_size + 1  # at least 4 bytes per score: hi blocks never fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if threadgroup_bytes(mid * block_size, head_dim, dtype, block_size=block_size) <= limit else (lo, mid)
    return lo * block_size


def choose_partition_size(max_seq_len: int, num_seqs: int, q_heads: int, head_dim: int, dtype: Any = "float16", *,
                          block_size: int = 16, backend: str | None = None) -> int:
    """The variant ``partition_size=None`` runs: 0 (V1) when V1's scores fit the device's threadgroup
    memory and either one partition of :data:`DEFAULT_PARTITION_SIZE` covers the longest sequence or
    ``num_seqs * q_heads > V1_MIN_PARALLEL``; else :data:`DEFAULT_PARTITION_SIZE` (V2).

    This is vLLM's rule (``vllm/attention/ops/paged_attn.py``: V1 when ``max_seq_len <= 8192`` and
    (one partition or ``num_seqs * num_heads > 512``)) with its 8192-token bound replaced by what fits
    the threadgroup memory here (32 KB on Apple GPUs, vLLM's kernel targets CUDA's larger shared memory).
    The bench (``attention-proto bench paged_attention``) measures the V1/V2 crossover; only an Apple-GPU
    run may revise the rule."""
    limit = int(device_info(backend).max_threadgroup_memory)
    fits = threadgroup_bytes(max_seq_len, head_dim, dtype, block_size=block_size, backend=backend) <= limit
    one_partition = max_seq_len <= DEFAULT_PARTITION_SIZE
    return 0 if fits and (one_partition or num_seqs * q_heads > V1_MIN_PARALLEL) else DEFAULT_PARTITION_SIZE


def paged_attention_timed(
    q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, block_tables: np.ndarray, seq_lens: np.ndarray, *,
    scale: float | None = None, alibi_slopes: np.ndarray | None = None, partition_size: int | None = None,
    layout: str = "blocked", backend: str | None = None, out: np.ndarray | None = None, repeat: int = 1,
) -> tuple[np.ndarray, _core.DispatchTiming]:
    """Like :func:`paged_attention`, and also returns the dispatch timing: ``(out, timing)``.

    ``timing.seconds`` is the GPU time of the whole sequence (V2: both launches) on Metal and the wall
    time of the CPU emulation on the host backend (a CPU number, never an Apple-GPU one);
    ``timing.launches`` has one entry for V1, two for V2. With ``repeat`` the sequence runs that many
    times in one submission and the times are per run. The first call of a configuration also compiles
    its pipelines; that is not part of the timing.
    """
    arrays: dict[str, Any] = {"q": q, **_cache_arrays(layout, k_cache, v_cache), "block_tables": block_tables,
                              "seq_lens": seq_lens, "alibi_slopes": alibi_slopes}
    # Defaults need shapes and the longest sequence; anything malformed goes on to the entry point as it
    # is, which says what is wrong.
    block_size = _block_size(k_cache, layout)
    shaped = (isinstance(q, np.ndarray) and q.ndim == 3 and block_size is not None
              and isinstance(block_tables, np.ndarray) and block_tables.ndim == 2
              and isinstance(seq_lens, np.ndarray) and seq_lens.ndim == 1 and seq_lens.size > 0
              and seq_lens.dtype.kind in "iu")
    if shaped:
        num_seqs, q_heads, head_dim = q.shape
        # Clamped to what the table holds, so a bad seq_len is reported, not allocated for.
        longest = int(min(max(int(seq_lens.max()), 1), block_tables.shape[1] * block_size))
        scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
        out = memory.empty(q.shape, q.dtype) if out is None else out
        if partition_size is None and head_dim in HEAD_DIMS and block_size in BLOCK_SIZES:
            partition_size = choose_partition_size(longest, num_seqs, q_heads, head_dim, q.dtype,
                                                   block_size=block_size, backend=backend)
        if isinstance(partition_size, int) and partition_size > 0:
            parts = math.ceil(longest / partition_size)
            arrays["tmp_out"] = memory.empty((num_seqs, q_heads, parts, head_dim), np.float32)
            arrays["max_logits"] = memory.empty((num_seqs, q_heads, parts), np.float32)
            arrays["exp_sums"] = memory.empty((num_seqs, q_heads, parts), np.float32)
    arrays["out"] = out
    options = {"scale": scale, "partition_size": 0 if partition_size is None else partition_size}
    timing = _core.paged_attention(arrays, options, backend or "", repeat)
    return out, timing  # type: ignore[return-value]


def paged_attention(
    q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, block_tables: np.ndarray, seq_lens: np.ndarray, *,
    scale: float | None = None, alibi_slopes: np.ndarray | None = None, partition_size: int | None = None,
    layout: str = "blocked", backend: str | None = None, out: np.ndarray | None = None,
) -> np.ndarray:
    """PagedAttention decode: ``out[s, h] = softmax(scale * q[s, h] . K_s^T + bias) V_s`` over the
    ``seq_lens[s]`` tokens of sequence s, found through ``block_tables[s]``.

    Args:
        q: ``[S, Hq, D]``, float32, float16 or ``ml_dtypes.bfloat16``; ``D`` in :data:`HEAD_DIMS`.
        k_cache, v_cache: the paged cache in ``layout`` (module docstring), q's dtype; ``Hq % Hkv == 0``
            (GQA/MQA); ``block_size`` in :data:`BLOCK_SIZES`.
        block_tables: int32 ``[S, max_blocks_per_seq]``; only the first ``ceil(seq_lens[s] / block_size)``
            entries of row s are read (the rest may hold anything).
        seq_lens: int32 ``[S]``, each in ``[1, max_blocks_per_seq * block_size]``.
        scale: softmax scale, ``1 / sqrt(D)`` when None.
        alibi_slopes: float32 ``[Hq]``: adds ``slope_h * (j - (seq_len - 1))`` to the scaled score of key j
            (vLLM's convention).
        partition_size: 0 forces V1; a positive multiple of block_size forces V2 with that many tokens per
            partition; None applies :func:`choose_partition_size`.
        layout: ``"blocked"`` or ``"vllm"``.
        backend: ``"metal"`` or ``"host"``; None picks the best available.
        out: an array to write the result into (``[S, Hq, D]``, q's dtype); allocated if None.

    Returns:
        The output ``[S, Hq, D]`` in q's dtype.

    Raises:
        TypeError / ValueError naming the argument (and the sequence and position of a bad block id or
        seq_len); ResourceLimitError (a ValueError) when V1's scores do not fit the threadgroup memory.
    """
    return paged_attention_timed(q, k_cache, v_cache, block_tables, seq_lens, scale=scale, alibi_slopes=alibi_slopes,
                                 partition_size=partition_size, layout=layout, backend=backend, out=out)[0]


def paged_kv_write(k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, slot_mapping: np.ndarray,
                   *, layout: str = "blocked", backend: str | None = None) -> _core.DispatchTiming:
    """Writes new tokens into the paged cache in place (vLLM's ``reshape_and_cache``): ``k[t]``, ``v[t]``
    (``[T, Hkv, D]``, the caches' dtype) go to slot ``slot_mapping[t] = block * block_size + offset``
    (int32 ``[T]``); ``-1`` skips the token. Slots must be distinct and inside the cache (ValueError
    naming the token otherwise). Returns the dispatch timing."""
    arrays = {"k": k, "v": v, "slot_mapping": slot_mapping, **_cache_arrays(layout, k_cache, v_cache)}
    return _core.paged_kv_write(arrays, {}, backend or "")


def kv_cache(num_blocks: int, kv_heads: int, block_size: int, head_dim: int, dtype: Any = np.float16,
             layout: str = "blocked") -> tuple[np.ndarray, np.ndarray]:
    """An empty (uninitialised) pair of caches in ``layout``, in package memory (Metal uses it in place)."""
    _cache_arrays(layout, None, None)
    if layout == "vllm":
        x = 16 // np.dtype(dtype).itemsize
        return (memory.empty((num_blocks, kv_heads, head_dim // x, block_size, x), dtype),
                memory.empty((num_blocks, kv_heads, head_dim, block_size), dtype))
    shape = (num_blocks, kv_heads, block_size, head_dim)
    return memory.empty(shape, dtype), memory.empty(shape, dtype)


def to_vllm_layout(k_cache: np.ndarray, v_cache: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of blocked caches (``[num_blocks, Hkv, block_size, D]``) in vLLM's layout, in package memory."""
    n, h, bs, d = k_cache.shape
    x = 16 // k_cache.dtype.itemsize
    k = k_cache.reshape(n, h, bs, d // x, x).transpose(0, 1, 3, 2, 4)
    return memory.aligned(k), memory.aligned(v_cache.transpose(0, 1, 3, 2))


def random_block_tables(rng: np.random.Generator, seq_lens: np.ndarray, block_size: int, *,
                        max_blocks_per_seq: int | None = None, spare_blocks: int = 0) -> tuple[np.ndarray, int]:
    """Block tables for ``seq_lens`` (int32 ``[S, max_blocks_per_seq]``) over a cache whose blocks are
    handed out in random order (non-contiguous, non-monotonic), and the number of blocks the cache needs
    (``spare_blocks`` more than used). Entries past a sequence's blocks are -1."""
    needed = [math.ceil(int(n) / block_size) for n in seq_lens]
    width = max_blocks_per_seq or max(needed)
    ids = rng.permutation(sum(needed) + spare_blocks).astype(np.int32)
    tables = np.full((len(needed), width), -1, np.int32)
    start = 0
    for s, n in enumerate(needed):
        tables[s, :n] = ids[start:start + n]
        start += n
    return tables, sum(needed) + spare_blocks
