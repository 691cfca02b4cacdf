"""Bench of prototype 2 (``attention-proto bench function_stitching``, the issue's name; the kernel and entry
point are ``score_mod_attention``): a score modifier's kernel time when inlined, linked, called through a
visible function table or stitched, relative to inline at the same shape, and each mode's build time.
On the host backend every time is a CPU time of the emulation, never an Apple-GPU result: there "linked" and
"stitched" are forwarded calls in one C++ translation unit and the table a function pointer.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from attention_proto import bench, kb
from attention_proto.benchspec import BenchSpec, Context, Plot, Question, Row, TableSpec, run_bench
from attention_proto.protos.score_mod_attention import MODES, ScoreMod, score_mod_attention_timed, stitch

# (B, H, N, D): query and key lengths equal.
SHAPES = {"metal": (4, 16, 2048, 64), "metal-quick": (2, 8, 1024, 64), "host": (1, 4, 256, 64),
          "host-quick": (1, 4, 256, 64)}
MODIFIERS = ("identity", "softcap", "alibi", "relative_bias", "alibi+softcap")
QUICK_MODIFIERS = ("identity", "softcap", "alibi+softcap")


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", type=int, nargs=4, default=None, metavar=("B", "H", "N", "D"),
                   help="batch, heads, sequence length, head dim (default: 4 16 2048 64 metal, 1 4 256 64 host)")
    p.add_argument("--modifiers", nargs="+", default=None, choices=MODIFIERS, help="modifiers to time")


def shape(ctx: Context) -> tuple[int, int, int, int]:
    where = ("host" if ctx.is_host else "metal") + ("-quick" if ctx.mode == "quick" else "")
    return tuple(ctx.args.shape or SHAPES[where])  # type: ignore[return-value]


def modifier(name: str, heads: int, fresh: bool = False) -> ScoreMod:
    """The modifier `name` ("a+b": a, then b); `fresh` adds a unique constant, so no cache has its pipeline."""
    mods = [ScoreMod.builtin(n, **({"num_heads": heads} if n == "alibi" else {})) for n in name.split("+")]
    if fresh:
        nonce = time.time_ns() % (1 << 24)  # in code, not a comment: the host's cache keys the translation
        mods.insert(0, ScoreMod.from_msl("float score_mod(float score, uint b, uint h, uint i, uint j) "
                                         f"{{ return score + 0.0f * {nonce}.0f; }}\n"))
    return mods[0] if len(mods) == 1 else stitch(*mods)


def call_configs(ctx: Context) -> list[Row]:
    return [{"score_mod": n} for n in ctx.args.modifiers or (QUICK_MODIFIERS if ctx.mode == "quick" else MODIFIERS)]


def measure(ctx: Context, c: Row) -> Row:
    """Times the four modes of one modifier side by side: every pipeline built first, then rounds of one
    sample per mode (so drift hits all modes alike), each ratio paired with its round's inline sample."""
    b, h, n, d = shape(ctx)
    q, k, v = ctx.cached(("qkv", b, h, n, d), lambda: tuple(
        ctx.rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(3)))
    out, mod = np.empty_like(q), modifier(c["score_mod"], h)
    call = lambda m, r: float(score_mod_attention_timed(q, k, v, mod, mode=m, backend=ctx.backend, out=out,
                                                        repeat=r)[1].seconds)
    for m in MODES:
        call(m, 1)  # builds the pipeline
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(ctx.samples * (3 if ctx.is_host else 1)):
        for m in MODES:
            times[m].append(call(m, ctx.repeat))
    row: Row = {f"{m}_ms": 1e3 * float(np.median(t)) for m, t in times.items()}
    return {**row, **{f"{m}_ratios": [t / i for t, i in zip(times[m], times["inline"])] for m in MODES[1:]}}


def relative_rows(ctx: Context) -> list[Row]:
    rows = [r for r in ctx.tables["call_cost"].rows if "inline_ms" in r] if "call_cost" in ctx.tables else []
    return [{"score_mod": r["score_mod"], "mode": m, "vs_inline": float(np.median(r[f"{m}_ratios"])),
             "p20": float(np.percentile(r[f"{m}_ratios"], 20)), "p80": float(np.percentile(r[f"{m}_ratios"], 80)),
             "ratios": r[f"{m}_ratios"]} for r in rows for m in MODES[1:]]


def build(ctx: Context, c: Row) -> Row:
    """Builds one pipeline from nothing (a fresh modifier text) and reads its stages."""
    b, h, n, d = shape(ctx)
    q = np.zeros((1, h, 8, d), np.float32)
    k = v = np.zeros((1, h, 8, d), np.float32)
    _, timing = score_mod_attention_timed(q, k, v, modifier("alibi+softcap", h, fresh=True),
                                          mode=c["mode"], backend=ctx.backend)
    p = timing.launches[0].pipeline
    return {"compile_ms": 1e3 * p.compile_seconds, "library_ms": 1e3 * p.library_seconds,
            "function_ms": 1e3 * p.function_seconds, "pipeline_ms": 1e3 * p.pipeline_seconds, "cache": p.cache}


# What the runtime refuses, as Metal's documentation states it (the host backend enforces each the same way;
# tests/test_score_mod_attention.py::test_link_errors_say_what_metal_rejects shows every message).
REFUSALS = (
    ("extern function called but not linked", "pipeline creation fails: every extern call needs a linked function"),
    ("linked name not [[visible]]/[[stitchable]]", "libraries publish only kernels, visible, stitchable functions"),
    ("extern signature differs from the linked function", "link error"),
    ("[[visible]] on a template", "a visible function is published by one name and signature"),
    ("stitching node calls a non-[[stitchable]] function", "MTLFunctionStitchingGraph: each function stitchable"),
    ("stitching node arity or argument type mismatch", "stitched library creation fails"),
    ("table entry not among the pipeline's linked functions", "handles exist for MTLLinkedFunctions.functions"))


def refusal_rows(ctx: Context) -> list[Row]:
    return [{"case": case, "metal": why, "host": "refused with a CompileError / ValueError"} for case, why in REFUSALS]


def findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    b, h, n, d = shape(ctx)
    config = {"B": b, "H": h, "N": n, "D": d, "dtype": "float32"}
    out: list[kb.Finding] = []
    rel = tables["relative"].rows if "relative" in tables else []
    if rel:
        per_mode = {m: [x for r in rel if r["mode"] == m for x in r["ratios"]] for m in MODES[1:]}
        parts = [f"{m} {np.median(x):.3g}x (p20 {np.percentile(x, 20):.3g}, p80 {np.percentile(x, 80):.3g})"
                 for m, x in per_mode.items()]
        worst = max(rel, key=lambda r: r["vs_inline"])
        out.append(ctx.finding(
            "call_cost", "performance", "time_vs_inline", worst["vs_inline"], "x", config,
            f"kernel time relative to the inlined modifier at B={b}, H={h}, N={n}, D={d} on {ctx.device['name']}, "
            f"over {len(rel) // 3} modifiers: " + "; ".join(parts),
            {"samples": [x for r in rel for x in r["ratios"]], "table": ctx.table_path("relative"),
             "derived": "per-round time / the same round's inline time, same modifier"},
            extra={"worst": f"{worst['mode']}/{worst['score_mod']}"}))
    comp = [r for r in tables["compile"].rows if "compile_ms" in r] if "compile" in tables else []
    if comp:
        med = {m: float(np.median([r["compile_ms"] for r in comp if r["mode"] == m])) for m in MODES}
        out.append(ctx.finding(
            "compile_cost", "compile", "build_time_vs_inline", max(med[m] / med["inline"] for m in MODES), "x",
            {"D": d}, f"pipeline creation from a fresh modifier text on {ctx.device['name']} ("
            + ("CPU: the host backend's translation and C++ compile, not Metal's): " if ctx.is_host else "")
            + ", ".join(f"{m} {med[m]:.0f} ms" for m in MODES),
            {"samples": [r["compile_ms"] for r in comp], "table": ctx.table_path("compile")}))
    out.append(ctx.finding(
        "refusals", "api", "refused_cases", len(REFUSALS), "cases", {},
        f"{len(REFUSALS)} cases refused around visible and stitchable functions (Apple's documentation; the host "
        "enforces them alike; not yet confirmed on a device): unlinked extern calls, non-visible linked names, "
        "signature mismatches, visible templates, non-stitchable graph nodes, tables of unlinked functions",
        {"table": ctx.table_path("refusals"), "test": "tests/test_score_mod_attention.py"}))
    if rel and not ctx.is_host:
        best = min(MODES[1:], key=lambda m: np.median(per_mode[m]))
        claim = (f"for the trait: inline score functions (source generation) by default; when a modifier must be "
                 f"compiled apart, {best} costs the least here ({np.median(per_mode[best]):.3g}x inline)")
    else:
        claim = ("for the trait (from the structure, pending M4 timings): inline score functions (source generation "
                 "per modifier, cached like function-constant variants) by default; linked or stitched functions when "
                 "modifiers are compiled apart from the kernel; a visible function table only to switch modifiers per "
                 "dispatch without a new pipeline")
    out.append(ctx.finding("recommendation", "api", "recommended_mode", 0, "", config, claim,
                           {"table": ctx.table_path("relative"),
                            "derived": "the mode with the lowest median time_vs_inline, and the build times"},
                           extra={"mode": "inline"}))
    return out


SPEC = BenchSpec(
    proto="function_stitching",
    description="User score functions in the attention inner loop (prototype 2): the kernel time of linked, table "
                "and stitched modifiers relative to inline at the same shape, what each mode costs to build, what "
                "Metal refuses in visible and stitchable functions, and the mode to recommend for the trait. "
                "Host-backend times are CPU times of the emulation, never Apple-GPU results.",
    questions=(
        Question("call_cost", "What does a linked, table or stitched score modifier cost per call relative to an "
                 "inlined one, at the same shape?", ("performance",), True),
        Question("compile_cost", "What does each mode cost to build a pipeline (library, function, pipeline "
                 "stages)?", ("compile",), True),
        Question("refusals", "What does Metal refuse in visible and stitchable functions and their linking?",
                 ("api",), False),
        Question("recommendation", "Which mode should the Attention trait use for user score functions?",
                 ("api",), True),
    ),
    tables=(
        TableSpec("call_cost", "kernel time per modifier and mode (median ms), modes timed in interleaved rounds",
                  call_configs, measure),
        TableSpec("relative", "kernel time relative to inline (derived: median of per-round time / inline time)",
                  relative_rows,
                  plots=(Plot("bar", "score_mod", "vs_inline", series="mode"),)),
        TableSpec("compile", "pipeline creation from a fresh modifier (alibi+softcap), per mode", lambda ctx: [{"mode": m, "sample": s} for s in range(2 if ctx.is_host else 3) for m in MODES],
                  build, plots=(Plot("bar", "mode", "compile_ms", series="sample"),)),
        TableSpec("refusals", "what Metal refuses (documentation) and the host enforces", refusal_rows, timed=False),
    ),
    findings=findings,
    options=options,
    examples=("--quick", "--quick --shape 1 2 128 32 --modifiers identity alibi", "--backend metal"),
)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench (``attention-proto bench function_stitching``); returns the exit status."""
    return run_bench(SPEC, argv)
