"""Bench of prototype 6, linear attention (FLA's chunk_h / chunk_o): chunk sizes per head dim and dtype,
threadgroup memory of each chunk configuration against the limit, chunked against recurrent and against
prototype 1's softmax flash attention over T, and the error against FP64 over T and decay.

``--quick``: K = V in {64, 128}, float16, small T; default: K = V in {32, 64, 128}, every dtype; ``--sweep``
adds K = V = 60 and 100 (padded inside the kernels) and T = 4096 for the error. Linear attention uses
FLA's layout [B, T, H, D], flash attention [B, H, T, D] with the causal mask, at the same B, H, D = K = V
and dtype. On the host backend every time is the CPU time of the emulation, never an Apple-GPU result.
"""
from __future__ import annotations

import argparse
from typing import Any

import ml_dtypes
import numpy as np

from attention_proto import bench, kb, reference
from attention_proto.benchspec import BenchSpec, Context, Plot, Question, Row, TableSpec, best_rows, run_bench
from attention_proto.protos.flash_attention import HEAD_DIMS as FLASH_HEAD_DIMS
from attention_proto.protos.flash_attention import flash_attention_timed
from attention_proto.protos.linear_attention import (
    BLOCK_K, BLOCK_V, CHUNK_SIZES, DTYPES, linear_attention_timed, threadgroup_bytes,
)

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# (B, H, T of the chunk sweep): an Apple GPU needs many threadgroups; the emulation runs each 8x8 MMA once
# per lane (32x the work), so host shapes stay small.
SHAPES = {"metal": (2, 16, 4096), "metal-quick": (1, 8, 2048), "host": (1, 2, 256), "host-quick": (1, 2, 256)}
SEQS = {"metal": (256, 512, 1024, 2048, 4096, 8192, 16384), "metal-quick": (256, 512, 1024, 2048, 4096, 8192),
        "host": (64, 128, 256, 512, 1024, 2048), "host-quick": (64, 128, 256, 512, 1024, 2048)}
NUMERICS_SEQS = {"quick": (64, 1024), "default": (64, 256, 1024), "sweep": (64, 256, 1024, 4096)}  # B = H = 1
GATES = (None, 10.0, 1.0, 0.1)  # g = logsigmoid(x) / gate, x ~ N(0, 1) (FLA's tests): None = no decay
KERNELS = ("linear_chunk", "linear_recurrent", "flash_causal")
FLOPS = "B*H*T*(4*K*V + chunk*(K+V)) chunked (K^T V, q h, causal q k^T, A v); B*H*T*4*K*V recurrent"
MEMORY = "chunk_h chunk*(ROW(bk)+ROW(bv)+8), chunk_o chunk*(2 ROW(bk)+ROW(bv)+8)+bk*(4 bv+16), ROW(n)=n*itemsize+16"


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dims", type=int, nargs="+", default=None, metavar="D",
                   help="head dims K = V (default: 32 64 128; --quick 64 128; --sweep adds 60 100)")
    p.add_argument("--dtypes", nargs="+", default=None, choices=DTYPES, help="dtypes (default: all; --quick float16)")
    p.add_argument("--seq", type=int, default=None, help="T of the chunk-size sweep (default: 4096 metal, --quick "
                   "2048; 256 host)")
    p.add_argument("--heads", type=int, default=None, help="heads H (default: 16 metal, --quick 8; 2 host)")
    p.add_argument("--seqs", type=int, nargs="+", default=None, metavar="T",
                   help="T of chunked vs recurrent vs flash attention (default: 256..16384 metal, --quick 256..8192; "
                   "64..2048 host)")


def where(ctx: Context) -> str:
    return ("host" if ctx.is_host else "metal") + ("-quick" if ctx.mode == "quick" else "")


def shape(ctx: Context) -> tuple[int, int, int]:
    b, h, t = SHAPES[where(ctx)]
    return b, ctx.args.heads or h, ctx.args.seq or t


def grid(ctx: Context) -> tuple[tuple[int, ...], tuple[str, ...]]:
    quick, sweep = ctx.mode == "quick", ctx.mode == "sweep"
    dims = ctx.args.dims or ((64, 128) if quick else (32, 60, 64, 100, 128) if sweep else (32, 64, 128))
    return tuple(dims), tuple(ctx.args.dtypes or (("float16",) if quick else DTYPES))


def inputs(ctx: Context, layout: str, b: int, t: int, h: int, d: int, dtype: str, gate: float | None) -> Any:
    def make() -> tuple[Any, ...]:
        dims = (b, h, t, d) if layout == "flash" else (b, t, h, d)
        q, k, v = (ctx.rng.standard_normal(dims).astype(NUMPY_DTYPES[dtype]) for _ in range(3))
        x = ctx.rng.standard_normal((b, t, h))
        return q, k, v, None if gate is None else (-np.logaddexp(0.0, -x) / gate).astype(np.float32)
    return ctx.cached((layout, b, t, h, d, dtype, gate), make)


def measure(ctx: Context, c: Row) -> Row:
    """Times one kernel (``c["kernel"]``, default the chunked form) at T = ``c["T"]`` (default: --seq)."""
    b, h, t = shape(ctx)
    t, kernel, chunk, d = c.get("T", t), c.get("kernel", "linear_chunk"), c["chunk"], c["D"]
    q, k, v, g = inputs(ctx, "flash" if kernel == "flash_causal" else "linear", b, t, h, d, c["dtype"], 1.0)
    out = np.empty_like(v)
    if kernel == "flash_causal":
        call = lambda r: flash_attention_timed(q, k, v, causal=True, backend=ctx.backend, out=out, repeat=r)[2]
        flops: float = bench.attention_flops(b, h, t, t, d, causal=True)
    else:
        mode = kernel[len("linear_"):]
        call = lambda r: linear_attention_timed(q, k, v, g, chunk_size=chunk, mode=mode, backend=ctx.backend,
                                                out=out, repeat=r)[2]
        flops = b * h * t * (4.0 * d * d + (2 * d * chunk if mode == "chunk" else 0))  # derived: FLOPS
    timing = ctx.time(call)
    return {**ctx.perf(timing, flops, c["dtype"]), "calls_per_s": 1.0 / timing.gpu.median,
            "samples_ms": [1e3 * x for x in timing.gpu.samples]}


def seq_configs(ctx: Context) -> list[Row]:
    """The comparison over T at one head dim (64 when swept, else the first) and the first dtype, with the
    chunk size the sweep found fastest there; flash attention only at its own head dims."""
    dims, dtypes = grid(ctx)
    d, dtype = (64 if 64 in dims else dims[0]), dtypes[0]
    found = ctx.tables["best_chunks"].rows if "best_chunks" in ctx.tables else []  # none yet when only counting
    best = [r["chunk"] for r in found if r["D"] == d and r["dtype"] == dtype]
    return [{"kernel": kernel, "D": d, "dtype": dtype, "T": t, "chunk": (best or [64])[0]}
            for t in ctx.args.seqs or SEQS[where(ctx)] for kernel in KERNELS
            if kernel != "flash_causal" or d in FLASH_HEAD_DIMS]


def error(ctx: Context, c: Row) -> Row:
    q, k, v, g = inputs(ctx, "linear", 1, c["T"], 1, c["D"], c["dtype"], c["gate"])
    o, _, _ = linear_attention_timed(q, k, v, g, chunk_size=64, backend=ctx.backend)
    r, _ = reference.linear_attention(q, k, v, g)
    rms, err = float(np.sqrt(np.mean(r ** 2))), np.abs(o.astype(np.float64) - r)
    return {"rms_ratio": float(np.sqrt(np.mean(err ** 2))) / rms, "max_err_over_rms": float(err.max()) / rms}


def memory_rows(ctx: Context) -> list[Row]:
    limit = int(ctx.device["max_threadgroup_memory"])
    rows = [{"dtype": t, "D": d, "blocks": blocks, "chunk": c,
             **threadgroup_bytes(d, d, t, chunk_size=c, **({} if blocks == "32x32" else {"block_k": d, "block_v": d}))}
            for t in DTYPES for d in (32, 64, 128) for blocks in ("32x32", "whole head") for c in CHUNK_SIZES]
    return [{**r, "fits": max(r["chunk_h"], r["chunk_o"]) <= limit} for r in rows]


def largest_fitting(rows: list[Row], dtype: str, d: int, blocks: str) -> int | str:
    fits = [r["chunk"] for r in rows if (r["dtype"], r["D"], r["blocks"]) == (dtype, d, blocks) and r["fits"]]
    return max(fits) if fits else "none"


def stats(row: Row, ctx: Context, table: str) -> dict[str, Any]:
    return {**bench.TimingStats.from_samples([x / 1e3 for x in row["samples_ms"]], "backend").evidence(),
            "table": ctx.table_path(table)}


def best_chunk(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    (b, h, t), best = shape(ctx), tables["best_chunks"].rows if "best_chunks" in tables else []
    if not best:
        return []
    top = max(best, key=lambda r: (r["D"], r["dtype"] == "float16"))
    per_dtype = [dt + " " + " ".join(f"D{r['D']}:{r['chunk']}" for r in best if r["dtype"] == dt)
                 for dt in DTYPES if any(r["dtype"] == dt for r in best)]
    return [ctx.finding("best_chunk", "performance", "best_chunk_size", top["chunk"], "steps", {"B": b, "H": h, "T": t},
                        f"fastest chunk size on {ctx.device['name']} (B={b}, H={h}, T={t}, K = V = D): "
                        + "; ".join(per_dtype), stats(top, ctx, "chunk_sizes"),
                        extra={"D": top["D"], "dtype": top["dtype"]})]


def chunk_fit(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    mem, limit = tables["memory"].rows, int(ctx.device["max_threadgroup_memory"])
    blocked = {dt: largest_fitting(mem, dt, 128, "32x32") for dt in DTYPES}
    whole = [f"{largest_fitting(mem, dt, 64, 'whole head')} at D=64, {largest_fitting(mem, dt, 128, 'whole head')} "
             f"at 128 ({dt})" for dt in DTYPES]
    return [ctx.finding(
        "chunk_fit", "memory", "largest_fitting_chunk", min(c if isinstance(c, int) else 0 for c in blocked.values()),
        "steps", {"limit": limit, "blocks": f"{BLOCK_K}x{BLOCK_V}", "D": 128},
        f"derived from the layouts (not measured): the largest chunk whose kernels fit {limit} bytes with "
        f"{BLOCK_K}x{BLOCK_V} state blocks at K = V = 128 is " + ", ".join(f"{c} ({dt})" for dt, c in blocked.items())
        + "; unblocked (block = K = V): " + ", ".join(whole), {"table": ctx.table_path("memory"), "derived": MEMORY})]


def over_seq(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    rows = tables["over_seq"].rows if "over_seq" in tables else []
    ms = {(r["kernel"], r["T"]): r for r in rows if "median_ms" in r}
    if not rows:
        return []
    (b, h, _), c0, found = shape(ctx), rows[0], []
    setup = f"{ctx.device['name']} (B={b}, H={h}, D={c0['D']}, {c0['dtype']}, chunk {c0['chunk']})"
    config = {"B": b, "H": h, "D": c0["D"], "dtype": c0["dtype"]}  # the chunk (the measured best) stays out of the id

    def ratio(kernel: str, t: int) -> float:  # how many times the chunked form's time
        return ms[(kernel, t)]["median_ms"] / ms[("linear_chunk", t)]["median_ms"]

    for kernel, question in (("linear_recurrent", "chunk_vs_recurrent"), ("flash_causal", "crossover")):
        ts = sorted(t for k, t in ms if k == kernel and ("linear_chunk", t) in ms)
        if not ts:
            continue
        ratios = ", ".join(f"T={t} {ratio(kernel, t):.2g}x" for t in ts)
        if kernel == "linear_recurrent":
            found.append(ctx.finding(question, "performance", "chunk_speedup_over_recurrent", ratio(kernel, ts[-1]),
                                     "x", config, f"chunked over recurrent linear attention on {setup}: {ratios}",
                                     stats(ms[("linear_chunk", ts[-1])], ctx, "over_seq"),
                                     extra={"chunk": c0["chunk"]}))
            continue
        first = next((t for t in ts if all(ratio(kernel, u) > 1 for u in ts if u >= t)), None)  # and stays faster
        verdict = f"is faster than causal softmax flash attention from T={first}" if first else (
            f"is not faster than causal softmax flash attention up to T={ts[-1]}")
        found.append(ctx.finding(question, "performance", "crossover_seq_len", first or ts[-1], "steps", config,
                                 f"chunked linear attention {verdict} on {setup}; flash / linear time: {ratios}",
                                 stats(ms[("linear_chunk", first or ts[-1])], ctx, "over_seq"),
                                 extra={"crossed": first is not None, "chunk": c0["chunk"]}))
    return found


def error_growth(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    rows = [r for r in tables["numerics"].rows if "rms_ratio" in r]
    if not rows:
        return []
    parts = []
    for dt in [dt for dt in DTYPES if any(r["dtype"] == dt for r in rows)]:
        mine = [r for r in rows if r["dtype"] == dt]
        spans = [[r["rms_ratio"] for r in mine if r["T"] == t] for t in (mine[0]["T"], mine[-1]["T"])]
        parts.append(f"{dt} " + ", ".join(f"{min(e):.2g}..{max(e):.2g} at T={t}"
                                          for e, t in zip(spans, (mine[0]["T"], mine[-1]["T"]))))
    worst = max(rows, key=lambda r: r["rms_ratio"])
    measured_on = "the host emulation (IEEE float32 on the CPU)" if ctx.is_host else ctx.device["name"]
    return [ctx.finding(
        "error_growth", "numerics", "rms_error_ratio_vs_fp64", worst["rms_ratio"], "", {"D": worst["D"], "chunk": 64},
        f"chunked linear attention vs the FP64 recurrence, RMS error / RMS reference over decay gates None, 10, 1, "
        f"0.1: " + "; ".join(parts) + f", on {measured_on}",
        {"samples": [r["rms_ratio"] for r in rows], "test": "tests/test_linear_attention.py",
         "table": ctx.table_path("numerics")})]


def findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    return [f for answer in (best_chunk, chunk_fit, over_seq, error_growth) for f in answer(ctx, tables)]


SPEC = BenchSpec(
    proto="linear_attention",
    description="Linear attention (prototype 6, FLA's chunk_h / chunk_o on Metal): the fastest chunk size per head dim "
                "and dtype, which chunk configurations fit the threadgroup memory, chunked against recurrent, the "
                "sequence length from which it beats softmax flash attention (prototype 1), and the error against FP64 "
                "over sequence length and decay. Host-backend times are CPU times of the emulation, never Apple-GPU "
                "results.",
    questions=(
        Question("best_chunk", "Which chunk size (16, 32, 64) is fastest for each head dim and dtype?",
                 ("performance",), True),
        Question("chunk_fit", "Which chunk sizes fit the 32 KB threadgroup memory, per dtype, with and without "
                 "K/V blocking?", ("memory",), False),
        Question("chunk_vs_recurrent", "How much faster is the chunked form than the step-by-step recurrence, over T?",
                 ("performance",), True),
        Question("crossover", "From which sequence length is linear attention faster than softmax flash attention at "
                 "the same B, H, D?", ("performance",), True),
        Question("error_growth", "How does the error against FP64 grow with sequence length and decay strength?",
                 ("numerics",), False),
    ),
    tables=(
        TableSpec("chunk_sizes", "linear attention, chunk-size sweep",
                  lambda ctx: [{"D": d, "dtype": t, "chunk": c} for d in grid(ctx)[0] for t in grid(ctx)[1]
                               for c in CHUNK_SIZES], measure,
                  plots=(Plot("bar", "chunk", "median_ms", series="dtype", per=("D",)),)),
        TableSpec("best_chunks", "fastest chunk size per head dim and dtype",
                  lambda ctx: best_rows(ctx.tables["chunk_sizes"], ("D", "dtype"), "calls_per_s")),
        TableSpec("memory", f"threadgroup memory per chunk configuration, {MEMORY}", memory_rows, timed=False),
        TableSpec("over_seq", "linear vs causal flash attention over T", seq_configs,
                  measure, plots=(Plot("line", "T", "median_ms", series="kernel", logx=True),)),
        TableSpec("numerics", "chunked error vs the FP64 recurrence (B = H = 1, chunk 64)",
                  lambda ctx: [{"D": grid(ctx)[0][-1], "dtype": dt, "T": tt, "gate": gate} for dt in ctx.args.dtypes or
                               DTYPES for tt in NUMERICS_SEQS[ctx.mode] for gate in GATES], error, timed=False),
    ),
    findings=findings,
    options=options,
    examples=("--quick", "--quick --dims 64 --seq 128 --seqs 64 256 1024", "--backend metal"),
)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench (``attention-proto bench linear_attention``); returns the exit status."""
    return run_bench(SPEC, argv)
