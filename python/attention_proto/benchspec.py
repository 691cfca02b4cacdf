"""Benches as data. A prototype's bench is a :class:`BenchSpec`: the questions it answers, the tables
it measures (configurations and a function that measures one), the plots drawn from them, and a
function that draws findings from the tables. :func:`run_bench` does everything generic once: the
command line (common options plus the bench's own), backend and device, inputs, timing with warm-up and
repetitions, a progress bar per table, printing and saving tables (JSON + CSV), plots, and emitting the
findings, each labelled with the device (host-backend timings are CPU results and say so).

Modes: ``--quick`` (a small subset, minutes on the host backend), the default, and ``--sweep`` (the
full parameter space); a table's ``configs`` reads ``ctx.mode`` to choose.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attention_proto import bench, kb, plots

Row = dict[str, Any]
HOST_EMULATION_LABEL = "host-backend emulation"  # what a CPU timing of the MSL-on-CPU backend is


@dataclasses.dataclass(frozen=True)
class Question:
    """A question a bench answers: a stable ``id``, the question in one sentence, the finding kinds that
    answer it, and whether an answer needs an Apple GPU (timings do; a tile that fits 32 KB does not)."""

    id: str
    text: str
    kinds: tuple[str, ...]
    needs_gpu: bool


@dataclasses.dataclass(frozen=True)
class Plot:
    """A plot drawn from a table: ``heatmap`` (``value`` over ``x`` by ``y``), ``line`` or ``bar``
    (``y`` over ``x``, one line / bar group per value of ``series``); one plot per distinct combination
    of the ``per`` columns."""

    kind: str
    x: str
    y: str
    value: str | None = None
    series: str | None = None
    per: tuple[str, ...] = ()
    logx: bool = False
    title: str = ""


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One table of a bench: ``configs(ctx)`` gives the rows to run, ``measure(ctx, config)`` the
    measured columns of one (a failure becomes the row's ``error`` column). Without ``measure`` the
    configs are the rows: derived tables, e.g. threadgroup bytes from a formula, or the best rows of an
    earlier table (``ctx.tables`` holds the tables measured so far). ``timed`` tables hold timings,
    which are CPU numbers on the host backend. A table with no configs in this mode is skipped."""

    name: str
    title: str
    configs: Callable[[Context], Iterable[Mapping[str, Any]]]
    measure: Callable[[Context, Row], Mapping[str, Any]] | None = None
    plots: tuple[Plot, ...] = ()
    timed: bool = True


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """A prototype's bench. ``findings(ctx, tables)`` turns the measured tables (by name) into findings,
    built with :meth:`Context.finding`; ``options(parser)`` adds the bench's own command-line options;
    ``reads`` names prototypes whose findings this bench uses (the lab runs those first)."""

    proto: str
    description: str
    questions: tuple[Question, ...]
    tables: tuple[TableSpec, ...]
    findings: Callable[[Context, dict[str, bench.Table]], list[kb.Finding]]
    options: Callable[[argparse.ArgumentParser], None] | None = None
    reads: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Timing:
    """Timing statistics of one configuration: ``gpu`` is the backend's own timer (GPU time on Metal,
    wall time on the host), ``wall`` wall-clock time of the same runs (what peers are compared with)."""

    gpu: bench.TimingStats
    wall: bench.TimingStats


class Context:
    """What a bench's functions receive: parsed options, backend and device, mode, peaks, helpers."""

    def __init__(self, spec: BenchSpec, args: argparse.Namespace):
        import attention_proto as ap

        self.spec = spec
        self.args = args
        self.backend: str = args.backend
        self.device: dict[str, Any] = ap.device_info(self.backend).as_dict()
        self.peaks = bench.device_peaks(self.device)
        self.mode = "sweep" if args.sweep else "quick" if args.quick else "default"
        self.out: Path = args.out
        self.rng = np.random.default_rng(args.seed)
        on_gpu = not self.is_host
        self.samples = args.samples or (20 if on_gpu else 3)
        self.repeat = args.repeat or (5 if on_gpu else 1)
        self._cached: tuple[Any, Any] = (None, None)
        self.tables: dict[str, bench.Table] = {}  # measured so far: later tables may derive from them

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()``, reused while ``key`` stays the same: one set of inputs alive at a time (configs
        come grouped, e.g. by head dim and dtype)."""
        if self._cached[0] != key:
            self._cached = (None, None)  # free the old inputs before making the new ones
            self._cached = (key, make())
        return self._cached[1]

    @property
    def is_host(self) -> bool:
        """True off the Apple GPU: every time measured here is a CPU time."""
        return self.device.get("backend") != "metal"

    def time(self, call: Callable[[int], Any]) -> Timing:
        """Times ``call(repeat)``, which runs the kernel ``repeat`` times in one submission and returns its
        DispatchTiming: one warm-up call (it also compiles), then ``self.samples`` timed calls."""
        call(1)
        gpu, wall = [], []
        for _ in range(self.samples):
            t = call(self.repeat)
            gpu.append(float(t.seconds))
            wall.append(float(t.wall_seconds))
        return Timing(bench.TimingStats.from_samples(gpu, "backend"), bench.TimingStats.from_samples(wall, "wall"))

    def perf(self, timing: Timing, flops: float, dtype: Any) -> Row:
        """Table columns of a timing: median (p20, p80) in ms by the backend's timer, wall median, TFLOP/s
        and percent of the device's peak (None off the Apple GPU)."""
        tflops = bench.tflops(flops, timing.gpu.median)
        return {"median_ms": 1e3 * timing.gpu.median, "p20_ms": 1e3 * timing.gpu.p20, "p80_ms": 1e3 * timing.gpu.p80,
                "wall_ms": 1e3 * timing.wall.median, "tflops": tflops,
                "pct_peak": self.peaks.percent_of_peak(tflops, dtype)}

    def question(self, qid: str) -> Question:
        """The spec's question with id ``qid`` (KeyError naming the known ones)."""
        for q in self.spec.questions:
            if q.id == qid:
                return q
        raise KeyError(f"{self.spec.proto} has no question {qid!r} (questions: {[q.id for q in self.spec.questions]})")

    def finding(self, question: str, kind: str, metric: str, value: float, unit: str, config: Mapping[str, Any],
                claim: str, evidence: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                cpu_label: str = HOST_EMULATION_LABEL) -> kb.Finding:
        """A finding answering ``question`` on this device. The id comes from ``config`` alone (``extra``,
        e.g. the winning tile, joins the stored config), so a re-run replaces it; performance claims
        measured off the Apple GPU start with ``cpu_label`` (by default the host-backend emulation's;
        a bench timing native CPU code, e.g. a Rust framework's CPU backend, names that instead)."""
        q = self.question(question)
        if kind not in q.kinds:
            raise ValueError(f"question {question!r} is answered by {q.kinds} findings, not {kind!r}")
        if kind == "performance" and self.is_host:
            claim = f"CPU result ({cpu_label}, not an Apple GPU): " + claim
        return kb.Finding(id=kb.make_id(self.spec.proto, metric, config, self.backend), proto=self.spec.proto,
                          kind=kind, question=question, claim=claim, metric=metric, value=value, unit=unit,
                          config={**config, **(extra or {})}, device=self.device, evidence=dict(evidence))

    def table_path(self, name: str) -> str:
        """How findings cite a saved table: ``<proto>/<name>.json`` (relative to the findings folder)."""
        return f"{self.spec.proto}/{name}.json"


def best_rows(table: bench.Table, group: Sequence[str], key: str) -> list[Row]:
    """The row with the largest ``key`` for each distinct combination of the ``group`` columns (rows
    without a numeric ``key``, e.g. failed ones, are skipped), sorted by the group."""
    best: dict[tuple[Any, ...], Row] = {}
    for row in table.rows:
        value = row.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            continue
        g = tuple(row.get(c) for c in group)
        if g not in best or value > best[g][key]:
            best[g] = row
    return [best[g] for g in sorted(best, key=lambda g: tuple(str(v) for v in g))]


def _draw(plot: Plot, table: bench.Table, ctx: Context, stem: str) -> list[Path]:
    groups = sorted({tuple(r.get(c) for c in plot.per) for r in table.rows}, key=lambda g: tuple(map(str, g)))
    paths = []
    what = "CPU emulation " if ctx.is_host and table.meta.get("timed") else ""
    for g in groups:
        rows = [r for r in table.rows if tuple(r.get(c) for c in plot.per) == g]
        suffix = "".join(f"_{c}{v}" if isinstance(v, (int, float)) else f"_{v}" for c, v in zip(plot.per, g))
        where = " ".join(f"{c}={v}" for c, v in zip(plot.per, g))
        title = f"{plot.title or table.title}: {what}{plot.value or plot.y}" + (f", {where}" if where else "")
        path = ctx.out / f"{stem}{suffix}.png"
        if plot.kind == "heatmap":
            paths.append(plots.heatmap(rows, plot.x, plot.y, plot.value or "", title, path, ctx.device))
        elif plot.kind == "line":
            paths.append(plots.line_chart(rows, plot.x, plot.y, title, path, ctx.device, series=plot.series,
                                          logx=plot.logx))
        elif plot.kind == "bar":
            paths.append(plots.bar_chart(rows, plot.x, plot.y, title, path, ctx.device, series=plot.series))
        else:
            raise ValueError(f"unknown plot kind {plot.kind!r} (heatmap, line, bar)")
    return paths


def parser(spec: BenchSpec) -> argparse.ArgumentParser:
    """The command line of one bench: the common options and the bench's own."""
    examples = "".join(f"\n  attention-proto bench {spec.proto} {e}" for e in spec.examples)
    questions = "\n".join(textwrap.fill(f"{q.id}: {q.text}" + ("" if q.needs_gpu else " (answerable on any backend)"),
                                        88, initial_indent="  ", subsequent_indent="    ") for q in spec.questions)
    p = argparse.ArgumentParser(
        prog=f"attention-proto bench {spec.proto}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(spec.description, 88) + "\n\nquestions:\n" + questions,
        epilog=("examples:" + examples) if examples else None)
    p.add_argument("--quick", action="store_true", help="a small, fast subset (a few minutes on the host backend)")
    p.add_argument("--sweep", action="store_true", help="the full parameter sweep")
    p.add_argument("--backend", default=None, help="backend to run on (default: the best available)")
    p.add_argument("--findings", type=Path, default=None,
                   help=f"findings file (default: ${kb.ENV_PATH} or findings/findings.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="folder for tables and plots (default: <findings dir>/<proto>)")
    p.add_argument("--samples", type=int, default=None, help="timed samples per configuration (default: 20 on metal, 3 on host)")
    p.add_argument("--repeat", type=int, default=None,
                   help="kernel runs per sample, in one submission (default: 5 on metal, 1 on host)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    if spec.options is not None:
        spec.options(p)
    return p


def _parse(spec: BenchSpec, argv: Sequence[str] | None) -> argparse.Namespace:
    import attention_proto as ap

    args = parser(spec).parse_args(list(argv) if argv is not None else None)
    available = ap.backends()
    args.backend = args.backend or available[0]
    if args.backend not in available:
        raise SystemExit(f"attention-proto bench {spec.proto}: backend {args.backend!r} is not available here "
                         f"(available: {', '.join(available)})")
    for name in ("samples", "repeat"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"attention-proto bench {spec.proto}: --{name} must be >= 1")
    args.findings = args.findings or kb.default_path()
    args.out = args.out or args.findings.parent / spec.proto
    return args


def count_configs(spec: BenchSpec, argv: Sequence[str] | None) -> int:
    """How many configurations the bench will measure with these options (derived tables aside): what
    a larger run's progress bar counts."""
    ctx = Context(spec, _parse(spec, argv))
    return sum(len(list(t.configs(ctx))) for t in spec.tables if t.measure is not None)


def run_bench(spec: BenchSpec, argv: Sequence[str] | None, progress: bench.Progress | None = None) -> int:
    """Runs a bench from its command line; returns the exit status (1 when a configuration failed).
    ``progress``: a larger run's bar to advance per configuration instead of one bar per table."""
    args = _parse(spec, argv)
    ctx = Context(spec, args)
    print(f"{spec.proto} bench ({ctx.mode}) on {kb.device_label(ctx.device)}")
    print(f"peak: {ctx.peaks.source}")
    if ctx.is_host:
        print("note: host-backend times are CPU times of the MSL emulation, never Apple-GPU results")
    ctx.out.mkdir(parents=True, exist_ok=True)

    tables: dict[str, bench.Table] = {}
    failed: list[str] = []
    for t in spec.tables:
        meta = {"device": ctx.device, "mode": ctx.mode, "timed": t.timed, "peak": ctx.peaks.source}
        configs = [dict(c) for c in t.configs(ctx)]
        if not configs:  # a table this mode does not run
            continue
        if t.measure is None:
            table = bench.Table(configs, title=t.title, meta=meta)
        else:
            measure = t.measure
            table = bench.Sweep(configs, lambda c, m=measure: m(ctx, c), desc=t.title, meta=meta,
                                progress=progress).run()
        tables[t.name] = ctx.tables[t.name] = table
        table.print()
        print()
        table.save(ctx.out, t.name)
        for plot in t.plots:
            for path in _draw(plot, table, ctx, t.name):
                print(f"plot: {path}")
        failed += [f"{t.name}: {bench.format_cell({k: v for k, v in r.items() if k != 'error'})}: {r['error']}"
                   for r in table.rows if "error" in r]
    findings = spec.findings(ctx, tables)
    path = kb.emit_many(findings, args.findings)
    answered = {f.question for f in findings}
    print(f"{len(findings)} findings -> {path}; tables and plots -> {ctx.out}")
    for q in spec.questions:
        state = "answered" if q.id in answered else "not answered"
        if q.id in answered and q.needs_gpu and ctx.is_host:
            state += " (with CPU numbers: the Apple-GPU answer needs --backend metal on a Mac)"
        print(f"  {q.id}: {state}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0
