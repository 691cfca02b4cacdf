"""Bench of prototype 3, PagedAttention decode: the longest context V1 holds in the threadgroup memory,
the V1/V2 crossover over context length and over sequences x heads, the best partition and block size,
the cache layout, what paging costs against a dense decode over the same keys, and the error against FP64.

One query token per sequence, every sequence ``--context`` long, GQA with 4 query heads per kv head.
Sizes depend on the backend: an Apple GPU runs contexts up to 32768; the CPU emulation runs every GPU
thread as a fiber, so host contexts stay small (and every host time is a CPU time, never an M4 result).
"""
from __future__ import annotations

import argparse
import math
from typing import Any

import ml_dtypes
import numpy as np

from attention_proto import bench, kb, reference
from attention_proto.benchspec import BenchSpec, Context, Plot, Question, Row, TableSpec, run_bench
from attention_proto.protos.flash_attention import flash_attention_timed
from attention_proto.protos.paged_attention import (
    BLOCK_SIZES, DEFAULT_PARTITION_SIZE, DTYPES, HEAD_DIMS, LAYOUTS, max_v1_context, paged_attention_timed,
    random_block_tables, threadgroup_bytes, to_vllm_layout,
)

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# contexts: the crossover sweep; context: the fixed-context tables (several V2 partitions, fits V1), and
# 4 x context the partition sweep; batch: (sequences, query heads) of the parallelism sweep; paging: contexts.
SIZES = {
    "metal": {"contexts": tuple(2 ** i for i in range(7, 16)), "context": 4096, "heads": 32,
              "batch": ((1, 1), (1, 8), (1, 32), (4, 32), (16, 32)), "paging": (1024, 4096, 16384)},
    "host": {"contexts": tuple(2 ** i for i in range(6, 14)), "context": 1024, "heads": 4,
             "batch": ((1, 1), (1, 4), (4, 4), (4, 16)), "paging": (256, 1024)},
}
QUICK_CONTEXTS = {"metal": (128, 1024, 8192, 32768), "host": (64, 256, 1024, 4096)}
PARTITIONS = (64, 128, 256, 512, 1024, 2048)
NUMERICS_LENS = (1, 77, 300)  # off the block and partition grids
FORMULA = "4 * (D + 8 + max(scores, 4 * D)) bytes, scores = context rounded up to block_size (V1)"


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-dim", type=int, default=128, choices=HEAD_DIMS, help="head dim (default 128)")
    p.add_argument("--dtype", default="float16", choices=DTYPES, help="dtype of q and the cache (default float16)")
    p.add_argument("--heads", type=int, default=None, help="query heads (default 32 on metal, 4 on host); kv heads "
                   "are a quarter of them (at least 1)")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence of the fixed-context tables "
                   "(default 4096 on metal, 1024 on host; 4x for the partition sweep)")
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="contexts of the V1/V2 crossover sweep")


def sizes(ctx: Context) -> dict[str, Any]:
    s = dict(SIZES["host" if ctx.is_host else "metal"])
    if ctx.mode == "quick":
        s["contexts"] = QUICK_CONTEXTS["host" if ctx.is_host else "metal"]
    a = ctx.args
    s.update({k: v for k, v in (("heads", a.heads), ("context", a.context), ("contexts", a.contexts)) if v is not None})
    if a.context is not None:
        s["paging"] = (a.context,)
    return {**s, "long": 4 * s["context"]}


def inputs(ctx: Context, seqs: int, heads: int, context: int, block_size: int, layout: str) -> tuple[np.ndarray, ...]:
    """q, caches, tables and seq_lens of `seqs` sequences of `context` tokens, blocks in random order."""
    def make() -> tuple[np.ndarray, ...]:
        t, d, kv_heads = NUMPY_DTYPES[ctx.args.dtype], ctx.args.head_dim, max(1, heads // 4)
        lens = np.full(seqs, context, np.int32)
        tables, num_blocks = random_block_tables(ctx.rng, lens, block_size)
        k, v = (ctx.rng.standard_normal((num_blocks, kv_heads, block_size, d), np.float32).astype(t) for _ in range(2))
        if layout == "vllm":
            k, v = to_vllm_layout(k, v)
        return ctx.rng.standard_normal((seqs, heads, d)).astype(t), k, v, tables, lens
    return ctx.cached((seqs, heads, context, block_size, layout), make)


def timed_row(ctx: Context, timing: Any, seqs: int, heads: int, context: int) -> Row:
    """Time columns, and the bandwidth of reading every key and value once (the decode's traffic)."""
    nbytes = 2 * seqs * max(1, heads // 4) * context * ctx.args.head_dim * np.dtype(NUMPY_DTYPES[ctx.args.dtype]).itemsize
    gbps = bench.gbps(nbytes, timing.gpu.median)
    return {"median_ms": 1e3 * timing.gpu.median, "p20_ms": 1e3 * timing.gpu.p20, "p80_ms": 1e3 * timing.gpu.p80,
            "wall_ms": 1e3 * timing.wall.median, "gbps": gbps, "pct_bandwidth": ctx.peaks.percent_of_bandwidth(gbps),
            "samples_ms": [1e3 * x for x in timing.gpu.samples]}


def time_paged(ctx: Context, c: Row) -> Row:
    q, k, v, tables, lens = inputs(ctx, c["seqs"], c["heads"], c["context"], c["block_size"], c["layout"])
    out = np.empty_like(q)
    timing = ctx.time(lambda r: paged_attention_timed(q, k, v, tables, lens, partition_size=c["partition"],
                                                      layout=c["layout"], backend=ctx.backend, out=out, repeat=r)[1])
    return timed_row(ctx, timing, c["seqs"], c["heads"], c["context"])


def dense_decode(ctx: Context, q: np.ndarray, k: np.ndarray, v: np.ndarray, repeat: int) -> Any:
    """The dense baseline over the same keys: prototype 1's decode kernel (``kernel="decode"``) with Nq = 1
    (q ``[S, Hq, 1, D]``, k/v ``[S, Hkv, L, D]``): one pass over contiguous keys split across SIMD-groups,
    a GQA group's heads sharing it."""
    return flash_attention_timed(q[:, :, None], k, v, kernel="decode", backend=ctx.backend, repeat=repeat)[2]


def time_paging(ctx: Context, c: Row) -> Row:
    if c["variant"] == "paged":
        return time_paged(ctx, c)
    q, k_cache, v_cache, tables, lens = inputs(ctx, c["seqs"], c["heads"], c["context"], c["block_size"], "blocked")
    k, v = (np.stack(kv) for kv in zip(*reference.gather_kv(k_cache, v_cache, tables, lens)))
    timing = ctx.time(lambda r: dense_decode(ctx, q, k, v, r))
    return timed_row(ctx, timing, c["seqs"], c["heads"], c["context"])


def config(ctx: Context, **changes: Any) -> Row:
    s = sizes(ctx)
    return {"seqs": 1, "heads": s["heads"], "context": s["context"], "block_size": 16, "layout": "blocked",
            "variant": "V1", "partition": 0, **changes}


def variants(ctx: Context, context: int, block_size: int = 16) -> list[Row]:
    v1 = [{"variant": "V1", "partition": 0}] if context <= max_v1_context(ctx.args.head_dim, ctx.args.dtype,
        block_size=block_size, limit=int(ctx.device["max_threadgroup_memory"])) else []
    return v1 + [{"variant": f"V2 ({DEFAULT_PARTITION_SIZE})", "partition": DEFAULT_PARTITION_SIZE}]


def capacity_rows(ctx: Context) -> list[Row]:
    limit = int(ctx.device["max_threadgroup_memory"])
    rows = []
    for d in HEAD_DIMS:
        for t in DTYPES:
            for bs in BLOCK_SIZES:
                n = max_v1_context(d, t, block_size=bs, limit=limit)
                rows.append({"D": d, "dtype": t, "block_size": bs, "max_v1_context": n,
                             "bytes": threadgroup_bytes(n, d, t, block_size=bs), "limit": limit})
    return rows


def error(ctx: Context, c: Row) -> Row:
    t, d = NUMPY_DTYPES[c["dtype"]], ctx.args.head_dim
    lens = np.array(NUMERICS_LENS, np.int32)
    tables, num_blocks = random_block_tables(ctx.rng, lens, 16)
    k, v = (ctx.rng.standard_normal((num_blocks, 2, 16, d)).astype(t) for _ in range(2))
    q = ctx.rng.standard_normal((len(lens), 8, d)).astype(t)
    out, _ = paged_attention_timed(q, k, v, tables, lens, partition_size=c["partition"], backend=ctx.backend)
    expected = reference.paged_attention(q, k, v, tables, lens)
    diff = np.abs(out.astype(np.float64) - expected)
    return {"rel_error": float(np.linalg.norm(diff) / np.linalg.norm(expected)), "max_abs_error": float(diff.max())}


def ratios(rows: list[Row], by: str, column: str, a: str, b: str) -> dict[Any, float]:
    """Time of the rows with ``column == a`` over those with ``column == b`` (prefix match), per value of ``by``."""
    times: dict[Any, dict[bool, float]] = {}
    for r in rows:
        if str(r[column]).startswith(a) or str(r[column]).startswith(b):
            times.setdefault(r[by], {})[str(r[column]).startswith(a)] = r["median_ms"]
    return {k: t[True] / t[False] for k, t in sorted(times.items()) if len(t) == 2}


def findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    s, on, found = sizes(ctx), f" on {ctx.device['name']}", []
    shape = {"D": ctx.args.head_dim, "dtype": ctx.args.dtype, "heads": s["heads"]}
    rows = {name: [r for r in t.rows if "median_ms" in r] for name, t in tables.items() if t.meta.get("timed")}

    def add(question: str, metric: str, value: float, unit: str, config: dict[str, Any], claim: str, table: str,
            **derived: Any) -> None:
        samples = {f"{r.get('variant')}/{r.get('block_size')}/{r.get('partition')}/{r.get('layout')}/{r.get('context')}"
                   f"/{r.get('seqs')}x{r.get('heads')}": r["samples_ms"] for r in rows.get(table, [])}
        found.append(ctx.finding(question, "performance", metric, value, unit, {**shape, **config}, claim + on,
                                 {"samples_ms": samples, "table": ctx.table_path(table), **derived}))

    def listing(values: dict[Any, float], fmt: str = "{:.2f}x") -> str:
        return ", ".join(f"{k}: {fmt.format(v)}" for k, v in values.items())

    cap = tables["v1_capacity"].rows
    mine = {r["D"]: r for r in cap if r["block_size"] == 16 and r["dtype"] == ctx.args.dtype}
    same = all(len({r["max_v1_context"] for r in cap if (r["D"], r["block_size"]) == (x["D"], x["block_size"])}) == 1
               for x in cap)
    found.append(ctx.finding(
        "v1_capacity", "memory", "max_v1_context", mine[128]["max_v1_context"], "tokens",
        {"limit": mine[128]["limit"], "block_size": 16, "D": 128},
        f"derived from the kernel's layout (not measured): in {mine[128]['limit']} bytes of threadgroup memory V1 holds "
        + ", ".join(f"{r['max_v1_context']} tokens at D={d}" for d, r in mine.items()) + " (blocks of 16; 8 or 32 move "
        "it by under one block), " + ("the same for float32, float16 and bfloat16: scores and q are float32 in "
        "threadgroup memory" if same else "depending on the dtype"),
        {"derived": FORMULA, "table": ctx.table_path("v1_capacity")}))
    if rows.get("crossover"):
        v1_over_v2 = ratios(rows["crossover"], "context", "variant", "V1", "V2")
        cross = next((n for n in v1_over_v2 if all(x > 1 for m, x in v1_over_v2.items() if m >= n)), None)
        add("crossover", "v1_v2_crossover_context", cross or max(v1_over_v2), "tokens", {"seqs": 1},
            (f"V2 (partitions of {DEFAULT_PARTITION_SIZE}) overtakes V1 from {cross} tokens" if cross else
             f"V1 is faster than V2 at every measured context up to {max(v1_over_v2)} tokens (no crossover)")
            + f" (1 sequence; V1 / V2 time per context: {listing(v1_over_v2)})", "crossover",
            v1_over_v2=v1_over_v2, crossed=cross is not None)
    if rows.get("batch"):
        v1_over_v2 = ratios(rows["batch"], "seqs_x_heads", "variant", "V1", "V2")
        even = next((n for n in v1_over_v2 if all(x <= 1 for m, x in v1_over_v2.items() if m >= n)), None)
        add("batch_crossover", "v1_catches_up_at", even or max(v1_over_v2), "sequences x heads", {"context": s["context"]},
            f"at {s['context']} tokens V1 is " + (f"as fast as V2 or faster from {even} sequences x heads" if even else
            f"slower than V2 up to {max(v1_over_v2)} sequences x heads (no crossover)")
            + f" (V1 / V2 time per sequences x heads: {listing(v1_over_v2)})", "batch",
            v1_over_v2=v1_over_v2, crossed=even is not None)
    for question, table, column, unit in (("best_partition", "partitions", "partition", "tokens"),
                                          ("best_block_size", "block_sizes", "block_size", "tokens")):
        if rows.get(table):  # summed over the variants the table ran
            totals = {k: sum(r["median_ms"] for r in rows[table] if r[column] == k) for k in {r[column] for r in rows[table]}}
            best = min(totals, key=totals.get)
            add(question, f"best_{column}", best, unit, {"context": rows[table][0]["context"]},
                f"{column.replace('_', ' ')} {best} is fastest at {rows[table][0]['context']} tokens (median ms, summed "
                f"over {' and '.join(sorted({r['variant'] for r in rows[table]}))}: "
                f"{listing(dict(sorted(totals.items())), '{:.3g}')})", table)
    if rows.get("layouts"):
        vllm_over_blocked = ratios(rows["layouts"], "variant", "layout", "vllm", "blocked")
        mean = math.prod(vllm_over_blocked.values()) ** (1 / len(vllm_over_blocked))
        add("layout", "vllm_over_blocked_time", mean, "x", {"context": s["context"]},
            f"vLLM's cache layout takes {mean:.2f}x the time of the blocked one (geometric mean; "
            f"{listing(vllm_over_blocked)}) at {s['context']} tokens: " + ("prefer the blocked layout" if mean > 1.05 else
            "prefer vLLM's" if mean < 0.95 else "neither wins by more than 5%"), "layouts")
    paged_over_dense = ratios(rows.get("paging", []), "context", "variant", "paged", "dense")
    if paged_over_dense:
        last = max(paged_over_dense)
        add("paging_overhead", "paged_over_dense_time", paged_over_dense[last], "x", {"seqs": 4, "context": last},
            f"paged decode takes {paged_over_dense[last]:.2f}x the time of the dense baseline over the same keys at "
            f"{last} tokens ({listing(paged_over_dense)}); the baseline is prototype 1's decode kernel "
            "(kernel='decode', Nq = 1) over contiguous keys", "paging", paged_over_dense=paged_over_dense)
    errors = [r for r in tables["numerics"].rows if "rel_error" in r]
    if errors:
        per = {t: max(r["rel_error"] for r in errors if r["dtype"] == t) for t in DTYPES if any(r["dtype"] == t for r in errors)}
        where = "host emulation (IEEE float32 arithmetic on the CPU)" if ctx.is_host else ctx.device["name"]
        found.append(ctx.finding(
            "error", "numerics", "rel_error_vs_fp64", max(per.values()), "", {"D": ctx.args.head_dim, "lens": list(NUMERICS_LENS)},
            f"paged attention V1 and V2 (float32 arithmetic) are within {listing(per, '{:.2g}')} relative error (Frobenius) "
            f"of the FP64 reference on shuffled tables, measured on {where}",
            {"samples": [r["rel_error"] for r in errors], "test": "tests/test_paged_attention.py",
             "table": ctx.table_path("numerics")}))
    return found


def sweep(ctx: Context, name: str) -> list[Row]:
    s = sizes(ctx)
    if name == "crossover":
        return [config(ctx, context=n, **v) for n in s["contexts"] for v in variants(ctx, n)]
    if name == "batch":
        return [config(ctx, seqs=n, heads=h, seqs_x_heads=n * h, **v) for n, h in s["batch"] for v in variants(ctx, s["context"])]
    if name == "partitions":
        return [config(ctx, context=s["long"], variant="V2", partition=p) for p in PARTITIONS if p <= s["long"]]
    if name == "block_sizes":
        return [config(ctx, block_size=bs, **v) for bs in BLOCK_SIZES for v in variants(ctx, s["context"], bs)]
    if name == "layouts":
        return [config(ctx, layout=layout, **v) for layout in LAYOUTS for v in variants(ctx, s["context"])]
    # paged: the variant partition_size=None picks (choose_partition_size)
    return [config(ctx, seqs=4, context=n, variant=kind, partition=None) for n in s["paging"] for kind in ("paged", "dense")]


def table(name: str, title: str, measure: Any = time_paged, **kwargs: Any) -> TableSpec:
    return TableSpec(name, title, lambda ctx: sweep(ctx, name), measure, **kwargs)


SPEC = BenchSpec(
    proto="paged_attention",
    description="PagedAttention decode (prototype 3): the longest context V1 holds in the threadgroup memory, "
                "where V2 overtakes V1 (over context length and over sequences x heads), the best partition and block "
                "size, the cache layout, what paging costs against a dense decode over the same keys, and the error "
                "against FP64. Host-backend times are CPU times of the emulation, never Apple-GPU results.",
    questions=(
        Question("v1_capacity", "What is the longest context V1 holds in the threadgroup memory, per head dim and "
                 "dtype?", ("memory",), False),
        Question("crossover", "From which context length does V2 beat V1 (one sequence)?", ("performance",), True),
        Question("batch_crossover", "From how many sequences x heads does V1 catch up with V2 at a multi-partition "
                 "context?", ("performance",), True),
        Question("best_partition", "Which V2 partition size is fastest on a long context?", ("performance",), True),
        Question("best_block_size", "Which cache block size is fastest?", ("performance",), True),
        Question("layout", "Which cache layout is faster, the blocked one or vLLM's?", ("performance",), True),
        Question("paging_overhead", "What does the block-table indirection cost against a dense decode over the same "
                 "keys?", ("performance",), True),
        Question("error", "How far are V1 and V2 from the FP64 reference, per dtype?", ("numerics",), False),
    ),
    tables=(
        TableSpec("v1_capacity", f"longest V1 context per head dim, dtype and block size, {FORMULA}", capacity_rows,
                  timed=False),
        table("crossover", "V1 vs V2 over the context (1 sequence)",
              plots=(Plot("line", "context", "median_ms", series="variant", logx=True, title="V1 / V2 crossover"),)),
        table("batch", "V1 vs V2 over sequences x heads"),
        table("partitions", "V2 partition sizes on a long context"),
        table("block_sizes", "cache block sizes"),
        table("layouts", "cache layouts: blocked vs vLLM's"),
        table("paging", "paged decode vs the dense baseline over the same keys", time_paging),
        TableSpec("numerics", f"error vs FP64 (seq_lens {NUMERICS_LENS}, 8 / 2 heads)",
                  lambda ctx: [{"dtype": t, "partition": p} for t in DTYPES for p in (0, 64)], error, timed=False),
    ),
    findings=findings,
    options=options,
    examples=("--quick", "--quick --head-dim 64 --context 256 --contexts 64 256", "--backend metal"),
)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench (``attention-proto bench paged_attention``); returns the exit status."""
    return run_bench(SPEC, argv)
