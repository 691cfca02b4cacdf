"""Bench of prototype 4, function constants: what 72 specialised variants of prototype 1's flash kernel
cost to create (cold, warm, from a binary archive; each in a fresh process) by strategy (function
constants, a library per variant, runtime arguments), and what specialisation buys in the kernel.

Variants: every one of the 72 on Metal; on the host backend (whose cold JIT costs seconds per variant)
one per head dim (``--quick``), one per head dim and dtype (default) or all 72 (``--sweep``). Host costs
are the emulator's own (a C++ compile of the translated MSL on the CPU), never Metal's.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from attention_proto import bench, kb
from attention_proto.benchspec import BenchSpec, Context, Plot, Question, Row, TableSpec, run_bench
from attention_proto.protos import function_constants as fc

SHAPES = {"metal": (1, 16, 2048), "metal-quick": (1, 8, 1024), "host": (1, 2, 256), "host-quick": (1, 2, 128)}
EMULATOR = "host-backend emulator costs (a C++ JIT of the translated MSL on the CPU), not Metal: "


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-dims", type=int, nargs="+", default=None, choices=fc.HEAD_DIMS, metavar="D",
                   help="only the variants of these head dims (default: 64 80 96 128)")
    p.add_argument("--dtypes", nargs="+", default=None, choices=fc.DTYPES,
                   help="dtypes of the kernel-time table (default: all; --quick float16)")


def where(ctx: Context) -> str:
    return ("host" if ctx.is_host else "metal") + ("-quick" if ctx.mode == "quick" else "")


def chosen(ctx: Context) -> list[fc.Variant]:
    """The variants measured: all 72 on Metal; on the host the default tiles without the causal mask, one
    per head dim (dtypes taking turns) with ``--quick``, one per head dim and dtype by default, all 72 with
    ``--sweep``."""
    dims = ctx.args.head_dims or fc.HEAD_DIMS
    if not ctx.is_host or ctx.mode == "sweep":
        return [v for v in fc.VARIANTS if v.head_dim in dims]
    plain = [v for v in fc.DEFAULT_VARIANTS if not v.causal and v.head_dim in dims]
    if ctx.mode == "quick":
        return [v for v in plain if v.dtype == fc.DTYPES[fc.HEAD_DIMS.index(v.head_dim) % 3]]
    return plain


def compile_configs(ctx: Context) -> list[Row]:
    return [{"strategy": s, "index": i, "variant": v.name} for s in fc.STRATEGIES for i, v in enumerate(chosen(ctx))]


def ms(phase: dict[str, Any]) -> float:
    """Milliseconds of the stages that ran (library, function, pipeline)."""
    return 1e3 * sum(phase.get(k, 0.0) for k in ("library_s", "function_s", "pipeline_s"))


def compile_batch(ctx: Context, strategy: str) -> dict[str, Row]:
    """Every chosen variant of ``strategy``, in fresh processes: host, cold (empty disk cache) then disk
    hits; Metal, cold (a shader comment no compile has seen), then warm and in-process hits."""
    items = [(v, strategy) for v in chosen(ctx)]
    out: dict[str, Row] = {}
    if ctx.is_host:
        tmp = tempfile.mkdtemp(prefix="aproto-fc-")
        try:
            cold = fc.compile_costs(items, "host", cache_dir=tmp)
            disk = fc.compile_costs(items, "host", cache_dir=tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for c, d in zip(cold, disk):
            out[c["variant"]] = {"cold_ms": ms(c["first"]), "cache": c["first"]["cache"], "disk_ms": ms(d["first"]),
                                 "disk_cache": d["first"]["cache"], "memory_ms": 1e3 * c["memory"]["wall_s"]}
        return out
    for r in fc.compile_costs(items, "metal", note=f"cold {uuid.uuid4()}"):
        f = r["first"]
        out[r["variant"]] = {"cold_ms": ms(f), "library_ms": 1e3 * f["library_s"], "function_ms": 1e3 * f["function_s"],
                             "pipeline_ms": 1e3 * f["pipeline_s"], "cache": f["cache"], "warm_ms": ms(r["warm"]),
                             "memory_ms": 1e3 * r["memory"]["wall_s"]}
    return out


def from_batch(ctx: Context, key: Any, make: Callable[[], dict[str, Row]], variant: str) -> Row:
    """One variant's row of a batch measured once for all its rows (a failed batch fails every row
    without running again)."""
    def guarded() -> dict[str, Row]:
        try:
            return make()
        except Exception as exc:  # reported in each row's error column
            return {"": {"error": f"{type(exc).__name__}: {exc}"}}
    batch = ctx.cached(key, guarded)
    if "" in batch:
        raise RuntimeError(batch[""]["error"])
    return batch[variant]


def measure_compile(ctx: Context, c: Row) -> Row:
    return from_batch(ctx, ("compile", c["strategy"]), lambda: compile_batch(ctx, c["strategy"]), c["variant"])


def archive_batch(ctx: Context) -> dict[str, Row]:
    """The constants strategy's pipelines added to an archive, then created from it in a fresh process."""
    items, folder = [(v, "constants") for v in chosen(ctx)], Path(tempfile.mkdtemp(prefix="aproto-archive-"))
    try:
        path, note = folder / "variants.metallib", f"archive {uuid.uuid4()}"
        added = fc.compile_costs(items, "metal", mode="add", archive=path, note=note)
        size = path.stat().st_size
        loaded = fc.compile_costs(items, "metal", mode="load", archive=path, note=note)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {a["variant"]: {"add_ms": 1e3 * a["add_s"], "load_ms": ms(r["first"]),
                           "load_pipeline_ms": 1e3 * r["first"].get("pipeline_s", 0.0), "cache": r["first"]["cache"],
                           "archive_bytes": size} for a, r in zip(added, loaded)}


def measure_kernel(ctx: Context, c: Row) -> Row:
    b, h, n = SHAPES[where(ctx)]
    q, k, v = ctx.cached((c["D"], c["dtype"]), lambda: tuple(
        ctx.rng.standard_normal((b, h, n, c["D"])).astype(fc._dtype(c["dtype"])) for _ in range(3)))
    out = np.empty_like(q)
    bq, bk = (int(x) for x in c["tile"].split("x"))
    call = lambda r: fc.flash_attention_variant_timed(q, k, v, strategy=c["strategy"], block_q=bq, block_k=bk,
                                                      backend=ctx.backend, out=out, repeat=r)[2]
    timing = ctx.time(call)
    return ctx.perf(timing, bench.attention_flops(b, h, n, n, c["D"]), c["dtype"])


def kernel_configs(ctx: Context) -> list[Row]:
    dtypes = ctx.args.dtypes or (("float16",) if ctx.mode == "quick" else fc.DTYPES)
    tiles = {(v.head_dim, v.dtype): f"{v.block_q}x{v.block_k}" for v in fc.DEFAULT_VARIANTS}
    return [{"D": d, "dtype": t, "tile": tiles[(d, t)], "strategy": s} for d in ctx.args.head_dims or fc.HEAD_DIMS
            for t in dtypes
            for s in fc.STRATEGIES]


def med(rows: list[Row], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def stats(ctx: Context, values_ms: list[float], table: str) -> dict[str, Any]:
    """Evidence: the samples (seconds) with their spread, and the table they come from."""
    return {**bench.TimingStats.from_samples([x / 1e3 for x in values_ms], "backend").evidence(),
            "table": ctx.table_path(table)}


def compile_findings(ctx: Context, by: dict[str, list[Row]], n: int) -> list[kb.Finding]:
    """Cold creation per variant (Metal; the emulator's JIT with its disk and memory hits on the host) and
    the strategies' totals."""
    label, config, cold = EMULATOR if ctx.is_host else "", {"variants": n}, by["constants"]
    total = {s: sum(r["cold_ms"] for r in by[s]) for s in fc.STRATEGIES}
    p80 = float(np.percentile([r["cold_ms"] for r in cold], 80))
    of72 = f"all 72 {total['constants'] * 72 / n / 1e3:.2f} s"
    of72 += f" (derived: the {n} measured x 72 / {n})" if n < 72 else ""
    if ctx.is_host:
        first = ctx.finding(
            "host_compile", "compile", "host_cold_jit_ms", med(cold, "cold_ms"), "ms", config,
            f"{label}cold JIT per variant (empty disk cache, fresh process) median {med(cold, 'cold_ms'):.0f} ms "
            f"(p80 {p80:.0f}), disk-cache hit in a fresh process {med(cold, 'disk_ms'):.1f} ms, in-process hit "
            f"{med(cold, 'memory_ms'):.3f} ms; {of72}", stats(ctx, [r["cold_ms"] for r in cold], "compile"))
    else:
        first = ctx.finding(
            "cold_compile", "compile", "cold_pipeline_ms", med(cold, "cold_ms"), "ms", config,
            f"cold pipeline creation per variant by function constants (a unique comment appended to the shader "
            f"defeats Metal's shader cache; the library compiles once) median {med(cold, 'cold_ms'):.1f} ms (p80 "
            f"{p80:.1f}), {of72}; warm (backend caches cleared: Metal's own cache) median "
            f"{med(cold, 'warm_ms'):.1f} ms",
            stats(ctx, [r["cold_ms"] for r in cold], "compile"))
    return [first, ctx.finding(
        "library_per_variant", "compile", "defines_over_constants_compile", total["defines"] / total["constants"], "x",
        config, f"{label}cold compile of the {n} measured variants: a library per variant (defines) "
        f"{total['defines']:.0f} ms, function constants {total['constants']:.0f} ms, runtime arguments "
        f"{total['runtime']:.0f} ms (one pipeline per dtype)",
        stats(ctx, [r["cold_ms"] for r in by["defines"]], "compile"))]


def archive_finding(ctx: Context, cold: list[Row], arch: list[Row], n: int) -> kb.Finding:
    hits = sum(r["cache"] == "archive" for r in arch)
    speedup = med(cold, "pipeline_ms") / max(med(arch, "load_pipeline_ms"), 1e-9)
    return ctx.finding(
        "archive", "compile", "archive_pipeline_speedup", speedup, "x", {"variants": n},
        f"from a binary archive (fresh process, FailOnBinaryArchiveMiss) {hits} of {len(arch)} pipelines were hits; "
        f"pipeline stage median {med(arch, 'load_pipeline_ms'):.2f} ms vs {med(cold, 'pipeline_ms'):.2f} ms cold "
        f"({speedup:.1f}x); {arch[0]['archive_bytes']} bytes on disk",
        stats(ctx, [r["load_pipeline_ms"] for r in arch], "archive"), extra={"bytes": arch[0]["archive_bytes"]})


def kernel_findings(ctx: Context, kernel: bench.Table, by: dict[str, list[Row]], found: list[kb.Finding],
                    n: int) -> list[kb.Finding]:
    """Runtime arguments over function constants per head dim, and the strategy the numbers pick."""
    perf = {(r["D"], r["dtype"], r["strategy"]): r["median_ms"] for r in kernel.rows if "median_ms" in r}
    ratio = {s: {k[:2]: perf[(*k[:2], s)] / t for k, t in perf.items() if k[2] == "constants" and (*k[:2], s) in perf}
             for s in ("runtime", "defines")}
    if not ratio["runtime"]:
        return []
    runtime, worst = ratio["runtime"], max(ratio["runtime"].values())
    evidence = {"samples": sorted(runtime.values()), "table": ctx.table_path("kernel")}
    out = [ctx.finding(
        "specialisation_speedup", "performance", "runtime_over_constants_time", worst, "x",
        {"shape": list(SHAPES[where(ctx)])}, f"kernel time of runtime arguments / function constants on "
        f"{ctx.device['name']}: " + ", ".join(f"D{d} {t} {x:.2f}x" for (d, t), x in sorted(runtime.items())),
        {**evidence, "derived": "runtime median / constants median per (D, dtype)"})]
    by_defines = float(np.median(list(ratio["defines"].values()) or [1.0]))
    rule = "runtime if max(runtime/constants) <= 1.05, else defines if median(defines/constants) < 0.95, else constants"
    choice = "runtime arguments" if worst <= 1.05 else "a library per variant" if by_defines < 0.95 else \
        "function constants"
    compile_ratio = sum(r["cold_ms"] for r in by["defines"]) / max(sum(r["cold_ms"] for r in by["constants"]), 1e-9)
    archive = "".join(f"; a binary archive creates pipelines {f.value:.1f}x faster" for f in found
                      if f.question == "archive")
    out.append(ctx.finding(
        "recommendation", "api", "runtime_args_worst_slowdown", worst, "x", {"variants": n},
        f"{EMULATOR if ctx.is_host else ''}choose {choice}: runtime arguments take "
        f"{min(runtime.values()):.2f}..{worst:.2f}x the kernel time of function constants, a library per variant "
        f"{by_defines:.2f}x (median) and {compile_ratio:.2f}x the cold compile time{archive}",
        {**evidence, "derived": rule}, extra={"choice": choice}))
    return out


def findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    n = len(chosen(ctx))
    by = {s: [r for r in tables["compile"].rows if r["strategy"] == s and "cold_ms" in r] for s in fc.STRATEGIES}
    if not all(by.values()):
        return []
    found = compile_findings(ctx, by, n)
    arch = [r for r in tables["archive"].rows if "load_ms" in r] if "archive" in tables else []
    found += [archive_finding(ctx, by["constants"], arch, n)] if arch else []
    return found + kernel_findings(ctx, tables["kernel"], by, found, n)


SPEC = BenchSpec(
    proto="function_constants",
    description="Function constants (prototype 4): what 72 specialised variants of prototype 1's flash kernel cost "
                "to create (cold, warm, from a binary archive, each in a fresh process) by strategy (function "
                "constants, a library per variant, runtime arguments), and what specialisation buys in the kernel. "
                "Host-backend costs are the emulator's (CPU), never Metal's.",
    questions=(
        Question("cold_compile", "What does cold pipeline creation cost per variant (median, p80) and for all 72?",
                 ("compile",), True),
        Question("archive", "How much does a binary archive speed up pipeline creation, and how large is it?",
                 ("compile",), True),
        Question("host_compile", "What does the host backend (emulator) pay per variant: cold JIT, a disk-cache hit "
                 "in a fresh process, an in-process hit?", ("compile",), False),
        Question("library_per_variant", "How does a library per variant compare with function constants (and "
                 "runtime arguments) in total compile time?", ("compile",), True),
        Question("specialisation_speedup", "What does specialisation buy in the kernel: runtime arguments vs function "
                 "constants per head dim?", ("performance",), True),
        Question("recommendation", "How should the Attention trait specialise its kernels?", ("api",), True),
    ),
    tables=(
        TableSpec("compile", "compile cost per variant by strategy (fresh processes)", compile_configs,
                  measure_compile, plots=(Plot("line", "index", "cold_ms", series="strategy",
                                               title="cold compile time per variant"),)),
        TableSpec("archive", "binary archive: add, then create from it alone (FailOnBinaryArchiveMiss)",
                  lambda ctx: [] if ctx.is_host else [{"variant": v.name} for v in chosen(ctx)],
                  lambda ctx, c: from_batch(ctx, "archive", lambda: archive_batch(ctx), c["variant"])),
        TableSpec("kernel", "kernel time by strategy (default tile, not causal)", kernel_configs, measure_kernel,
                  plots=(Plot("bar", "D", "median_ms", series="strategy", per=("dtype",)),)),
    ),
    findings=findings,
    options=options,
    examples=("--quick --head-dims 64", "--backend metal"),
)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench (``attention-proto bench function_constants``); returns the exit status."""
    return run_bench(SPEC, argv)
