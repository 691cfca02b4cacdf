"""``attention-proto lab``: the whole knowledge base from one command.

Stages, in order, on one backend (the best available unless ``--backend``):

1. smoke: device facts, one tiny kernel checked exactly, zero copy for package arrays, copies counted for
   others (Metal), a timer sanity check. A failure stops the run, saying what failed and what to report.
2. numerics: the test suite's backend-parametrised tests on this backend (pytest in a process of its own;
   the suite ships with the package), the output in ``numerics.log``.
3. every prototype's bench (``--quick`` for the quick form), in an order that respects what each reads
   from the others, each bench's output in ``<proto>/bench.log``. Resumable: a bench whose findings for
   this device and package version are already in the findings file is skipped unless ``--force``.
4. the findings validated, then a summary: per prototype, each question answered or not on this device.
5. one report, ``report.md``, and the findings file, under ``--out``.

One progress bar covers stages 2 and 3, with an estimate of the time left. On the host backend every
timing is a CPU number, and the summary says which questions need a Mac for their Apple-GPU answer.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attention_proto import bench, kb

SMOKE_SOURCE = """
#include <metal_stdlib>
using namespace metal;
kernel void lab_smoke(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                      constant uint& n [[buffer(2)]], uint i [[thread_position_in_grid]]) {
    if (i < n) y[i] = 2.0f * x[i] + 1.0f;
}
"""


@dataclasses.dataclass
class Stage:
    """What one stage of the run did: ``state`` is "ok", "failed", "skipped" or "done before"."""

    name: str
    state: str
    detail: str = ""
    seconds: float = 0.0


class SmokeFailure(Exception):
    """A smoke check failed: nothing after it can be trusted on this device."""


def smoke(backend: str) -> list[str]:
    """Runs the smoke checks; returns one line per passed check, raises SmokeFailure at the first failure."""
    import attention_proto as ap

    lines = []
    info = ap.device_info(backend)
    if info.backend != backend:
        raise SmokeFailure(f"device facts: asked for backend {backend!r}, got {info.backend!r}")
    if backend == "metal" and not info.family.startswith("apple"):
        raise SmokeFailure(f"device facts: {info.name} reports GPU family {info.family!r}, not an Apple GPU family")
    lines.append(f"device: {kb.device_label(info.as_dict())}, threadgroup memory {info.max_threadgroup_memory} B, "
                 f"SIMD width {info.simd_width}")
    kernel = ap.Kernel(SMOKE_SOURCE, "lab_smoke")
    n = 4096 + 7  # a partial last threadgroup
    x = ap.empty(n, np.float32)
    x[...] = np.arange(n, dtype=np.float32) / 7
    y = ap.empty(n, np.float32)
    y[...] = np.nan
    t = kernel(x, y, np.uint32(n), grid=math.ceil(n / 256), threadgroup=256, backend=backend, repeat=3)
    if not np.array_equal(y, 2 * x + 1):
        bad = int(np.flatnonzero(~(y == 2 * x + 1))[0])
        raise SmokeFailure(f"tiny kernel: y[{bad}] = {y[bad]}, expected {2 * x[bad] + 1}")
    lines.append(f"tiny kernel: {n} elements exact ({kernel.info(backend).cache} pipeline)")
    if t.bytes_copied != 0:
        raise SmokeFailure(f"zero copy: package arrays were copied ({t.bytes_copied} bytes); the backend should wrap "
                           "them in place")
    lines.append("zero copy: package arrays used in place (0 bytes copied)")
    if backend == "metal":
        plain = np.zeros(n, np.float32)
        t2 = kernel(np.asarray(x).copy(), plain, np.uint32(n), grid=math.ceil(n / 256), threadgroup=256, backend=backend)
        if t2.bytes_copied == 0 or not np.array_equal(plain, 2 * x + 1):
            raise SmokeFailure(f"copies: numpy-owned arrays gave {t2.bytes_copied} bytes copied and "
                               f"{'right' if np.array_equal(plain, 2 * x + 1) else 'wrong'} results")
        lines.append(f"copies: numpy-owned arrays copied and counted ({t2.bytes_copied} bytes)")
    expected_timer = "gpu" if backend == "metal" else "wall"
    if t.timer != expected_timer or not (0 < t.seconds < 10 and math.isfinite(t.wall_seconds)):
        raise SmokeFailure(f"timer: {t.timer} timer read {t.seconds} s per run (wall {t.wall_seconds} s)")
    if backend == "metal" and t.seconds > t.wall_seconds * 1.5 + 1e-4:
        raise SmokeFailure(f"timer: GPU time {t.seconds} s exceeds the wall time {t.wall_seconds} s around it")
    lines.append(f"timer: {t.timer} time {t.seconds * 1e6:.1f} us per run, wall {t.wall_seconds * 1e6:.1f} us")
    return lines


def _tests_dir() -> Path | None:
    """The test suite: shipped with the package, or next to it in a source checkout."""
    import attention_proto as ap

    package = Path(ap.__file__).resolve().parent
    for candidate in (package / "_tests", package.parent.parent / "tests"):
        if (candidate / "conftest.py").is_file():
            return candidate
    return None


def numerics(backend: str, out: Path, progress: bench.Progress, k: str | None = None) -> Stage:
    """The backend-parametrised tests on `backend` (those matching the pytest -k expression `k`, if
    given), in a pytest process of their own; its output in numerics.log."""
    from attention_proto._lab_pytest import PREFIX

    tests = _tests_dir()
    if tests is None:
        return Stage("numerics", "skipped", "no test suite found next to the package")
    start = time.monotonic()
    log = out / "numerics.log"
    cmd = [sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider", "-p", "attention_proto._lab_pytest",
           "--aproto-backend", backend] + (["-k", k] if k else [])
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed: list[str] = []
    with open(log, "w", encoding="utf-8") as handle, \
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tests) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith(PREFIX):
                handle.write(line)
                continue
            _, what, rest = line.strip().split(" ", 2)
            if what == "collected":
                progress.total += int(rest)
            else:
                counts[what] += 1
                if what == "failed":
                    failed.append(rest)
                progress.update(note=rest.split("::")[-1][:60])
    detail = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped on {backend} " \
             f"(log: {log.name})"
    if failed:
        detail += "; first failures: " + ", ".join(failed[:3])
    ok = proc.returncode in (0, 5) and not failed  # 5: nothing selected
    return Stage("numerics", "ok" if ok else "failed", detail, time.monotonic() - start)


def bench_order(specs: dict[str, Any]) -> list[str]:
    """The prototypes in an order where every bench runs after the benches whose findings it reads."""
    order: list[str] = []

    def visit(proto: str, path: tuple[str, ...]) -> None:
        if proto in order or proto not in specs:
            return
        if proto in path:
            raise ValueError(f"benches read each other in a cycle: {' -> '.join(path + (proto,))}")
        for dep in specs[proto].reads:
            visit(dep, path + (proto,))
        order.append(proto)

    for proto in sorted(specs):
        visit(proto, ())
    return order


def _measured_here(finding: kb.Finding, device: dict[str, Any]) -> bool:
    return finding.device.get("backend") == device["backend"] and finding.device.get("name") == device["name"]


def question_rows(specs: dict[str, Any], findings: Sequence[kb.Finding], device: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per question of every bench: answered on this device or not."""
    on_host = device["backend"] != "metal"
    rows = []
    for proto, spec in specs.items():
        for q in spec.questions:
            n = sum(1 for f in findings if f.proto == proto and f.question == q.id and _measured_here(f, device))
            state = "answered" if n else "unanswered"
            if n and q.needs_gpu and on_host:
                state = "answered with CPU numbers (the Apple-GPU answer needs a Mac)"
            rows.append({"proto": proto, "question": q.id, "state": state, "findings": n, "text": q.text})
    return rows


def _report(out: Path, findings_path: Path, stages: list[Stage], rows: list[dict[str, Any]],
            device: dict[str, Any], args: argparse.Namespace) -> Path:
    from attention_proto.cli import render_report

    path = out / "report.md"
    findings = kb.load(findings_path) if findings_path.exists() else []
    stage_table = bench.Table([{"stage": s.name, "state": s.state, "seconds": round(s.seconds, 1), "detail": s.detail}
                               for s in stages])
    question_table = bench.Table([{k: r[k] for k in ("proto", "question", "state", "findings")} for r in rows])
    failed = [s for s in stages if s.state == "failed"]
    check_first = [f"- **{s.name}** failed: {s.detail}" for s in failed]
    if any(s.name == "numerics" for s in failed):
        check_first.append(f"- read `numerics.log`: benches after failed numerics checks are suspect")
    for s in failed:
        if s.name.startswith("bench "):
            check_first.append(f"- read `{s.name[6:]}/bench.log` for the failing configurations")
    lines = [
        f"# attention-proto lab: {kb.device_label(device)}", "",
        f"`attention-proto lab{' --quick' if args.quick else ''} --backend {device['backend']}`, "
        f"attention-proto {kb.package_version()}.", "",
    ]
    if device["backend"] != "metal":
        lines += ["> Every timing here is a CPU number from the host backend's emulation, never an Apple-GPU "
                  "result; questions that need an Apple GPU are answered on a Mac (`attention-proto lab` there).", ""]
    lines += ["## What to check first", ""] + (check_first or ["- nothing failed"]) + [""]
    lines += ["## Stages", "", stage_table.to_markdown(), "", "## Questions", "", question_table.to_markdown(), ""]
    body = render_report(findings, findings_path, path) if findings else "No findings.\n"
    path.write_text("\n".join(lines) + "\n" + body.replace("# attention-proto findings", "# Findings", 1),
                    encoding="utf-8")
    return path


def run(args: argparse.Namespace) -> int:
    """The lab; returns the exit status (0 when every stage passed)."""
    import attention_proto as ap
    from attention_proto.benchspec import count_configs, run_bench
    from attention_proto.cli import available_protos, bench_spec

    backend = args.backend or ap.backends()[0]
    if backend not in ap.backends():
        print(f"attention-proto lab: backend {backend!r} is not available here (available: "
              f"{', '.join(ap.backends())})", file=sys.stderr)
        return 1
    out = args.out or Path("lab") / (backend + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    findings_path = out / "findings.jsonl"
    device = ap.device_info(backend).as_dict()
    stages: list[Stage] = []

    print(f"attention-proto lab{' --quick' if args.quick else ''} on {kb.device_label(device)} -> {out}")
    start = time.monotonic()
    try:
        for line in smoke(backend):
            print(f"  smoke ok: {line}")
    except SmokeFailure as exc:
        print(f"smoke stage FAILED: {exc}\nNothing after it can be trusted on this device. Please report this "
              f"line with the output of `attention-proto info --json` and attention-proto "
              f"{kb.package_version()}.", file=sys.stderr)
        return 1
    stages.append(Stage("smoke", "ok", "device facts, tiny kernel, zero copy, timer", time.monotonic() - start))

    specs = {p: bench_spec(p) for p in available_protos()}
    order = [p for p in bench_order(specs) if not args.only or p in args.only]
    unknown = sorted(set(args.only or ()) - set(specs))
    if unknown:
        print(f"attention-proto lab: unknown prototype(s) {', '.join(unknown)} (available: {', '.join(specs)})",
              file=sys.stderr)
        return 1
    previous = kb.load(findings_path) if findings_path.exists() else []
    version = kb.package_version()
    argv_of = {p: ["--backend", backend, "--findings", str(findings_path), "--out", str(out / p)]
               + (["--quick"] if args.quick else []) for p in order}
    done = {p for p in order if not args.force and any(
        f.proto == p and f.version == version and _measured_here(f, device) for f in previous)}
    progress = bench.Progress(sum(count_configs(specs[p], argv_of[p]) for p in order if p not in done), "lab")
    if args.numerics != "none":
        stages.append(numerics(backend, out, progress, None if args.numerics == "all" else args.numerics))
        progress.write(f"numerics: {stages[-1].state}: {stages[-1].detail}")
    for proto in order:
        if proto in done:
            stages.append(Stage(f"bench {proto}", "done before", "findings for this device and version exist "
                                "(--force runs it again)"))
            progress.write(f"bench {proto}: done before, skipped")
            continue
        t0 = time.monotonic()
        (out / proto).mkdir(parents=True, exist_ok=True)
        log = out / proto / "bench.log"
        try:
            with open(log, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle), \
                    contextlib.redirect_stderr(handle):
                code = run_bench(specs[proto], argv_of[proto], progress=progress)
            state, detail = ("ok", f"log: {proto}/bench.log") if code == 0 else \
                ("failed", f"some configurations failed (log: {proto}/bench.log)")
        except Exception as exc:  # one bench must not stop the others
            state, detail = "failed", f"{type(exc).__name__}: {exc} (log: {proto}/bench.log)"
        stages.append(Stage(f"bench {proto}", state, detail, time.monotonic() - t0))
        progress.write(f"bench {proto}: {state} ({stages[-1].seconds:.0f} s)")
    progress.close()

    try:
        findings = kb.load(findings_path) if findings_path.exists() else []
        stages.append(Stage("findings", "ok", f"{len(findings)} valid findings in {findings_path.name}"))
    except kb.FindingError as exc:
        findings = []
        stages.append(Stage("findings", "failed", str(exc)))
    rows = question_rows({p: specs[p] for p in order}, findings, device)
    print("\nquestions on this device:")
    for r in rows:
        print(f"  {r['proto']}/{r['question']}: {r['state']}")
    report = _report(out, findings_path, stages, rows, device, args)
    print(f"\nreport: {report}\nfindings: {findings_path}")
    failed = [s for s in stages if s.state == "failed"]
    for s in failed:
        print(f"FAILED {s.name}: {s.detail}", file=sys.stderr)
    print(f"lab finished in {time.monotonic() - start:.0f} s")
    return 1 if failed else 0
