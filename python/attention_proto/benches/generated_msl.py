"""Bench of prototype 5, generated MSL against hand-written: for every committed generated kernel
(shaders/generated/<generator>/) its numerics against FP64, the static table of the analyser
(attention_proto.msl_stats) next to the hand-written kernel, and kernel times side by side.

Every problem runs at the shape its sources were generated for (generators.SHAPES: tinygrad, TileLang
and Slang specialise to it), the hand-written kernel at the same shape; the 1024^3 float16 GEMM only on
Metal; hand-written attention is prototype 1's
flash attention (B = H = 1). ``--quick`` and the default differ only in samples. On the host backend every
time is the CPU time of the emulation, never an Apple-GPU result; at the small shapes a GPU time is mostly
launch overhead.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from attention_proto import bench, kb
from attention_proto.benchspec import BenchSpec, Context, Question, Row, TableSpec, run_bench
from attention_proto.generators import GENERATORS, LARGE, SHAPES
from attention_proto.msl_stats import METRICS, analyse
from attention_proto.protos import generated_msl as gm
from attention_proto.protos.flash_attention import flash_attention_timed

HAND = "hand-written"
FLOPS = "GEMM 2*M*N*K; attention 4*N*N*D; softmax none counted"


def committed() -> dict[str, dict[str, Any]]:
    """Manifests of the generators with committed sources here."""
    return {g: gm.manifest(g) for g in GENERATORS if (gm.generated_dir() / g / "manifest.json").is_file()}


def hand_source(kernel: str) -> str:
    return (gm.shader_dir() / (gm.HAND_WRITTEN[kernel][0] if gm.HAND_WRITTEN[kernel] else
                               "flash_attention.metal")).read_text()


def static_rows(ctx: Context) -> list[Row]:
    rows = []
    for kernel in SHAPES:
        rows.append({"kernel": kernel, "source": HAND, **analyse(hand_source(kernel))})
        for g, m in committed().items():
            if kernel in m["kernels"]:
                text = (gm.generated_dir() / g / m["kernels"][kernel]["file"]).read_text()
                rows.append({"kernel": kernel, "source": g, **analyse(text)})
    return rows


def numerics(ctx: Context, c: Row) -> Row:
    inputs = gm.random_inputs(c["kernel"], ctx.rng)
    out, _ = gm.run_generated(c["source"], c["kernel"], inputs, backend=ctx.backend)
    ref = gm.reference(c["kernel"], inputs)
    err = np.abs(out.astype(np.float64) - ref)
    return {"unwritten": int(np.isnan(out).sum()), "max_abs_err": float(np.nanmax(err)),
            "rms_ratio": float(np.sqrt(np.nanmean(err ** 2) / np.mean(ref ** 2)))}


class _Summed:
    """The timing of a multi-launch kernel: its launches' times added."""

    def __init__(self, timings: list[Any]):
        self.seconds = sum(float(t.seconds) for t in timings)
        self.wall_seconds = sum(float(t.wall_seconds) for t in timings)


def timed_call(ctx: Context, kernel: str, source: str) -> Callable[[int], Any]:
    inputs = ctx.cached((kernel, "inputs"), lambda: gm.random_inputs(kernel, ctx.rng))
    if source != HAND:
        return lambda r: _Summed(gm.run_generated(source, kernel, inputs, backend=ctx.backend, repeat=r)[1])
    if kernel != "attention":
        return lambda r: _Summed(gm.run_hand_written(kernel, inputs, backend=ctx.backend, repeat=r)[1])
    q, k, v = (inputs[n][None, None] for n in "QKV")
    return lambda r: flash_attention_timed(q, k, v, backend=ctx.backend, repeat=r)[-1]


def flops(kernel: str) -> float:
    s = SHAPES[kernel]
    return (2.0 * s["M"] * s["N"] * s["K"] if kernel.startswith("gemm") else
            4.0 * s["N"] * s["N"] * s["D"] if kernel == "attention" else 0.0)  # derived: FLOPS


def measure(ctx: Context, c: Row) -> Row:
    timing = ctx.time(timed_call(ctx, c["kernel"], c["source"]))
    dtype = "float16" if c["kernel"].startswith("gemm_f16") else "float32"
    return {**ctx.perf(timing, flops(c["kernel"]), dtype), "samples_ms": [1e3 * x for x in timing.gpu.samples]}


def runs_here(ctx: Context, kernel: str) -> bool:
    """The GPU-sized problems (generators.LARGE) run on Metal only: the CPU emulation would take minutes."""
    return kernel not in LARGE or not ctx.is_host


def time_rows(ctx: Context) -> list[Row]:
    return [{"kernel": k, "source": s} for k in SHAPES if runs_here(ctx, k)
            for s in [HAND] + [g for g, m in committed().items() if k in m["kernels"]]]


# ---------------------------------------------------------------------------------------------- findings

def _by(tables: dict[str, bench.Table], name: str) -> dict[tuple[str, str], Row]:
    return {(r["kernel"], r["source"]): r for r in tables[name].rows} if name in tables else {}


def per_generator(ctx: Context, tables: dict[str, bench.Table], g: str, m: dict[str, Any]) -> list[kb.Finding]:
    static, times, num = _by(tables, "static"), _by(tables, "times"), _by(tables, "numerics")
    config = {"generator": g}
    extra = {"version": m["version"]}
    cannot = "; ".join(f"{k}: {why[:300 // max(len(m['unsupported']), 1) - 40]}" for k, why in m["unsupported"].items())
    found = [ctx.finding("expressible", "api", "kernels_expressed", len(m["kernels"]), "kernels", config,
                         f"{g} {m['version']} expresses {', '.join(m['kernels']) or 'none'}"
                         + (f"; cannot: {cannot}" if cannot else ""),
                         {"table": ctx.table_path("generators")}, extra=extra)]
    rows = [static[(k, g)] for k in m["kernels"] if (k, g) in static]
    if rows:
        mma = {r["kernel"]: r["mma"] for r in rows}
        tg = {r["kernel"]: r["threadgroup_bytes"] for r in rows}
        uses = [k for k in ("gemm_f32", "gemm_f16") if mma.get(k)]
        found.append(ctx.finding(
            "matrix_path", "compile", "gemm_kernels_using_simdgroup_matrix", len(uses), "kernels", config,
            f"{g}: simdgroup_matrix MMAs per file {mma}; threadgroup bytes {tg}; function constants "
            f"{sum(r['function_constants'] for r in rows)} (static analysis of the generated MSL)",
            {"table": ctx.table_path("static")}, extra=extra))
        over = []
        for r in rows:
            h = static.get((r["kernel"], HAND))
            if h:
                over.append(f"{r['kernel']} {r['lines']}/{h['lines']}, {r['int_divmod']}/{h['int_divmod']}, "
                            f"{r['bounds_checks']}/{h['bounds_checks']}")
        ratio = float(np.mean([r["lines"] / max(static[(r["kernel"], HAND)]["lines"], 1) for r in rows
                               if (r["kernel"], HAND) in static]))
        found.append(ctx.finding("static_overhead", "compile", "lines_vs_hand_written", ratio, "x", config,
                                 f"{g} against hand-written, lines, integer div/mod and bounds checks as generated/hand: "
                                 + "; ".join(over),
                                 {"table": ctx.table_path("static"), "derived": "mean over kernels of lines ratio"},
                                 extra=extra))
    bad = [f"{k} rms {num[(k, g)].get('rms_ratio', float('nan')):.2g}" for k in m["kernels"] if (k, g) in num]
    if bad:
        worst = max(num[(k, g)].get("rms_ratio", 0.0) for k in m["kernels"] if (k, g) in num)
        where = "the host emulation (IEEE float32 on the CPU)" if ctx.is_host else ctx.device["name"]
        found.append(ctx.finding("numerics", "numerics", "worst_rms_ratio_vs_fp64", worst, "", config,
                                 f"{g}'s kernels against FP64 on {where}: " + ", ".join(bad),
                                 {"table": ctx.table_path("numerics"), "test": "tests/test_generated_msl.py"},
                                 extra=extra))
    speed = {k: times[(k, HAND)]["median_ms"] / times[(k, g)]["median_ms"] for k in m["kernels"]
             if "median_ms" in times.get((k, g), {}) and "median_ms" in times.get((k, HAND), {})}
    if speed:
        gemm = speed.get("gemm_f16_large", speed.get("gemm_f16", speed.get("gemm_f32", min(speed.values()))))
        stats = bench.TimingStats.from_samples([x / 1e3 for x in times[(next(iter(speed)), g)]["samples_ms"]],
                                               "backend").evidence()
        found.append(ctx.finding(
            "speed", "performance", "speed_vs_hand_written", gemm, "x", config,
            f"{g} kernel time relative to hand-written (hand time / generated time, >1 = generated faster) on "
            f"{ctx.device['name']}: " + ", ".join(f"{k} {v:.2g}x" for k, v in speed.items()),
            {**stats, "table": ctx.table_path("times")}, extra=extra))
        mma = {r["kernel"]: r["mma"] for r in rows}
        verdict = "generate" if gemm >= 0.8 and mma.get("gemm_f16") else "hand-write"
        basis = "CPU emulation times, to be re-decided on an M4" if ctx.is_host else ctx.device["name"]
        found.append(ctx.finding(
            "verdict", "ecosystem", "verdict_generate", float(verdict == "generate"), "bool", config,
            f"{g} for the attention trait: {verdict} (rule: GEMM within 0.8x of hand-written and on the 8x8 "
            f"matrix path; basis: {basis}; GEMM {gemm:.2g}x, MMAs {mma.get('gemm_f16', 0)})",
            {"table": ctx.table_path("times"), "derived": "rule stated in the claim"}, extra=extra))
    return found


def findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    return [f for g, m in committed().items() for f in per_generator(ctx, tables, g, m)]


SPEC = BenchSpec(
    proto="generated_msl",
    description="Generated MSL (prototype 5): GEMM, row softmax and attention from CubeCL, Slang, TileLang and "
                "tinygrad, checked against FP64, compared statically with hand-written MSL and timed side by side. "
                "Host-backend times are CPU times of the emulation, never Apple-GPU results.",
    questions=(
        Question("expressible", "Which of GEMM, softmax and attention can each generator express?", ("api",), False),
        Question("matrix_path", "Does each generator's MSL use the 8x8 simdgroup_matrix path and threadgroup memory?",
                 ("compile",), False),
        Question("static_overhead", "How many more lines, integer divisions and bounds checks does each generator "
                 "emit than hand-written MSL?", ("compile",), False),
        Question("numerics", "Do the generated kernels match FP64?", ("numerics",), False),
        Question("speed", "How fast is each generator's kernel relative to hand-written?", ("performance",), True),
        Question("verdict", "Generate or hand-write the attention trait's kernels with this generator?",
                 ("ecosystem",), True),
    ),
    tables=(
        TableSpec("generators", "generators, versions and the kernels they express (shaders/generated/*/manifest.json)",
                  lambda ctx: [{"generator": g, "version": m["version"], "kernels": " ".join(m["kernels"]),
                                "cannot": " ".join(m["unsupported"]) or "-"} for g, m in committed().items()],
                  timed=False),
        TableSpec("static", "static analysis per kernel (attention_proto.msl_stats; "
                  + ", ".join(METRICS) + ")", static_rows, timed=False),
        TableSpec("numerics", "generated kernels against FP64",
                  lambda ctx: [{"kernel": k, "source": g} for g, m in committed().items() for k in m["kernels"]
                               if runs_here(ctx, k)], numerics, timed=False),
        TableSpec("times", f"kernel times at the generated shapes ({FLOPS})", time_rows, measure),
    ),
    findings=findings,
    examples=("--quick", "--backend metal"),
)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench (``attention-proto bench generated_msl``); returns the exit status."""
    return run_bench(SPEC, argv)
