"""Prototype 2: user score functions in the attention inner loop (``shaders/score_mod_attention.metal``).

``score_mod_attention(q, k, v, score_mod)`` computes ``softmax(score_mod(scale * q k^T, b, h, i, j) + mask) v``
(FlexAttention's ``score_mod``: ``i`` the query's row 0..Nq-1, ``j`` the key's 0..Nk-1; ``-INFINITY`` masks the
key). The modifier is a built-in (:data:`BUILTINS`), the MSL of ``float score_mod`` + :data:`SIGNATURE`, or a
:func:`stitch` composition, and reaches the kernel in one of four :data:`MODES`: ``"inline"`` (compiled into the
kernel), ``"linked"`` (a ``[[visible]]`` function of its own library resolving the kernel's ``extern``
declaration: MTLLinkedFunctions.privateFunctions), ``"table"`` (called through a ``visible_function_table``
bound per dispatch) or ``"stitched"`` (``[[stitchable]]`` pieces composed by a function stitching graph, then
linked). Layouts and masks as prototype 1; D up to :data:`MAX_HEAD_DIM`; a row whose keys are all masked
outputs 0. The C++ entry point checks every argument; an error in a user's MSL is a ShaderCompileError
naming the text's ``path`` and line.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core, memory

MAX_HEAD_DIM: int = _core.proto_facts("score_mod_attention")["max_head_dim"][0]
"""Largest head dim (the kernel keeps a query row and its accumulator in registers)."""
MODES: tuple[str, ...] = ("inline", "linked", "table", "stitched")  # how the modifier reaches the kernel
SIGNATURE = "(float score, uint batch, uint head, uint q_idx, uint kv_idx)"
_ARGS = "(score, batch, head, q_idx, kv_idx)"
# A reference: float64 scores [..., Nq, Nk] and broadcastable batch, head, q_idx, kv_idx index arrays.
Reference = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ScoreMod:
    """A score modifier: MSL defining ``float score_mod`` + :data:`SIGNATURE`, and its FP64 reference
    (a vectorised numpy function of ``(score, batch, head, q_idx, kv_idx)``, or None for user code
    without one). ``pieces`` holds the parts of a :func:`stitch` composition (empty for one modifier)."""

    name: str
    msl: str
    reference: Reference | None = None
    path: str = "<score_mod>"
    pieces: tuple[ScoreMod, ...] = field(default=())

    @staticmethod
    def from_msl(msl: str, *, path: str = "score_mod.metal", reference: Reference | None = None) -> ScoreMod:
        """A user modifier: `msl` defines ``float score_mod`` + :data:`SIGNATURE` (compiler messages
        name `path` and the text's own lines)."""
        if not isinstance(msl, str) or "score_mod" not in msl:
            raise ValueError(f"score_mod MSL must define float score_mod{SIGNATURE}")
        return ScoreMod("user", msl, reference, path)

    @staticmethod
    def builtin(name: str, **params: Any) -> ScoreMod:
        """A built-in modifier with its parameters (see :data:`BUILTINS`)."""
        if name not in BUILTINS:
            raise ValueError(f"unknown built-in score_mod {name!r} (built-ins: {', '.join(BUILTINS)})")
        return BUILTINS[name](**params)

    def definition(self, function: str) -> str:
        """MSL defining a plain function `function` + :data:`SIGNATURE` from this modifier (its names
        score_mod, and LOCAL(x) for a built-in's program-scope names, become this function's own)."""
        if self.pieces:
            body = "".join(p.definition(f"{function}_{i}") for i, p in enumerate(self.pieces))
            calls = "".join(f"  score = {function}_{i}{_ARGS};\n" for i in range(len(self.pieces)))
            return body + f"float {function}{SIGNATURE} {{\n{calls}  return score;\n}}\n"
        return (f"#define score_mod {function}\n#define LOCAL(x) {function}_##x\n#line 1 \"{self.path}\"\n"
                f"{self.msl}\n#undef score_mod\n#undef LOCAL\n#line 1 \"<score_mod_attention: generated>\"\n")

    def stitchable(self) -> tuple[str, str]:
        """``(msl, graph)`` for mode "stitched": one ``[[stitchable]]`` function per piece and the graph
        calling them in order (the entry point's format: ``function:arg,...`` nodes joined by ``;``)."""
        pieces = self.pieces or (self,)
        msl, nodes = "", []
        for i, p in enumerate(pieces):
            msl += p.definition(f"score_mod_piece_{i}") + (f"[[stitchable]] float score_mod_stitch_{i}{SIGNATURE} "
                                                          f"{{ return score_mod_piece_{i}{_ARGS}; }}\n")
            nodes.append(f"score_mod_stitch_{i}:" + ("0" if i == 0 else f"n{i - 1}") + ",1,2,3,4")
        return msl, ";".join(nodes)

    def apply(self, score: np.ndarray, *idx: np.ndarray) -> np.ndarray:
        """The FP64 reference of this modifier at (batch, head, q_idx, kv_idx) `idx`; ValueError if none."""
        if self.pieces:
            for p in self.pieces:
                score = p.apply(score, *idx)
            return score
        if self.reference is None:
            raise ValueError(f"score_mod {self.name!r} has no reference")
        return np.broadcast_to(self.reference(score, *idx), score.shape)


def _builtin(name: str, body: str, reference: Reference, prelude: str = "") -> ScoreMod:
    return ScoreMod(name, f"{prelude}float score_mod{SIGNATURE} {{\n  {body}\n}}\n", reference, f"<builtin {name}>")


def _float(value: float, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return f"{float(value)!r}f"


def identity() -> ScoreMod:
    """The score unchanged (plain attention)."""
    return _builtin("identity", "return score;", lambda s, b, h, i, j: s)


def alibi(num_heads: int = 8) -> ScoreMod:
    """ALiBi (Press et al.): ``score + m_h (kv_idx - q_idx)`` with ``m_h = 2^(-8 (h + 1) / num_heads)``."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
    return _builtin("alibi", f"return score + exp2(-8.0f * float(head + 1) / {num_heads}.0f) * "
                             "(float(kv_idx) - float(q_idx));",
                    lambda s, b, h, i, j: s + 2.0 ** (-8.0 * (h + 1) / num_heads) * (j - i))


def softcap(cap: float = 20.0) -> ScoreMod:
    """Gemma 2's logit soft-capping: ``cap * tanh(score / cap)``."""
    if not (isinstance(cap, (int, float)) and cap > 0):
        raise ValueError(f"cap must be a number > 0, got {cap!r}")
    c = _float(cap, "cap")
    return _builtin("softcap", f"return {c} * precise::tanh(score / {c});", lambda s, b, h, i, j: cap * np.tanh(s / cap))


def sliding_window(window: int = 16) -> ScoreMod:
    """Masks keys more than `window` rows before the query (``q_idx - kv_idx > window``; combine with
    ``causal=True`` for a causal band)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0, got {window!r}")
    return _builtin("sliding_window", f"return int(q_idx) - int(kv_idx) > {window} ? -INFINITY : score;",
                    lambda s, b, h, i, j: np.where(i - j > window, -np.inf, s))


def relative_bias(table: Sequence[Sequence[float]] | np.ndarray | None = None) -> ScoreMod:
    """A learned relative-position bias (T5-style, clipped): ``score + table[h, clamp(kv_idx - q_idx, -M,
    M) + M]`` for a ``[heads, 2M + 1]`` table, baked into the MSL as a constant array. The default is
    2 heads, M = 8, ``-0.1 (h + 1) |d|`` (heads beyond the table's rows use row ``h % heads``)."""
    if table is None:
        table = [[-0.1 * (h + 1) * abs(d) for d in range(-8, 9)] for h in range(2)]
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] % 2 != 1 or not np.isfinite(t).all():
        raise ValueError(f"table must be finite [heads, 2M + 1], got shape {t.shape}")
    (heads, span), m = t.shape, t.shape[1] // 2
    rows = ", ".join("{" + ", ".join(_float(float(x), "table") for x in row) + "}" for row in t.astype(np.float32))
    prelude = f"constant float LOCAL(bias)[{heads}][{span}] = {{{rows}}};\n"
    body = f"return score + LOCAL(bias)[head % {heads}u][clamp(int(kv_idx) - int(q_idx), -{m}, {m}) + {m}];"
    t32 = t.astype(np.float32).astype(np.float64)  # the table as the kernel holds it
    return _builtin("relative_bias", body, lambda s, b, h, i, j: s + t32[h % heads, np.clip(j - i, -m, m) + m], prelude)


BUILTINS: dict[str, Callable[..., ScoreMod]] = {
    "identity": identity, "alibi": alibi, "softcap": softcap, "sliding_window": sliding_window,
    "relative_bias": relative_bias}
"""Built-in modifiers by name; each takes its parameters as keywords (see the functions)."""


def stitch(*mods: ScoreMod | str) -> ScoreMod:
    """One modifier applying `mods` in order (``stitch("alibi", "softcap")`` is softcap after alibi).
    Usable in every mode; in mode ``"stitched"`` each piece is a ``[[stitchable]]`` function and a
    function stitching graph composes them. At most one piece may be user MSL."""
    pieces = tuple(_as_mod(m, None) for m in mods)
    if not pieces:
        raise ValueError("stitch needs at least one score_mod")
    if sum(p.name == "user" for p in pieces) > 1:
        raise ValueError("stitch composes at most one user MSL modifier (each defines score_mod)")
    return ScoreMod("+".join(p.name for p in pieces), "", None, "<stitch>", pieces)


def _as_mod(score_mod: ScoreMod | str, q_heads: int | None) -> ScoreMod:
    if isinstance(score_mod, ScoreMod):
        return score_mod
    if not isinstance(score_mod, str):
        raise TypeError(f"score_mod must be a built-in name, MSL source or a ScoreMod, got {type(score_mod).__name__}")
    if score_mod in BUILTINS:
        return alibi(q_heads) if score_mod == "alibi" and q_heads else BUILTINS[score_mod]()
    if "score_mod" in score_mod and "(" in score_mod:
        return ScoreMod.from_msl(score_mod)
    raise ValueError(f"score_mod {score_mod!r} is neither a built-in ({', '.join(BUILTINS)}) nor MSL defining "
                     "float score_mod(float score, uint batch, uint head, uint q_idx, uint kv_idx)")


def score_mod_attention_timed(q: np.ndarray, k: np.ndarray, v: np.ndarray, score_mod: ScoreMod | str = "identity",
                              *, mode: str = "inline", causal: bool = False, scale: float | None = None,
                              backend: str | None = None, out: np.ndarray | None = None,
                              repeat: int = 1) -> tuple[np.ndarray, _core.DispatchTiming]:
    """:func:`score_mod_attention` and its DispatchTiming (GPU time on Metal, CPU wall time on the host)."""
    shaped = isinstance(q, np.ndarray) and q.ndim == 4
    mod = _as_mod(score_mod, q.shape[1] if shaped else None)
    if shaped:
        scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
        out = memory.empty(q.shape, q.dtype) if out is None else out
    msl, graph = mod.stitchable() if mode == "stitched" else (mod.definition("score_mod"), "")
    options = {"mode": mode, "causal": causal, "scale": scale, "score_mod": msl, "score_mod_path": mod.path,
               "stitch_graph": graph}
    timing = _core.score_mod_attention({"q": q, "k": k, "v": v, "out": out}, options, backend or "", repeat)
    return out, timing  # type: ignore[return-value]


def score_mod_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, score_mod: ScoreMod | str = "identity",
                        *, mode: str = "inline", causal: bool = False, scale: float | None = None,
                        backend: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Attention with a score modifier: ``softmax(score_mod(scale * q k^T, b, h, i, j) + mask) v``.

    Args:
        q: ``[B, Hq, Nq, D]``; k, v: ``[B, Hkv, Nk, D]``, one float dtype, ``D <= MAX_HEAD_DIM``.
        score_mod: a built-in name (``"alibi"`` takes ``num_heads`` from q), the MSL of
            ``float score_mod(float score, uint batch, uint head, uint q_idx, uint kv_idx)``, or a
            :class:`ScoreMod` (``ScoreMod.builtin``, ``ScoreMod.from_msl``, :func:`stitch`).
        mode: ``"inline"``, ``"linked"``, ``"table"`` or ``"stitched"`` (see the module docs).
        causal: bottom-right aligned causal mask, applied after the modifier.
        scale: ``1 / sqrt(D)`` when None; the modifier sees the scaled score.
        backend, out: as for flash_attention.

    Raises:
        ValueError / TypeError naming the argument; ShaderCompileError for MSL that does not compile,
        naming the modifier's path and line.
    """
    return score_mod_attention_timed(q, k, v, score_mod, mode=mode, causal=causal, scale=scale, backend=backend,
                                     out=out)[0]


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, score_mod: ScoreMod | str = "identity", *,
              causal: bool = False, scale: float | None = None) -> np.ndarray:
    """The FP64 reference of :func:`score_mod_attention` (attention_proto.reference.score_mod_attention
    with this modifier's reference)."""
    from .. import reference as ref

    return ref.score_mod_attention(q, k, v, _as_mod(score_mod, q.shape[1]).apply, causal=causal, scale=scale)
