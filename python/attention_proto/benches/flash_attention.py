"""Bench of prototype 1, flash attention forward: tile sweep, TFLOP/s baseline, peers, numerics, memory.

Modes (``attention-proto bench flash_attention [--quick | --sweep] [--backend NAME]``):

- default: the default tiles (``DEFAULT_TILES``) of every head dim and dtype, with MLX / PyTorch SDPA
  side by side when installed;
- ``--sweep``: every (block_q, block_k) from ``BLOCK_SIZES`` that fits the device's threadgroup memory,
  for every head dim and dtype, with a heatmap per head dim and dtype;
- ``--quick``: a small sweep (D 64 and 128, float16, tiles from {16, 32, 64}) for a smoke test.

Every mode also measures the error against the FP64 reference per dtype and tabulates the threadgroup
memory of each tile. Results go to tables and plots under ``--out`` and to findings in ``--findings``;
each carries its backend and device. On the host backend every time is the CPU time of the emulation:
findings say so, percent-of-peak is n/a, and the best tiles found there are not M4 tiles.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from attention_proto import bench, kb, plots, reference
from attention_proto.flash_attention import (
    BLOCK_SIZES, DEFAULT_TILES, DTYPES, HEAD_DIMS, fitting_tiles, flash_attention_timed, threadgroup_bytes,
)
from attention_proto.runtime import backends, device_info

PROTO = "flash_attention"
DESCRIPTION = (
    "Flash attention forward (prototype 1). Default: the default tiles of every head dim and dtype, with "
    "MLX / PyTorch SDPA side by side when installed. --sweep: every (block_q, block_k) that fits the "
    "threadgroup memory, per head dim and dtype, with heatmaps and the best tile of each. --quick: a small "
    "sweep (D 64 and 128, float16, tiles from {16, 32, 64}). Every mode also reports the error against "
    "FP64 and the threadgroup memory of each tile, and writes tables, plots and findings. Host-backend "
    "times are CPU times of the emulation, never Apple-GPU results.")
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_QUICK_HEAD_DIMS = (64, 128)
_QUICK_DTYPES = ("float16",)
_QUICK_BLOCKS = (16, 32, 64)
# Problem sizes (B, H, N). An Apple GPU needs a large grid to fill its cores; the CPU emulation runs
# every 8x8 MMA once per lane (32x the work), so host shapes stay small.
_SHAPES = {"metal": (1, 16, 4096), "host": (1, 2, 256)}
_QUICK_SHAPES = {"metal": (1, 8, 1024), "host": (1, 2, 128)}
_NUMERICS_SHAPE = (1, 2, 257)  # off the tile grid; small enough for the float64 reference


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--causal", action="store_true", help="use the causal mask (default: none)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length N = Nq = Nk "
                        "(default: 4096 on metal, 256 on host; --quick 1024 / 128)")
    parser.add_argument("--heads", type=int, default=None, help="query heads (default: 16 on metal, 2 on host)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=None, metavar="D",
                        help=f"head dims to run (default: all of {', '.join(map(str, HEAD_DIMS))}; --quick 64 128)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=DTYPES,
                        help="dtypes to run (default: all; --quick float16)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed runs per config after one warm-up (default: 20 on metal, 3 on host)")
    parser.add_argument("--no-peers", action="store_true", help="skip MLX / PyTorch SDPA")


def _inputs(rng: np.random.Generator, batch: int, heads: int, n: int, head_dim: int,
            dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = _NUMPY_DTYPES[dtype]
    return tuple(rng.standard_normal((batch, heads, n, head_dim)).astype(t) for _ in range(3))  # type: ignore


def _is_host(device: dict[str, Any]) -> bool:
    return device.get("backend") != "metal"


def _cpu_prefix(device: dict[str, Any]) -> str:
    return "CPU result (host-backend emulation, not an Apple GPU): " if _is_host(device) else ""


class _Runner:
    """Times configurations on one backend and problem size."""

    def __init__(self, args: argparse.Namespace, backend: str, device: dict[str, Any]):
        self.backend = backend
        self.device = device
        self.peaks = bench.device_peaks(device)
        kind = "metal" if backend == "metal" else "host"
        batch, heads, n = (_QUICK_SHAPES if args.quick else _SHAPES)[kind]
        self.batch = batch
        self.heads = args.heads or heads
        self.n = args.seq or n
        self.causal = bool(args.causal)
        self.repeat = args.repeat or (20 if kind == "metal" else 3)
        self.rng = np.random.default_rng(0)
        self._inputs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def shape(self) -> dict[str, Any]:
        return {"B": self.batch, "H": self.heads, "N": self.n, "causal": self.causal}

    def inputs(self, head_dim: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (head_dim, dtype)
        if key not in self._inputs:  # configs come grouped by (D, dtype): keep one set alive at a time
            self._inputs = {key: _inputs(self.rng, self.batch, self.heads, self.n, head_dim, dtype)}
        return self._inputs[key]

    def time(self, head_dim: int, dtype: str, block_q: int, block_k: int) -> tuple[dict[str, Any], bench.TimingStats]:
        q, k, v = self.inputs(head_dim, dtype)
        out = np.empty_like(q)

        def run() -> float:
            return flash_attention_timed(q, k, v, causal=self.causal, block_q=block_q, block_k=block_k,
                                         backend=self.backend, out=out)[2].seconds

        stats = bench.time_fn(run, warmup=1, repeat=self.repeat)  # the warm-up also compiles
        flops = bench.attention_flops(self.batch, self.heads, self.n, self.n, head_dim, self.causal)
        tflops = bench.tflops(flops, stats.median)
        row = {"threadgroup_bytes": threadgroup_bytes(block_q, block_k, head_dim, dtype),
               "simdgroups": block_q // 8, "median_ms": 1e3 * stats.median, "p20_ms": 1e3 * stats.p20,
               "p80_ms": 1e3 * stats.p80, "tflops": tflops,
               "pct_peak": self.peaks.percent_of_peak(tflops, dtype)}
        return row, stats


def _sweep(runner: _Runner, head_dims: Sequence[int], dtypes: Sequence[str], sizes: Sequence[int],
           limit: int) -> tuple[bench.Table, dict[tuple[int, str, int, int], bench.TimingStats]]:
    configs = [{"D": d, "dtype": t, "block_q": bq, "block_k": bk}
               for d in head_dims for t in dtypes for bq, bk in fitting_tiles(d, t, limit, tuple(sizes))]
    stats: dict[tuple[int, str, int, int], bench.TimingStats] = {}

    def measure(c: dict[str, Any]) -> dict[str, Any]:
        row, s = runner.time(c["D"], c["dtype"], c["block_q"], c["block_k"])
        stats[(c["D"], c["dtype"], c["block_q"], c["block_k"])] = s
        return row

    meta = {"device": runner.device, "shape": runner.shape(), "peak": runner.peaks.source}
    title = f"flash attention tile sweep, B={runner.batch} H={runner.heads} N={runner.n} causal={runner.causal}"
    return bench.Sweep(configs, measure, desc=title, meta=meta).run(), stats


def _best_tiles(table: bench.Table) -> list[dict[str, Any]]:
    """The fastest row per (D, dtype), with the default tile's speed for comparison."""
    best: dict[tuple[int, str], dict[str, Any]] = {}
    by_tile = {(r["D"], r["dtype"], r["block_q"], r["block_k"]): r for r in table.rows if "tflops" in r}
    for row in table.rows:
        if "tflops" not in row:
            continue
        key = (row["D"], row["dtype"])
        if key not in best or row["tflops"] > best[key]["tflops"]:
            best[key] = row
    out = []
    for (d, t), row in sorted(best.items()):
        default = DEFAULT_TILES[(d, t)]
        default_row = by_tile.get((d, t, *default))
        out.append({"D": d, "dtype": t, "best_block_q": row["block_q"], "best_block_k": row["block_k"],
                    "tflops": row["tflops"], "pct_peak": row["pct_peak"], "threadgroup_bytes": row["threadgroup_bytes"],
                    "default_tile": f"{default[0]}x{default[1]}",
                    "default_tflops": default_row["tflops"] if default_row else None})
    return out


def _baseline(runner: _Runner, head_dims: Sequence[int], dtypes: Sequence[str],
              peers: bool) -> tuple[bench.Table, dict[tuple[int, str], bench.TimingStats]]:
    configs = [{"D": d, "dtype": t, "block_q": DEFAULT_TILES[(d, t)][0], "block_k": DEFAULT_TILES[(d, t)][1]}
               for d in head_dims for t in dtypes]
    stats: dict[tuple[int, str], bench.TimingStats] = {}

    def measure(c: dict[str, Any]) -> dict[str, Any]:
        row, s = runner.time(c["D"], c["dtype"], c["block_q"], c["block_k"])
        stats[(c["D"], c["dtype"])] = s
        if peers:
            q, k, v = runner.inputs(c["D"], c["dtype"])
            for name, result in bench.run_peers(q, k, v, causal=runner.causal, repeat=runner.repeat).items():
                row[f"{name}_ms"] = 1e3 * result.stats.median
                row[f"{name}_device"] = result.device
                row[f"speedup_vs_{name}"] = result.stats.median / s.median
        return row

    meta = {"device": runner.device, "shape": runner.shape(), "peak": runner.peaks.source}
    title = f"flash attention, default tiles, B={runner.batch} H={runner.heads} N={runner.n} causal={runner.causal}"
    return bench.Sweep(configs, measure, desc=title, meta=meta).run(), stats


def _numerics(backend: str, device: dict[str, Any], head_dims: Sequence[int], dtypes: Sequence[str],
              causal: bool) -> bench.Table:
    """Relative error (Frobenius) of the default tiles against the FP64 reference, per D and dtype."""
    rng = np.random.default_rng(1)
    batch, heads, n = _NUMERICS_SHAPE
    rows = []
    for d in head_dims:
        for t in dtypes:
            q, k, v = _inputs(rng, batch, heads, n, d, t)
            out, _, _ = flash_attention_timed(q, k, v, causal=causal, backend=backend)
            expected = reference.attention(q, k, v, causal=causal)
            err = float(np.linalg.norm(out.astype(np.float64) - expected) / np.linalg.norm(expected))
            rows.append({"D": d, "dtype": t, "rel_error": err})
    meta = {"device": device, "shape": {"B": batch, "H": heads, "N": n, "causal": causal}}
    return bench.Table(rows, title=f"flash attention error vs FP64 (B={batch} H={heads} N={n})", meta=meta)


def _memory(device: dict[str, Any], limit: int) -> bench.Table:
    """Threadgroup memory per tile: what fits the limit, per D and dtype (no dispatch needed)."""
    rows = []
    for d in HEAD_DIMS:
        for t in DTYPES:
            fits = fitting_tiles(d, t, limit)
            largest = max(fits, key=lambda tile: (tile[0] * tile[1], tile[0]))
            default = DEFAULT_TILES[(d, t)]
            rows.append({"D": d, "dtype": t, "fitting": len(fits), "of": len(BLOCK_SIZES) ** 2,
                         "largest_tile": f"{largest[0]}x{largest[1]}",
                         "largest_bytes": threadgroup_bytes(*largest, d, t),
                         "default_tile": f"{default[0]}x{default[1]}",
                         "default_bytes": threadgroup_bytes(*default, d, t),
                         "bytes_8x8": threadgroup_bytes(8, 8, d, t), "bytes_64x64": threadgroup_bytes(64, 64, d, t)})
    sizes = ", ".join(map(str, BLOCK_SIZES))
    return bench.Table(rows, title=f"threadgroup memory per tile (block_q, block_k in {{{sizes}}}, limit {limit} B)",
                       meta={"device": device, "formula": "(block_q + 2*block_k) * (D*itemsize + 16)"})


def _findings(runner: _Runner, best: list[dict[str, Any]], sweep_stats: dict, baseline: bench.Table | None,
              baseline_stats: dict, numerics: bench.Table, memory: bench.Table, limit: int) -> list[kb.Finding]:
    device, backend = runner.device, runner.backend
    device_name = str(device["name"])
    prefix = _cpu_prefix(device)
    shape = runner.shape()
    found: list[kb.Finding] = []

    def add(kind: str, metric: str, value: float, unit: str, config: dict[str, Any], claim: str,
            evidence: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        # The id comes from `config` alone, so a re-run replaces the finding even when `extra` (the
        # winning tile) changes.
        found.append(kb.Finding(id=kb.make_id(PROTO, metric, config, backend), proto=PROTO, kind=kind,
                                claim=claim, metric=metric, value=value, unit=unit, config={**config, **(extra or {})},
                                device=device, evidence=evidence))

    def of_peak(percent: float | None) -> str:
        return f"{percent:.1f}% of peak" if percent is not None else "no Apple-GPU peak applies"

    for row in best:
        stats = sweep_stats[(row["D"], row["dtype"], row["best_block_q"], row["best_block_k"])]
        add("performance", "best_tile_tflops", row["tflops"], "TFLOP/s", {**shape, "D": row["D"], "dtype": row["dtype"]},
            f"{prefix}fastest tile for D={row['D']} {row['dtype']} (N={runner.n}, causal={runner.causal}) is "
            f"block_q={row['best_block_q']}, block_k={row['best_block_k']} at {row['tflops']:.4g} TFLOP/s "
            f"({of_peak(row['pct_peak'])}) on {device_name}",
            {**stats.evidence(), "table": "flash_attention/tiles.json"},
            extra={"block_q": row["best_block_q"], "block_k": row["best_block_k"]})
    if baseline is not None:
        for row in baseline.rows:
            if "tflops" not in row:
                continue
            config = {**shape, "D": row["D"], "dtype": row["dtype"], "block_q": row["block_q"],
                      "block_k": row["block_k"]}
            peers = ", ".join(f"{p} {row[p + '_ms']:.3g} ms ({row[p + '_device']})"
                              for p in ("mlx", "torch") if p + "_ms" in row)
            add("performance", "default_tile_tflops", row["tflops"], "TFLOP/s", config,
                f"{prefix}default tile {row['block_q']}x{row['block_k']} for D={row['D']} {row['dtype']} runs at "
                f"{row['tflops']:.4g} TFLOP/s ({of_peak(row['pct_peak'])}, "
                f"{row['median_ms']:.3g} ms) on {device_name}" + (f"; peers: {peers}" if peers else ""),
                {**baseline_stats[(row["D"], row["dtype"])].evidence(), "table": "flash_attention/baseline.json"})
    for t in sorted({r["dtype"] for r in numerics.rows}, key=DTYPES.index):
        rows = [r for r in numerics.rows if r["dtype"] == t]
        worst = max(rows, key=lambda r: r["rel_error"])
        where = "host emulation (IEEE float32 arithmetic on the CPU)" if _is_host(device) else device_name
        add("numerics", "rel_error_vs_fp64", worst["rel_error"], "", {**numerics.meta["shape"], "dtype": t},
            f"{t} flash attention (float32 accumulation) is within {worst['rel_error']:.2g} relative error "
            f"(Frobenius) of the FP64 reference for D in {sorted(r['D'] for r in rows)}, measured on {where}",
            {"samples": [r["rel_error"] for r in rows], "test": "tests/test_flash_attention.py",
             "table": "flash_attention/numerics.json"})
    for row in memory.rows:
        add("memory", "fitting_tiles", row["fitting"], "tiles", {"D": row["D"], "dtype": row["dtype"], "limit": limit},
            f"with Q, K and V tiles in threadgroup memory, {row['fitting']} of {row['of']} (block_q, block_k) "
            f"tiles fit {limit} bytes for D={row['D']} {row['dtype']}; the largest is {row['largest_tile']} "
            f"({row['largest_bytes']} B), the default {row['default_tile']} uses {row['default_bytes']} B",
            {"table": "flash_attention/memory.json"})
    return found


def _heatmaps(table: bench.Table, device: dict[str, Any], out: Path, runner: _Runner) -> list[Path]:
    paths = []
    for d, t in sorted({(r["D"], r["dtype"]) for r in table.rows}):
        rows = [r for r in table.rows if r["D"] == d and r["dtype"] == t]
        what = "CPU emulation TFLOP/s" if _is_host(device) else "TFLOP/s"
        title = f"flash attention {what}, D={d} {t}, N={runner.n} causal={runner.causal}"
        paths.append(plots.heatmap(rows, "block_k", "block_q", "tflops", title,
                                   out / f"tiles_D{d}_{t}.png", device))
    return paths


def main(argv: list[str]) -> int:
    """Runs the bench; returns the exit status (0, or 1 when a config failed)."""
    args = bench.parse_bench_args(PROTO, argv, DESCRIPTION, _extra_args)
    backend = args.backend or backends()[0]
    if backend not in backends():
        raise SystemExit(f"attention-proto bench {PROTO}: backend {backend!r} is not available here "
                         f"(available: {', '.join(backends())})")
    device = dict(device_info(backend))
    limit = int(device["max_threadgroup_memory"])
    head_dims = args.head_dims or (_QUICK_HEAD_DIMS if args.quick else HEAD_DIMS)
    dtypes = args.dtypes or (_QUICK_DTYPES if args.quick else DTYPES)
    for name in ("seq", "heads", "repeat"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    unknown = [d for d in head_dims if d not in HEAD_DIMS]
    if unknown:
        raise SystemExit(f"--head-dims: {unknown} not supported (supported: {', '.join(map(str, HEAD_DIMS))})")
    runner = _Runner(args, backend, device)
    print(f"flash attention bench on {kb.device_label(device)}")
    print(f"peak: {runner.peaks.source}")
    if _is_host(device):
        print("note: host backend times are CPU times of the MSL emulation; its best tiles are not M4 tiles")
    args.out.mkdir(parents=True, exist_ok=True)

    sweep, sweep_stats, baseline, baseline_stats = None, {}, None, {}
    if args.sweep or args.quick:
        sizes = _QUICK_BLOCKS if args.quick and not args.sweep else BLOCK_SIZES
        sweep, sweep_stats = _sweep(runner, head_dims, dtypes, sizes, limit)
        sweep.print()
        sweep.save(args.out, "tiles")
        for path in _heatmaps(sweep, device, args.out, runner):
            print(f"heatmap: {path}")
    else:
        baseline, baseline_stats = _baseline(runner, head_dims, dtypes, peers=not args.no_peers)
        baseline.print()
        baseline.save(args.out, "baseline")
        if not any(key.endswith("_ms") and key != "median_ms" for row in baseline.rows for key in row):
            print("peers: none installed (pip install mlx or torch to compare side by side)")
    best = _best_tiles(sweep) if sweep is not None else []
    if best:
        best_table = bench.Table(best, title="best tile per head dim and dtype", meta={"device": device})
        best_table.print()
        best_table.save(args.out, "best_tiles")
        if _is_host(device):
            print("(CPU ranking: keep DEFAULT_TILES unless these come from --backend metal on an M4)")

    numerics = _numerics(backend, device, head_dims, args.dtypes or DTYPES, runner.causal)
    numerics.print()
    numerics.save(args.out, "numerics")
    memory = _memory(device, limit)
    memory.print()
    memory.save(args.out, "memory")

    findings = _findings(runner, best, sweep_stats, baseline, baseline_stats, numerics, memory, limit)
    path = kb.emit_many(findings, args.findings)
    print(f"{len(findings)} findings -> {path}; tables and plots -> {args.out}")
    timed = sweep if sweep is not None else baseline
    failed = [r for r in timed.rows if "error" in r]
    for row in failed:
        print(f"failed: D={row['D']} {row['dtype']} {row['block_q']}x{row['block_k']}: {row['error']}")
    return 1 if failed or any(math.isnan(r["rel_error"]) for r in numerics.rows) else 0
