"""FP64 reference implementations the kernels are tested against.

Conventions (DESIGN.md): q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]``; query head ``h`` reads key/value
head ``h // (Hq // Hkv)`` (GQA; MQA is ``Hkv == 1``); causal masks are bottom-right aligned, so query
``i`` sees keys ``j <= i + Nk - Nq``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def causal_mask(q_len: int, kv_len: int) -> np.ndarray:
    """The bottom-right aligned causal mask, ``[q_len, kv_len]`` bool, True where query i sees key j
    (``j <= i + kv_len - q_len``). With ``q_len > kv_len`` the first ``q_len - kv_len`` rows are all False."""
    return np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None] + (kv_len - q_len)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
              return_lse: bool = False, alibi_slopes: np.ndarray | None = None, softcap: float | None = None,
              rope: Any = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention ``softmax(scale * Q K^T + mask) V`` computed in float64.

    Args:
        q: ``[B, Hq, Nq, D]``, any float dtype (converted to float64).
        k, v: ``[B, Hkv, Nk, D]`` with ``Hq % Hkv == 0`` (v may have a head dim of its own, ``Dv``).
        causal: apply the bottom-right aligned causal mask (see :func:`causal_mask`).
        scale: the softmax scale, ``1 / sqrt(D)`` when None.
        return_lse: also return the natural-log logsumexp of each row's scaled, masked scores.
        alibi_slopes: ``[Hq]``; adds ``slope_h * (j - (i + Nk - Nq))`` to the scaled score of query i, key j.
        softcap: scores become ``softcap * tanh(scores / softcap)`` (after the scale, before bias and mask).
        rope: rotates q and k first (:func:`rope` at positions ``rope.q_offset + i`` and ``rope.k_offset + j``
            with ``rope.base``, ``rope.style``, ``rope.rotary_dim``; an ``attention_proto.Rotary``).

    Returns:
        The output ``[B, Hq, Nq, Dv]`` float64, and with ``return_lse`` the logsumexp ``[B, Hq, Nq]``
        float64. A query row that sees no key (causal with ``Nq > Nk``) has output 0 and logsumexp
        ``-inf``: softmax over an empty set is taken as no contribution rather than NaN, the same
        definition the flash attention kernel implements.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"expected q [B, Hq, Nq, D] and k, v [B, Hkv, Nk, D], got {q.shape}, {k.shape}, {v.shape}")
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if k.shape[0] != batch or k.shape[3] != head_dim or q_heads % kv_heads != 0:
        raise ValueError(f"k/v shape {k.shape} does not fit q shape {q.shape} (same B and D, Hq % Hkv == 0)")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    group = q_heads // kv_heads
    if rope is not None:
        q = _rotate(q, rope.q_offset + np.arange(q_len), rope.base, rope.style, rope.rotary_dim)
        k = _rotate(k, rope.k_offset + np.arange(kv_len), rope.base, rope.style, rope.rotary_dim)
    # [B, Hkv, group, Nq, D]: the `group` query heads of one kv head are adjacent (h // group).
    q64 = q.astype(np.float64).reshape(batch, kv_heads, group, q_len, head_dim)
    k64 = k.astype(np.float64)[:, :, None]
    v64 = v.astype(np.float64)[:, :, None]
    scores = scale * (q64 @ np.swapaxes(k64, -1, -2))  # [B, Hkv, group, Nq, Nk]
    if softcap is not None:
        scores = softcap * np.tanh(scores / softcap)
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, np.float64).reshape(kv_heads, group)[None, :, :, None, None]
        distance = np.arange(kv_len)[None, :] - (np.arange(q_len)[:, None] + kv_len - q_len)  # 0 on the diagonal
        scores = scores + slopes * distance
    if causal:
        scores = np.where(causal_mask(q_len, kv_len), scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    seen = np.isfinite(row_max)  # False only for rows that see no key
    weights = np.exp(scores - np.where(seen, row_max, 0.0))
    row_sum = weights.sum(axis=-1, keepdims=True)
    out = (weights @ v64) / np.where(seen, row_sum, 1.0)
    out = out.reshape(batch, q_heads, q_len, v.shape[-1])
    if not return_lse:
        return out
    with np.errstate(divide="ignore"):  # log(0) = -inf for rows that see no key
        lse = np.where(seen, row_max + np.log(row_sum), -np.inf)[..., 0]
    return out, lse.reshape(batch, q_heads, q_len)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The standard ALiBi slopes of ``num_heads`` heads, float64 (Press et al., "Train Short, Test Long"):
    for ``n`` a power of two, ``2^(-8 i / n)`` for i = 1..n; otherwise those of the largest power of two
    ``p < n``, then every other slope of ``2p`` heads (``2^(-4 i / p)`` for odd i) for the remaining heads.
    ``attention_proto.alibi_slopes`` is the same in float32."""
    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = [2.0 ** (-8.0 * i / p) for i in range(1, p + 1)]
    slopes += [2.0 ** (-4.0 * i / p) for i in range(1, 2 * (num_heads - p), 2)]
    return np.array(slopes, dtype=np.float64)


def gather_kv(k_cache: np.ndarray, v_cache: np.ndarray, block_tables: np.ndarray, seq_lens: np.ndarray, *,
              layout: str = "blocked") -> list[tuple[np.ndarray, np.ndarray]]:
    """Each sequence's keys and values ``[Hkv, seq_len, D]`` (the caches' dtype), gathered through its row
    of ``block_tables``: token j is slot ``j % block_size`` of block ``block_tables[s, j // block_size]``.

    Layouts: ``"blocked"`` k/v ``[num_blocks, Hkv, block_size, D]``; ``"vllm"`` k ``[num_blocks, Hkv, D / x,
    block_size, x]`` and v ``[num_blocks, Hkv, D, block_size]`` (vLLM's)."""
    if layout == "vllm":  # to [num_blocks, Hkv, block_size, D]: dims d = (d // x) * x + d % x
        n, h, dx, bs, x = k_cache.shape
        k_cache = k_cache.transpose(0, 1, 3, 2, 4).reshape(n, h, bs, dx * x)
        v_cache = v_cache.transpose(0, 1, 3, 2)
    elif layout != "blocked":
        raise ValueError(f"layout must be 'blocked' or 'vllm', got {layout!r}")
    block_size = k_cache.shape[2]
    out = []
    for row, length in zip(block_tables, seq_lens):
        blocks = row[: -(-int(length) // block_size)]
        k = np.concatenate(list(k_cache[blocks]), axis=1)[:, :length]  # blocks [Hkv, bs, D] joined on tokens
        v = np.concatenate(list(v_cache[blocks]), axis=1)[:, :length]
        out.append((k, v))
    return out


def paged_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, block_tables: np.ndarray,
                    seq_lens: np.ndarray, *, scale: float | None = None, alibi_slopes: np.ndarray | None = None,
                    layout: str = "blocked") -> np.ndarray:
    """Decode attention over a paged KV cache in float64: for each sequence s, the keys and values of its
    ``seq_lens[s]`` tokens are gathered (:func:`gather_kv`) and ``softmax(scale * q_s K^T + bias) V`` is
    computed densely, ``bias = slope_h * (j - (seq_len - 1))`` for key j when ``alibi_slopes`` is given.

    q ``[S, Hq, D]``; query head h reads kv head ``h // (Hq // Hkv)``. Returns ``[S, Hq, D]`` float64."""
    num_seqs, q_heads, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = np.empty((num_seqs, q_heads, head_dim))
    for s, (k, v) in enumerate(gather_kv(k_cache, v_cache, block_tables, seq_lens, layout=layout)):
        kv_heads, length = k.shape[0], k.shape[1]
        heads = np.arange(q_heads) // (q_heads // kv_heads)
        k64, v64 = k.astype(np.float64)[heads], v.astype(np.float64)[heads]  # [Hq, L, D]
        scores = scale * np.einsum("hd,hld->hl", q[s].astype(np.float64), k64)
        if alibi_slopes is not None:
            scores += np.asarray(alibi_slopes, np.float64)[:, None] * (np.arange(length) - (length - 1))[None, :]
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[s] = np.einsum("hl,hld->hd", weights, v64) / weights.sum(axis=1, keepdims=True)
    return out


def linear_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None = None, *,
                     scale: float | None = None,
                     initial_state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linear attention with a scalar decay gate, as the naive recurrence in float64, per batch and head:
    ``S_t = exp(g_t) S_{t-1} + k_t v_t^T`` (``S_{-1}`` = the initial state, or zeros) and
    ``o_t = scale * q_t S_t``.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (FLA's layout); any float dtype.
        g: ``[B, T, H]`` log decay, or None for no decay (``g = 0``).
        scale: ``K ** -0.5`` when None.
        initial_state: ``[B, H, K, V]``, or None.

    Returns:
        ``(o, final_state)``: o ``[B, T, H, V]`` and the state after the last step ``[B, H, K, V]``, float64.
    """
    if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B, T, H, K] and v [B, T, H, V], got {q.shape}, {k.shape}, {v.shape}")
    batch, steps, heads, key_dim = q.shape
    scale = key_dim ** -0.5 if scale is None else float(scale)
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    decay = np.ones((batch, steps, heads)) if g is None else np.exp(g.astype(np.float64))
    state = np.zeros((batch, heads, key_dim, v.shape[3]))
    if initial_state is not None:
        state = state + initial_state.astype(np.float64)
    out = np.empty((batch, steps, heads, v.shape[3]))
    for t in range(steps):
        state = decay[:, t, :, None, None] * state + k64[:, t, :, :, None] * v64[:, t, :, None, :]
        out[:, t] = scale * np.einsum("bhk,bhkv->bhv", q64[:, t], state)
    return out, state


def score_mod_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, score_mod, *, causal: bool = False,
                        scale: float | None = None) -> np.ndarray:
    """``softmax(score_mod(scale * Q K^T, b, h, i, j) + mask) V`` in float64 (FlexAttention's score_mod):
    `score_mod(scores [B, Hq, Nq, Nk], batch, head, q_idx, kv_idx)` with broadcastable index arrays; -inf
    masks a key; the causal mask comes after it; a row whose keys are all masked outputs 0."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    kv = np.arange(q_heads) // (q_heads // kv_heads)
    k64, v64 = k.astype(np.float64)[:, kv], v.astype(np.float64)[:, kv]
    scores = scale * (q.astype(np.float64) @ np.swapaxes(k64, -1, -2))  # [B, Hq, Nq, Nk]
    scores = np.broadcast_to(score_mod(scores, np.arange(batch)[:, None, None, None],
                                       np.arange(q_heads)[None, :, None, None], np.arange(q_len)[:, None],
                                       np.arange(kv_len)[None, :]), scores.shape)
    if causal:
        scores = np.where(causal_mask(q_len, kv_len), scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    seen = np.isfinite(row_max)
    weights = np.exp(scores - np.where(seen, row_max, 0.0))
    return (weights @ v64) / np.where(seen, weights.sum(axis=-1, keepdims=True), 1.0)


def _rotate(x: np.ndarray, positions: np.ndarray, base: float, style: str, rotary_dim: int | None) -> np.ndarray:
    """x ``[B, H, N, D]`` rotated in float64 at ``positions`` ``[N]`` or ``[B, N]`` (see :func:`rope`)."""
    head_dim = x.shape[-1]
    r = head_dim if rotary_dim is None else int(rotary_dim)
    if r % 2 or not 2 <= r <= head_dim:
        raise ValueError(f"rotary_dim must be even and in 2..{head_dim}, got {r}")
    half = np.arange(r // 2)
    pairs = {"neox": (half, half + r // 2), "gptj": (2 * half, 2 * half + 1)}
    if style not in pairs:
        raise ValueError(f"style must be 'neox' or 'gptj', got {style!r}")
    first, second = pairs[style]
    pos = np.asarray(positions, np.float64).reshape(-1, 1, x.shape[2], 1)  # [1 or B, 1, N, 1]
    theta = pos * float(base) ** (-2.0 * half / r)  # [., 1, N, R/2]
    cos, sin = np.cos(theta), np.sin(theta)
    x64 = x.astype(np.float64)
    out = x64.copy()
    a, b = x64[..., first], x64[..., second]
    out[..., first] = a * cos - b * sin
    out[..., second] = b * cos + a * sin
    return out


def rope(x: np.ndarray, *, offset: int = 0, positions: np.ndarray | None = None, base: float = 10000.0,
         style: str = "neox", rotary_dim: int | None = None) -> np.ndarray:
    """Rotary position embedding (Su et al., "RoFormer") of x ``[B, H, N, D]`` in float64: pair i of the first
    ``rotary_dim`` dims (``"neox"``: dims ``(i, i + R/2)``; ``"gptj"``: ``(2i, 2i + 1)``; R = rotary_dim, even,
    None: D) of row n, ``(a, b)``, becomes ``(a cos t - b sin t, b cos t + a sin t)`` with
    ``t = pos_n * base^(-2i / R)``; the other dims are unchanged. ``pos_n`` is ``offset + n``, or
    ``positions[n]`` (``[N]``), or ``positions[b, n]`` (``[B, N]``)."""
    pos = offset + np.arange(x.shape[2]) if positions is None else np.asarray(positions)
    return _rotate(x, pos, base, style, rotary_dim)

