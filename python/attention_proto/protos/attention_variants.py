"""Prototype 7: what real models add to attention (RoPE, ALiBi, logit softcapping, GQA), fused or separate.

:func:`rope` is the separate rotary-embedding pass (``shaders/rope.metal``), as MLX, llama.cpp and vLLM run it.
:func:`attention_proto.flash_attention` takes the variants as keywords, each a function constant of its kernel
(a call without them runs the kernel it always ran): ``alibi_slopes=`` (float32 ``[Hq]``, adds
``slope_h * (j - (i + Nk - Nq))`` to the scaled score of query i and key j, vLLM's convention; see
:func:`alibi_slopes`), ``softcap=`` (``softcap * tanh(score / softcap)``, Gemma 2, before bias and mask) and
``rope=Rotary(...)`` (Q and K rotated as their tiles load, equal to rotating them first to rounding).
The C++ entry points (``_core.rope``, ``_core.flash_attention``) check every argument: ValueError or
TypeError naming it (``rotary_dim``, ``rope.rotary_dim``, ``positions``, ...).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

import numpy as np

from .. import _core, memory, reference

STYLES: tuple[str, ...] = ("neox", "gptj")
"""RoPE pairings: ``neox`` rotates dims ``(i, i + R/2)`` (the halves of the rotary dims, GPT-NeoX and Llama
as Hugging Face runs them), ``gptj`` dims ``(2i, 2i + 1)`` (interleaved, GPT-J and the RoFormer paper)."""


@dataclasses.dataclass(frozen=True)
class Rotary:
    """RoPE fused into flash attention's Q and K tile loads (``flash_attention(..., rope=Rotary())``).

    Query row i is at position ``q_offset + i``, key j at ``k_offset + j``; ``base``, ``style`` and
    ``rotary_dim`` (None: the head dim) as in :func:`rope`. Checked by the flash-attention entry point,
    whose errors name the field (``rope.rotary_dim``, ...)."""

    base: float = 10000.0
    style: str = "neox"
    rotary_dim: int | None = None
    q_offset: int = 0
    k_offset: int = 0

    def options(self) -> dict[str, Any]:
        """The entry point's options of this rotary embedding."""
        return {f"rope.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}


def rope_options(rope: Rotary | None) -> dict[str, Any]:
    """Flash attention's options for ``rope=`` (none when None); anything but a Rotary is a TypeError."""
    if rope is None:
        return {}
    if not isinstance(rope, Rotary):
        raise TypeError(f"rope must be an attention_proto.Rotary or None, got {type(rope).__name__}")
    return rope.options()


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The standard ALiBi slopes of ``num_heads`` heads as float32 ``[num_heads]``, what ``alibi_slopes=``
    takes (Press et al., "Train Short, Test Long"; any head count, also not a power of two: the slopes of
    the largest power of two below it, then every other slope of twice that many heads; the FP64 values
    are :func:`attention_proto.reference.alibi_slopes`)."""
    n = operator.index(num_heads)
    if n < 1:
        raise ValueError(f"num_heads must be >= 1, got {n}")
    return reference.alibi_slopes(n).astype(np.float32)


def rope_timed(
    x: np.ndarray, *, offset: int = 0, positions: np.ndarray | None = None, base: float = 10000.0,
    style: str = "neox", rotary_dim: int | None = None, out: np.ndarray | None = None, backend: str | None = None,
    repeat: int = 1,
) -> tuple[np.ndarray, _core.DispatchTiming]:
    """Like :func:`rope`, and also returns the dispatch timing: ``(out, timing)`` (``timing.seconds`` is GPU
    time on Metal and the CPU wall time of the emulation on the host backend, per run of ``repeat``)."""
    if out is None and isinstance(x, np.ndarray):
        out = memory.empty(x.shape, x.dtype)  # package memory: Metal writes it without a copy
    timing = _core.rope({"x": x, "positions": positions, "out": out},
                        {"offset": offset, "base": base, "style": style, "rotary_dim": rotary_dim},
                        backend or "", repeat)
    return out, timing  # type: ignore[return-value]


def rope(
    x: np.ndarray, *, offset: int = 0, positions: np.ndarray | None = None, base: float = 10000.0,
    style: str = "neox", rotary_dim: int | None = None, out: np.ndarray | None = None, backend: str | None = None,
) -> np.ndarray:
    """Rotary position embedding of ``x`` ``[B, H, N, D]`` (float32, float16 or bfloat16, C-contiguous),
    computed in float32 and rounded to x's dtype once.

    Pair i of the first ``rotary_dim`` dims (``style``: ``"neox"`` pairs ``(i, i + rotary_dim/2)``,
    ``"gptj"`` pairs ``(2i, 2i + 1)``) of row n is rotated by ``theta_i = pos_n * base^(-2i / rotary_dim)``:
    ``(a, b) -> (a cos - b sin, b cos + a sin)``; the other dims are copied. ``pos_n`` is ``offset + n``, or
    ``positions[n]`` for int32 ``positions`` ``[N]``, or ``positions[b, n]`` for ``[B, N]`` (then offset
    must be 0). ``rotary_dim`` is even and at most D (None: D). Returns ``out`` (allocated if None; it may
    not overlap x). Bad input raises ValueError / TypeError naming the argument.
    """
    return rope_timed(x, offset=offset, positions=positions, base=base, style=style, rotary_dim=rotary_dim,
                      out=out, backend=backend)[0]
