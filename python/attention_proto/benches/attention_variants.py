"""Bench of prototype 7, attention variants: what causal, ALiBi, softcap and RoPE (separate pass or fused
into flash attention's tile loads) cost relative to the base kernel, and what GQA's group size does at a
fixed number of query heads, at a prefill and a decode shape.

Every table times its configurations side by side: per shape, all of them warm up (and compile) first,
then each sample runs every configuration once in turn, and a configuration's ``relative`` is the median
of its per-sample ratios to the reference configuration (the base kernel; GQA group 1), so drift of a
shared machine cancels. "RoPE separate" is rope(q) + rope(k) + the base kernel on the rotated inputs,
three dispatches whose times add. On the host backend every time is the CPU time of the emulation, never
an Apple-GPU result.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import ml_dtypes
import numpy as np

from attention_proto import bench, kb, reference
from attention_proto.benchspec import BenchSpec, Context, Plot, Question, Row, TableSpec, Timing, run_bench
from attention_proto.protos.attention_variants import Rotary, alibi_slopes, rope_timed
from attention_proto.protos.flash_attention import flash_attention_timed

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# "control" is the base kernel again, timed as one more configuration: its ratio to "base" is the noise floor.
VARIANTS = ("base", "control", "causal", "alibi", "softcap", "rope_separate", "rope_fused", "all_fused")
GROUPS = (1, 2, 4, 8)
SOFTCAP = 50.0  # Gemma 2's attention logit cap
# (B, Hq, Nq, Nk) per shape; the emulation runs each 8x8 MMA once per lane, so host shapes stay small.
SHAPES = {"metal": {"prefill": (2, 16, 2048, 2048), "decode": (8, 32, 1, 4096)},
          "metal-quick": {"prefill": (1, 16, 1024, 1024), "decode": (4, 32, 1, 2048)},
          "host": {"prefill": (1, 8, 128, 128), "decode": (2, 8, 1, 512)}}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-dim", type=int, default=None, help="head dim D (default: 128 metal, 64 host)")
    p.add_argument("--dtype", default="float16", choices=tuple(NUMPY_DTYPES), help="dtype (default: float16)")
    p.add_argument("--heads", type=int, default=None, help="query heads Hq (default: per shape; a multiple of 8)")
    p.add_argument("--seq", type=int, default=None, help="prefill Nq = Nk (default: 2048 metal, --quick 1024; 128 host)")
    p.add_argument("--context", type=int, default=None, help="decode Nk (default: 4096 metal, --quick 2048; 512 host)")


def shapes(ctx: Context) -> dict[str, tuple[int, int, int, int]]:
    where = "host" if ctx.is_host else "metal-quick" if ctx.mode == "quick" else "metal"
    (b, h, n, _), (db, dh, _, dn) = SHAPES[where]["prefill"], SHAPES[where]["decode"]
    h, dh = ctx.args.heads or h, ctx.args.heads or dh
    n, dn = ctx.args.seq or n, ctx.args.context or dn
    return {"prefill": (b, h, n, n), "decode": (db, dh, 1, dn)}


def head_dim(ctx: Context) -> int:
    return ctx.args.head_dim or (64 if ctx.is_host else 128)


def rotary(shape: str, kv_len: int) -> Rotary:
    """Prefill rotates from position 0; the decode query sits at the last key's position."""
    return Rotary(q_offset=kv_len - 1 if shape == "decode" else 0)


def configs(ctx: Context, column: str, values: tuple[Any, ...]) -> list[Row]:
    rows = []
    for shape, (b, h, nq, nk) in shapes(ctx).items():
        for value in values:
            hkv = h // value if column == "group" else h
            rows.append({"shape": shape, column: value, "B": b, "Hq": h, "Hkv": hkv, "Nq": nq, "Nk": nk,
                         "D": head_dim(ctx), "dtype": ctx.args.dtype})
    return rows


def keywords(slopes: np.ndarray, softcap: float, rope: Rotary) -> dict[str, dict[str, Any]]:
    """flash_attention's keywords of each variant run by one call ("rope_separate" is three)."""
    return {"base": {}, "control": {}, "causal": {"causal": True}, "alibi": {"alibi_slopes": slopes},
            "softcap": {"softcap": softcap}, "rope_fused": {"rope": rope},
            "all_fused": {"causal": True, "alibi_slopes": slopes, "softcap": softcap, "rope": rope}}


def calls(ctx: Context, c: Row, names: tuple[Any, ...], column: str) -> dict[Any, Callable[[int], Any]]:
    """One timed call per configuration of a shape (``column``: variant or group), on fresh inputs."""
    t, made = NUMPY_DTYPES[c["dtype"]], {}
    for name in names:
        hkv = c["Hq"] // name if column == "group" else c["Hq"]
        q = ctx.rng.standard_normal((c["B"], c["Hq"], c["Nq"], c["D"])).astype(t)
        k, v = (ctx.rng.standard_normal((c["B"], hkv, c["Nk"], c["D"])).astype(t) for _ in range(2))
        made[name] = (q, k, v, np.empty_like(q), np.empty_like(q), np.empty_like(k))
    rope = rotary(c["shape"], c["Nk"])
    variants = keywords(alibi_slopes(c["Hq"]), SOFTCAP, rope)

    def flash(name: Any, **kwargs: Any) -> Callable[[int], Any]:
        q, k, v, out, _, _ = made[name]
        return lambda r: flash_attention_timed(q, k, v, out=out, backend=ctx.backend, repeat=r, **kwargs)[2]

    def separate(r: int) -> SimpleNamespace:  # three dispatches one after another: their times add
        q, k, v, out, q_rot, k_rot = made["rope_separate"]
        parts = [rope_timed(q, offset=rope.q_offset, out=q_rot, backend=ctx.backend, repeat=r)[1],
                 rope_timed(k, offset=rope.k_offset, out=k_rot, backend=ctx.backend, repeat=r)[1],
                 flash_attention_timed(q_rot, k_rot, v, out=out, backend=ctx.backend, repeat=r)[2]]
        return SimpleNamespace(seconds=sum(p.seconds for p in parts), wall_seconds=sum(p.wall_seconds for p in parts))

    if column == "group":
        return {g: flash(g) for g in names}
    return {name: separate if name == "rope_separate" else flash(name, **variants[name]) for name in names}


def side_by_side(ctx: Context, c: Row, column: str, names: tuple[Any, ...]) -> dict[Any, tuple[list[float], list[float]]]:
    """(backend seconds, wall seconds) samples of every configuration of ``c``'s shape, interleaved."""
    timed = calls(ctx, c, names, column)
    for call in timed.values():
        call(1)  # warm-up: compiles each pipeline
    samples: dict[Any, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for _ in range(ctx.samples if ctx.args.samples else max(ctx.samples, 5)):
        for name, call in timed.items():
            t = call(ctx.repeat)
            samples[name][0].append(float(t.seconds))
            samples[name][1].append(float(t.wall_seconds))
    return samples


def measurer(column: str, names: tuple[Any, ...], reference_name: Any) -> Callable[[Context, Row], Row]:
    """Measures a table's row from its shape's side-by-side run (made once per shape: rows come grouped)."""
    def measure(ctx: Context, c: Row) -> Row:
        key = (column, c["shape"], c["B"], c["Hq"], c["Nq"], c["Nk"], c["D"], c["dtype"])
        runs = ctx.cached(key, lambda: side_by_side(ctx, c, column, names))
        gpu, wall = runs[c[column]]
        ratios = np.array(gpu) / np.array(runs[reference_name][0])
        timing = Timing(bench.TimingStats.from_samples(gpu, "backend"), bench.TimingStats.from_samples(wall, "wall"))
        causal = c.get("variant") in ("causal", "all_fused")
        flops = bench.attention_flops(c["B"], c["Hq"], c["Nq"], c["Nk"], c["D"], causal=causal)
        p20, median, p80 = np.percentile(ratios, [20, 50, 80]).tolist()
        return {**ctx.perf(timing, flops, c["dtype"]), "relative": median, "rel_p20": p20, "rel_p80": p80,
                "samples_ms": [1e3 * x for x in gpu]}
    return measure


def numerics_rows(ctx: Context) -> list[Row]:
    """Each variant's error against FP64 at a small prefill shape (B=1, Hq=4, N=64), and fused RoPE against
    the separate pass."""
    d, t = head_dim(ctx), NUMPY_DTYPES[ctx.args.dtype]
    rng = np.random.default_rng(ctx.args.seed)
    q, k, v = (rng.standard_normal((1, 4, 64, d)).astype(t) for _ in range(3))
    rope = Rotary(q_offset=16)
    rows = []
    for name, kwargs in keywords(alibi_slopes(4), 5.0, rope).items():
        if name == "control":
            continue
        out = flash_attention_timed(q, k, v, backend=ctx.backend, **kwargs)[0].astype(np.float64)
        r = reference.attention(q, k, v, **kwargs)
        rows.append({"variant": name, "D": d, "dtype": ctx.args.dtype, "rel_err": float(np.linalg.norm(out - r) / np.linalg.norm(r))})
        if name == "rope_fused":  # against rope(q), rope(k), then the base kernel
            rotated = (rope_timed(x, offset=o, backend=ctx.backend)[0] for x, o in ((q, rope.q_offset), (k, rope.k_offset)))
            separate = flash_attention_timed(*rotated, v, backend=ctx.backend)[0].astype(np.float64)
            rows[-1]["max_diff_vs_separate"] = float(np.abs(out - separate).max())
    return rows


def by(rows: list[Row], column: str, shape: str) -> dict[Any, Row]:
    return {r[column]: r for r in rows if r["shape"] == shape and "relative" in r}


def shape_config(rows: list[Row]) -> dict[str, Any]:  # {"prefill": "B1 Hq8 Nq128 Nk128", ...}
    return {r["shape"]: f"B{r['B']} Hq{r['Hq']} Nq{r['Nq']} Nk{r['Nk']}" for r in rows}


def evidence(ctx: Context, row: Row, table: str) -> dict[str, Any]:
    stats = bench.TimingStats.from_samples([x / 1e3 for x in row["samples_ms"]], "backend").evidence()
    return {**stats, "relative": row["relative"], "rel_p20": row["rel_p20"], "rel_p80": row["rel_p80"],
            "table": ctx.table_path(table)}


def costs(rows: list[Row], shape: str, names: tuple[Any, ...], column: str = "variant") -> str:
    found = by(rows, column, shape)
    label = "group " if column == "group" else ""
    return f"{shape} " + " ".join(f"{label}{n} {found[n]['relative']:.2f}" for n in names if n in found)


def variant_findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    rows = tables["variants"].rows if "variants" in tables else []
    pre, dec = by(rows, "variant", "prefill"), by(rows, "variant", "decode")
    if any(n not in r for r in (pre, dec) for n in ("base", "control")):
        return []
    config, extra = {"D": pre["base"]["D"], "dtype": pre["base"]["dtype"]}, {"shapes": shape_config(rows)}
    worst = max((n for n in VARIANTS[2:-1] if n in pre), key=lambda n: pre[n]["relative"])  # one variant alone
    found = [ctx.finding(
        "variant_cost", "performance", "relative_time_vs_base", pre[worst]["relative"], "x", config,
        f"time / base kernel on {ctx.device['name']} (D={config['D']} {config['dtype']}): "
        f"{costs(rows, 'prefill', VARIANTS[1:])}; {costs(rows, 'decode', VARIANTS[1:])}",
        evidence(ctx, pre[worst], "variants"), extra={**extra, "variant": worst})]
    if all("rope_fused" in r and "rope_separate" in r for r in (pre, dec)):
        ratio = {s: r["rope_fused"]["median_ms"] / r["rope_separate"]["median_ms"] for s, r in (("prefill", pre), ("decode", dec))}
        found.append(ctx.finding(
            "rope_fusion", "performance", "fused_over_separate_rope_time", ratio["prefill"], "x", config,
            f"RoPE fused into the Q/K tile loads takes {ratio['prefill']:.2f}x the time of the separate pass (rope(q) "
            f"+ rope(k) + flash) at prefill, {ratio['decode']:.2f}x at decode, on {ctx.device['name']}; fused rotates "
            f"each K tile once per query block", evidence(ctx, pre["rope_fused"], "variants"), extra=extra))
    # A variant earns a function constant when switching it on costs more than the noise floor: how far the
    # control (the base kernel timed again) lands from 1.
    noise = max(max(abs(r["control"][k] - 1) for k in ("relative", "rel_p20", "rel_p80")) for r in (pre, dec))
    on_cost = {n: max(pre[n]["relative"], dec[n]["relative"]) - 1 for n in ("causal", "alibi", "softcap", "rope_fused")
               if n in pre and n in dec}
    constants = [n for n, cost in on_cost.items() if cost > noise]
    found.append(ctx.finding(
        "function_constants", "performance", "variants_worth_a_function_constant", len(constants), "variants", config,
        f"derived: on cost (max of prefill, decode) " + " ".join(f"{n} {100 * c:+.0f}%" for n, c in on_cost.items())
        + f" vs noise {100 * noise:.0f}% on {ctx.device['name']}: function constants for "
        f"{', '.join(constants) or 'none'}; a run-time argument would do for "
        f"{', '.join(n for n in on_cost if n not in constants) or 'none'}",
        {"derived": "on cost = max(prefill, decode) relative - 1 > noise = max |control ratio - 1| (median, p20, "
                    "p80)", "on_cost": on_cost, "noise": noise, "table": ctx.table_path("variants")},
        extra={**extra, "function_constants": constants}))
    return found


def gqa_findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    rows = tables["gqa"].rows if "gqa" in tables else []
    pre = by(rows, "group", "prefill")
    if 1 not in pre or GROUPS[-1] not in pre:
        return []
    return [ctx.finding(
        "gqa_effect", "performance", "group8_over_group1_time", pre[GROUPS[-1]]["relative"], "x",
        {"D": pre[1]["D"], "dtype": pre[1]["dtype"], "Hq": pre[1]["Hq"]},
        f"time / group 1 (MHA) at fixed Hq={pre[1]['Hq']} on {ctx.device['name']}: {costs(rows, 'prefill', GROUPS, 'group')}; "
        f"{costs(rows, 'decode', GROUPS, 'group')}; each query head has its own threadgroups, so a group shares "
        f"K/V loads only through the caches",
        evidence(ctx, pre[GROUPS[-1]], "gqa"), extra={"groups": list(GROUPS), "shapes": shape_config(rows)})]


def numerics_findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    rows = tables["numerics"].rows
    fused = next(r for r in rows if r["variant"] == "rope_fused")
    measured_on = "the host emulation (IEEE float32 on the CPU)" if ctx.is_host else ctx.device["name"]
    return [ctx.finding(
        "accuracy", "numerics", "fused_rope_max_diff_vs_separate", fused["max_diff_vs_separate"], "",
        {"D": fused["D"], "dtype": fused["dtype"]},
        f"fused RoPE vs rope() then flash: max |diff| {fused['max_diff_vs_separate']:.2g}; relative error vs FP64: "
        + " ".join(f"{r['variant']} {r['rel_err']:.2g}" for r in rows) + f" (B=1 Hq=4 N=64 D={fused['D']} "
        f"{fused['dtype']}) on {measured_on}",
        {"samples": [r["rel_err"] for r in rows], "test": "tests/test_attention_variants.py",
         "table": ctx.table_path("numerics")})]


def findings(ctx: Context, tables: dict[str, bench.Table]) -> list[kb.Finding]:
    return [f for answer in (variant_findings, gqa_findings, numerics_findings) for f in answer(ctx, tables)]


SPEC = BenchSpec(
    proto="attention_variants",
    description="Attention variants (prototype 7): the time of causal, ALiBi, softcap, RoPE as a separate pass and "
                "RoPE fused into flash attention's tile loads, each relative to the base kernel measured side by side, "
                "and GQA group sizes at fixed query heads, at a prefill and a decode shape; and each variant's error "
                "against FP64. Host-backend times are CPU times of the emulation, never Apple-GPU results.",
    questions=(
        Question("variant_cost", "What does each variant (causal, ALiBi, softcap, RoPE separate, RoPE fused) cost "
                 "relative to the base kernel, at prefill and at decode?", ("performance",), True),
        Question("rope_fusion", "Does fusing RoPE into the Q/K tile loads beat running it as a separate pass?",
                 ("performance",), True),
        Question("gqa_effect", "How does the time change with the GQA group size (1, 2, 4, 8) at fixed Hq: does a "
                 "group share its K/V loads?", ("performance",), True),
        Question("function_constants", "Which variants should the trait make function constants (specialised "
                 "pipelines) rather than run-time arguments?", ("performance",), True),
        Question("accuracy", "Does each variant match FP64, and does fused RoPE equal the separate pass to "
                 "rounding?", ("numerics",), False),
    ),
    tables=(
        TableSpec("variants", "each variant relative to the base kernel, side by side",
                  lambda ctx: configs(ctx, "variant", VARIANTS), measurer("variant", VARIANTS, "base"),
                  plots=(Plot("bar", "variant", "relative", series="shape"),)),
        TableSpec("gqa", "GQA group sizes at fixed Hq, relative to group 1, side by side",
                  lambda ctx: configs(ctx, "group", GROUPS), measurer("group", GROUPS, 1),
                  plots=(Plot("bar", "group", "relative", series="shape"),)),
        TableSpec("numerics", "each variant against FP64 (B=1, Hq=4, N=64)", numerics_rows, timed=False),
    ),
    findings=findings,
    options=options,
    examples=("--quick --head-dim 32 --seq 32 --context 64 --samples 2", "--backend metal"),
)


def main(argv: list[str] | None = None) -> int:
    """Runs the bench (``attention-proto bench attention_variants``); returns the exit status."""
    return run_bench(SPEC, argv)
