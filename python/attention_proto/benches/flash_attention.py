"""Bench of prototype 1, flash attention forward: tiles, TFLOP/s against the peak and peers, error
against FP64, threadgroup memory per tile.

``--quick``: a small tile sweep (D 64 and 128, float16, tiles from {16, 32, 64} in the default layout,
and the anchors' and default tiles in QUICK_LAYOUTS) and the default tiles; default: the default tiles of
every head dim and dtype, with MLX / PyTorch SDPA side by side (wall clock against wall clock) when
installed; ``--sweep``: every layout x every (block_q, block_k) from BLOCK_SIZES that fits it, per head
dim and dtype, with a heatmap each (the best layout per tile). The anchors' tiles (MLX's and MFA's, see
ANCHORS) are always candidates. On the host backend every time is the CPU time of the emulation.
"""
from __future__ import annotations

import argparse
from typing import Any

import ml_dtypes
import numpy as np

from attention_proto import bench, kb, reference
from attention_proto.benchspec import BenchSpec, Context, Plot, Question, Row, TableSpec, best_rows, run_bench
from attention_proto.protos.flash_attention import (
    BLOCK_SIZES, DEFAULT_LAYOUT, DEFAULT_TILES, DTYPES, HEAD_DIMS, LAYOUTS, fitting_tiles, flash_attention_timed,
    pipeline_info, threadgroup_bytes,
)

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# (B, H, N): an Apple GPU needs a large grid to fill its cores; the CPU emulation runs every 8x8 MMA
# once per lane (32x the work), so host shapes stay small.
SHAPES = {"metal": (1, 16, 4096), "host": (1, 2, 256)}
QUICK_SHAPES = {"metal": (1, 8, 1024), "host": (1, 2, 128)}
NUMERICS_SHAPE = (1, 2, 257)  # off the tile grid; small enough for the float64 reference
QUICK_BLOCKS = (16, 32, 64)
QUICK_LAYOUTS = ("separate", "aliased", "aliased_sized")  # round 1, MLX's one K/V tile, every per-element switch
FORMULA = ("(block_q + kv) * (D*itemsize + 16) bytes, kv = 2*block_k (separate) or block_k (one K/V tile); "
           "q_regs: max(block_q, kv) rows")


def anchors(head_dim: int, dtype: str) -> dict[str, tuple[int, int]]:
    """The anchors' (block_q, block_k) for a head dim and dtype. MLX (mlx/backend/metal/
    scaled_dot_product_attention.cpp): bq = 32, bk = 32 for D < 128, else 16. metal-flash-attention on
    Apple9 (AttentionDescriptor+Parameters.swift, forward): 16 x 128 for FP16 (here also bfloat16); FP32
    16 x 32 up to D = 48, 16 x 64 up to 192, 16 x 128 beyond."""
    mfa_k = 128 if dtype != "float32" else 32 if head_dim <= 48 else 64 if head_dim <= 192 else 128
    return {"mlx": (32, 32 if head_dim < 128 else 16), "mfa": (16, mfa_k)}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--causal", action="store_true", help="use the causal mask (default: none)")
    p.add_argument("--seq", type=int, default=None, help="sequence length N = Nq = Nk (default: 4096 on metal, "
                   "256 on host; --quick 1024 / 128)")
    p.add_argument("--heads", type=int, default=None, help="query heads (default: 16 on metal, 2 on host)")
    p.add_argument("--head-dims", type=int, nargs="+", default=None, metavar="D", choices=HEAD_DIMS,
                   help=f"head dims to run (default: all of {', '.join(map(str, HEAD_DIMS))}; --quick 64 128)")
    p.add_argument("--dtypes", nargs="+", default=None, choices=DTYPES, help="dtypes (default: all; --quick float16)")
    p.add_argument("--no-peers", action="store_true", help="skip MLX / PyTorch SDPA")


def shape(ctx: Context) -> dict[str, Any]:
    b, h, n = (QUICK_SHAPES if ctx.mode == "quick" else SHAPES)["host" if ctx.is_host else "metal"]
    return {"B": b, "H": ctx.args.heads or h, "N": ctx.args.seq or n, "causal": bool(ctx.args.causal)}


def grid(ctx: Context) -> tuple[tuple[int, ...], tuple[str, ...]]:
    quick = ctx.mode == "quick"
    return (tuple(ctx.args.head_dims or ((64, 128) if quick else HEAD_DIMS)),
            tuple(ctx.args.dtypes or (("float16",) if quick else DTYPES)))


def inputs(ctx: Context, head_dim: int, dtype: str, s: dict[str, Any]) -> tuple[np.ndarray, ...]:
    return ctx.cached((head_dim, dtype, s["H"], s["N"]), lambda: tuple(
        ctx.rng.standard_normal((s["B"], s["H"], s["N"], head_dim)).astype(NUMPY_DTYPES[dtype]) for _ in range(3)))


def time_tile(ctx: Context, c: Row) -> Row:
    s = shape(ctx)
    q, k, v = inputs(ctx, c["D"], c["dtype"], s)
    out = np.empty_like(q)
    layout = c.get("layout")
    timing = ctx.time(lambda r: flash_attention_timed(q, k, v, causal=s["causal"], block_q=c["block_q"],
                                                      block_k=c["block_k"], backend=ctx.backend, out=out, repeat=r,
                                                      layout=layout)[2])
    flops = bench.attention_flops(s["B"], s["H"], s["N"], s["N"], c["D"], s["causal"])
    pipeline = pipeline_info(c["D"], c["dtype"], block_q=c["block_q"], block_k=c["block_k"], causal=s["causal"],
                             backend=ctx.backend, layout=layout)
    # Register-pressure signals: Metal lowers maxTotalThreadsPerThreadgroup when a pipeline needs many
    # registers, and staticThreadgroupMemoryLength counts spills into threadgroup memory.
    row = {"threadgroup_bytes": threadgroup_bytes(c["block_q"], c["block_k"], c["D"], c["dtype"], layout),
           "max_threads": pipeline.max_total_threads_per_threadgroup,
           "static_tg_bytes": pipeline.static_threadgroup_memory, **ctx.perf(timing, flops, c["dtype"])}
    row["samples_ms"] = [1e3 * x for x in timing.gpu.samples]
    if c.get("peers") and not ctx.args.no_peers:
        for name, peer in bench.run_peers(q, k, v, causal=s["causal"], repeat=ctx.samples).items():
            row[f"{name}_wall_ms"] = 1e3 * peer.stats.median
            row[f"{name}_device"] = peer.device
            row[f"speedup_vs_{name}"] = peer.stats.median / timing.wall.median  # wall against wall
    return row


def tile_configs(ctx: Context) -> list[Row]:
    """Layout x tile: every fitting tile of BLOCK_SIZES in every layout (--sweep), or QUICK_BLOCKS in the
    default layout (--quick); plus, in each layout swept, the anchors' and the default tile where they fit."""
    if ctx.mode == "default":
        return []
    dims, dtypes = grid(ctx)
    limit = int(ctx.device["max_threadgroup_memory"])
    rows = []
    for d in dims:
        for t in dtypes:
            named = {**anchors(d, t), "default": DEFAULT_TILES[(d, t)]}
            for layout in (LAYOUTS if ctx.mode == "sweep" else QUICK_LAYOUTS):
                fits = fitting_tiles(d, t, limit, BLOCK_SIZES, layout)
                swept = fits if ctx.mode == "sweep" else fitting_tiles(d, t, limit, QUICK_BLOCKS, layout) \
                    if layout == DEFAULT_LAYOUT else []
                tiles = list(dict.fromkeys(swept + [tile for tile in named.values() if tile in fits]))
                rows += [{"D": d, "dtype": t, "layout": layout, "block_q": bq, "block_k": bk,
                          "anchor": ",".join(n for n, tile in named.items() if tile == (bq, bk))} for bq, bk in tiles]
    return rows


def baseline_configs(ctx: Context) -> list[Row]:
    dims, dtypes = grid(ctx)
    return [] if ctx.mode == "sweep" else [
        {"D": d, "dtype": t, "layout": DEFAULT_LAYOUT, "block_q": DEFAULT_TILES[(d, t)][0],
         "block_k": DEFAULT_TILES[(d, t)][1], "peers": True}
        for d in dims for t in dtypes]


def error(ctx: Context, c: Row) -> Row:
    b, h, n = NUMERICS_SHAPE
    q, k, v = (ctx.rng.standard_normal((b, h, n, c["D"])).astype(NUMPY_DTYPES[c["dtype"]]) for _ in range(3))
    out, _, _ = flash_attention_timed(q, k, v, causal=bool(ctx.args.causal), backend=ctx.backend, layout=c["layout"])
    expected = reference.attention(q, k, v, causal=bool(ctx.args.causal))
    diff = np.abs(out.astype(np.float64) - expected)
    return {"rel_error": float(np.linalg.norm(diff) / np.linalg.norm(expected)), "max_abs_error": float(diff.max())}


def memory_rows(ctx: Context) -> list[Row]:
    limit = int(ctx.device["max_threadgroup_memory"])
    rows = []
    for d in HEAD_DIMS:
        for t in DTYPES:
            for layout in dict.fromkeys((DEFAULT_LAYOUT, "aliased", "regs_q")):  # the three memory formulas
                fits = fitting_tiles(d, t, limit, layout=layout)
                largest = max(fits, key=lambda tile: (tile[0] * tile[1], tile[0]), default=None)
                rows.append({"D": d, "dtype": t, "layout": layout, "fitting": len(fits), "of": len(BLOCK_SIZES) ** 2,
                             "largest_tile": "{}x{}".format(*largest) if largest else "",
                             "largest_bytes": threadgroup_bytes(*largest, d, t, layout) if largest else None,
                             "mfa_fits": anchors(d, t)["mfa"] in fits,
                             "default_tile": "{}x{}".format(*DEFAULT_TILES[(d, t)]),
                             "default_bytes": threadgroup_bytes(*DEFAULT_TILES[(d, t)], d, t, layout) if fits else None})
    return rows


def findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    s, found, name = shape(ctx), [], ctx.device["name"]

    def peak(row: Row) -> str:
        return f"{row['pct_peak']:.1f}% of peak" if row.get("pct_peak") is not None else "no Apple-GPU peak applies"

    def stats(row: Row, table: str) -> dict[str, Any]:
        return {**bench.TimingStats.from_samples([x / 1e3 for x in row["samples_ms"]], "backend").evidence(),
                "table": ctx.table_path(table)}

    def anchor_result(d: int, t: str, anchor: str) -> str:
        bq, bk = anchors(d, t)[anchor]
        rows = [r for r in tables["layout_tiles"].rows if r["D"] == d and r["dtype"] == t and "tflops" in r
                and (r["block_q"], r["block_k"]) == (bq, bk)]
        if not rows:
            return f"{anchor.upper()}'s {bq}x{bk} fits no layout swept"
        top = max(rows, key=lambda r: r["tflops"])
        return f"{anchor.upper()}'s {bq}x{bk} {top['tflops']:.4g} TFLOP/s at best ({top['layout']})"

    for row in tables["best_tiles"].rows if "best_tiles" in tables else []:
        registers = (f"; pipeline: maxTotalThreadsPerThreadgroup {row['max_threads']}, "
                     f"staticThreadgroupMemoryLength {row['static_tg_bytes']}" if not ctx.is_host else "")
        found.append(ctx.finding(
            "best_tile", "performance", "best_tile_tflops", row["tflops"], "TFLOP/s",
            {**s, "D": row["D"], "dtype": row["dtype"]},
            f"fastest layout and tile for D={row['D']} {row['dtype']} (N={s['N']}, causal={s['causal']}) is "
            f"{row['layout']} {row['block_q']}x{row['block_k']} at {row['tflops']:.4g} TFLOP/s ({peak(row)}) on {name}; "
            f"{anchor_result(row['D'], row['dtype'], 'mlx')}, {anchor_result(row['D'], row['dtype'], 'mfa')}"
            + registers, stats(row, "layout_tiles"),
            extra={"layout": row["layout"], "block_q": row["block_q"], "block_k": row["block_k"],
                   "max_threads": row["max_threads"], "static_tg_bytes": row["static_tg_bytes"]}))
    for row in tables["baseline"].rows if "baseline" in tables else []:
        if "tflops" not in row:
            continue
        peers = ", ".join(f"{p} {row[p + '_wall_ms']:.3g} ms wall ({row[p + '_device']})" for p in ("mlx", "torch")
                          if p + "_wall_ms" in row)
        found.append(ctx.finding(
            "default_tile", "performance", "default_tile_tflops", row["tflops"], "TFLOP/s",
            {**s, "D": row["D"], "dtype": row["dtype"], "block_q": row["block_q"], "block_k": row["block_k"]},
            f"default tile {row['block_q']}x{row['block_k']} for D={row['D']} {row['dtype']} runs at "
            f"{row['tflops']:.4g} TFLOP/s ({peak(row)}, {row['median_ms']:.3g} ms, {row['wall_ms']:.3g} ms wall) on "
            f"{name}" + (f"; peers: {peers}" if peers else ""), stats(row, "baseline")))
    numerics = tables["numerics"]
    for t in sorted({r["dtype"] for r in numerics.rows}, key=DTYPES.index):
        rows = [r for r in numerics.rows if r["dtype"] == t and "rel_error" in r]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r["rel_error"])
        where = "host emulation (IEEE float32 arithmetic on the CPU)" if ctx.is_host else name
        b, h, n = NUMERICS_SHAPE
        found.append(ctx.finding(
            "error", "numerics", "rel_error_vs_fp64", worst["rel_error"], "",
            {"B": b, "H": h, "N": n, "causal": bool(ctx.args.causal), "dtype": t},
            f"{t} flash attention (float32 accumulation) is within {worst['rel_error']:.2g} relative error "
            f"(Frobenius; worst element {max(r['max_abs_error'] for r in rows):.2g}) of the FP64 reference for "
            f"D in {sorted({r['D'] for r in rows})} (layouts {', '.join(dict.fromkeys(r['layout'] for r in rows))}; "
            f"worst {worst['layout']} at D={worst['D']}), measured on {where}",
            {"samples": [r["rel_error"] for r in rows], "test": "tests/test_flash_attention.py",
             "table": ctx.table_path("numerics")}))
    mem = [r for r in tables["memory"].rows if r["layout"] == DEFAULT_LAYOUT]
    fewest = min(mem, key=lambda r: r["fitting"])
    limit = int(ctx.device["max_threadgroup_memory"])
    shared = {r["layout"]: r for r in tables["memory"].rows if r["D"] == 64 and r["dtype"] == "float16"}
    found.append(ctx.finding(
        "tiles_fit", "memory", "min_fitting_tiles", fewest["fitting"], "tiles", {"limit": limit},
        f"derived from the layout formulas (not measured): with separate Q, K and V tiles, between "
        f"{fewest['fitting']} (D={fewest['D']} {fewest['dtype']}) and {max(r['fitting'] for r in mem)} of "
        f"{fewest['of']} tiles fit {limit} bytes, and every default tile fits; at D=64 float16 "
        + ", ".join(f"{r['fitting']} fit {n}" for n, r in shared.items()) + "; MFA's 16x128 fits "
        + (", ".join(n for n, r in shared.items() if r["mfa_fits"]) or "no layout"),
        {"table": ctx.table_path("memory"), "derived": FORMULA}))
    return found


SPEC = BenchSpec(
    proto="flash_attention",
    description="Flash attention forward (prototype 1): which (block_q, block_k) tiles win per head dim and dtype, "
                "their TFLOP/s and percent of the device's peak, the default tiles against MLX / PyTorch SDPA, the "
                "error against FP64, and which tiles fit the threadgroup memory. Host-backend times are CPU times "
                "of the emulation, never Apple-GPU results.",
    questions=(
        Question("best_tile", "Which layout and (block_q, block_k) tile is fastest for each head dim and dtype, at "
                 "what TFLOP/s and percent of the device's peak, against the anchors' (MLX, MFA) tiles?",
                 ("performance",), True),
        Question("default_tile", "How fast are the default tiles, against MLX and PyTorch SDPA on the same inputs?",
                 ("performance",), True),
        Question("error", "How far is each dtype's output from the FP64 reference?", ("numerics",), False),
        Question("tiles_fit", "Which tiles fit the threadgroup memory for each head dim and dtype?", ("memory",),
                 False),
    ),
    tables=(
        TableSpec("layout_tiles", "flash attention sweep, layout x tile", tile_configs, time_tile),
        TableSpec("tiles", "flash attention, the fastest layout per tile",
                  lambda ctx: best_rows(ctx.tables["layout_tiles"], ("D", "dtype", "block_q", "block_k"), "tflops")
                  if "layout_tiles" in ctx.tables else [],
                  plots=(Plot("heatmap", "block_k", "block_q", value="tflops", per=("D", "dtype")),)),
        TableSpec("best_tiles", "fastest layout and tile per head dim and dtype",
                  lambda ctx: best_rows(ctx.tables["layout_tiles"], ("D", "dtype"), "tflops")
                  if "layout_tiles" in ctx.tables else []),
        TableSpec("baseline", "flash attention, default tiles", baseline_configs, time_tile),
        TableSpec("numerics", f"flash attention error vs FP64 (B, H, N = {NUMERICS_SHAPE})",
                  lambda ctx: [{"D": d, "dtype": t, "layout": layout} for d in grid(ctx)[0] for t in ctx.args.dtypes or DTYPES
                               for layout in (LAYOUTS if ctx.mode == "sweep" else (DEFAULT_LAYOUT,))
                               if fitting_tiles(d, t, layout=layout)],
                  error, timed=False),
        TableSpec("memory", f"threadgroup memory per layout and tile, {FORMULA}", memory_rows, timed=False),
    ),
    findings=findings,
    options=options,
    examples=("--quick", "--quick --head-dims 64 --dtypes float16 --seq 64", "--sweep --backend metal"),
)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench (``attention-proto bench flash_attention``); returns the exit status."""
    return run_bench(SPEC, argv)
