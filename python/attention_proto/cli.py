"""The ``attention-proto`` command: device info, benches, findings and the Markdown report."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import pkgutil
import sys
from importlib.metadata import PackageNotFoundError, version
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attention_proto import bench, kb

_HOST_NOTE = "host backend numbers are CPU timings of the MSL kernels, not Apple-GPU results"
# An id the flash attention bench writes on the host backend (the --help examples must run).
_EXAMPLE_ID = "flash_attention/min_fitting_tiles/host/limit=32768"


def _version() -> str:
    try:
        return version("attention-proto")
    except PackageNotFoundError:  # a source tree
        return "0.0.0+source"


class CliError(Exception):
    """A user-facing error: printed as ``attention-proto: error: <message>``, exit status 1."""


# --------------------------------------------------------------------------------------------------
# info


def cmd_info(args: argparse.Namespace) -> int:
    """Prints the usable backends and each one's device limits and roofline peaks."""
    import attention_proto as ap

    missing = "the compiled extension is not available ({}); install the package with `pip install .`"
    if not (hasattr(ap, "backends") and hasattr(ap, "device_info")):
        raise CliError(missing.format("attention_proto has no backends()/device_info()"))
    try:
        names = list(ap.backends())
        if args.backend and args.backend not in names:
            raise CliError(f"backend {args.backend!r} is not available here "
                           f"(available: {', '.join(names) or 'none'})")
        names = [args.backend] if args.backend else names
        devices = {name: ap.device_info(name).as_dict() for name in names}
    except ImportError as exc:
        raise CliError(missing.format(exc)) from None
    if args.json:
        print(json.dumps({"backends": names, "devices": devices}, indent=2))
        return 0
    print(f"backends (best first): {', '.join(names) or 'none'}")
    for name, info in devices.items():
        peaks = bench.device_peaks(info)
        print(f"\n[{name}] {kb.device_label(info)}")
        for key, value in info.items():
            if key == "extra":
                for extra_key, extra_value in (value or {}).items():
                    print(f"  {extra_key + ':':30} {extra_value}")
            else:
                print(f"  {key + ':':30} {value}")
        if peaks.fp32_tflops or peaks.bandwidth_gbps:
            print(f"  {'roofline:':30} FP32 {bench.format_cell(peaks.fp32_tflops)} TFLOP/s, "
                  f"FP16 {bench.format_cell(peaks.fp16_tflops)} TFLOP/s, "
                  f"{bench.format_cell(peaks.bandwidth_gbps)} GB/s ({peaks.source})")
        else:
            print(f"  {'roofline:':30} {peaks.source}")
        if info.get("backend") != "metal":
            print(f"  {'note:':30} {_HOST_NOTE}")
    return 0


# --------------------------------------------------------------------------------------------------
# bench


def available_protos() -> list[str]:
    """Names of the bench modules in ``attention_proto.benches`` (one per prototype), sorted."""
    from attention_proto import benches

    return sorted(m.name for m in pkgutil.iter_modules(benches.__path__) if not m.name.startswith("_"))


def bench_spec(proto: str) -> Any:
    """The ``SPEC`` (a ``benchspec.BenchSpec``) of ``attention_proto.benches.<proto>``; CliError if none."""
    protos = available_protos()
    if proto not in protos:
        raise CliError(f"unknown prototype {proto!r} (available: {', '.join(protos) or 'none yet'})")
    spec = getattr(importlib.import_module(f"attention_proto.benches.{proto}"), "SPEC", None)
    if spec is None:
        raise CliError(f"attention_proto.benches.{proto} declares no SPEC")
    return spec


def lab_main(args: argparse.Namespace) -> int:
    """Runs `attention-proto lab` (attention_proto.lab.run)."""
    from attention_proto import lab

    return lab.run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """Without a prototype: lists the benches and the questions each answers."""
    for proto in available_protos():
        spec = bench_spec(proto)
        print(f"{proto}: {spec.description.split(': ')[0]}")
        for q in spec.questions:
            print(f"  - {q.id}: {q.text}" + ("" if q.needs_gpu else " (any backend)"))
    print("\nrun one with `attention-proto bench PROTO [--quick | --sweep] [options]`; "
          "`attention-proto bench PROTO --help` lists its options")
    return 0


# --------------------------------------------------------------------------------------------------
# archive (prototype 4)


def cmd_archive(args: argparse.Namespace) -> int:
    """`archive build` / `archive check` (Metal only): see attention_proto.function_constants."""
    import attention_proto as ap
    from attention_proto import metal
    from attention_proto.protos import function_constants as fc

    if not metal.available():
        raise CliError(f"binary archives need the Metal backend (macOS with an Apple GPU); backends here: "
                       f"{', '.join(ap.backends())}")
    chosen = fc.variants(args.variants) if args.variants else None
    if args.action == "build":
        built = fc.archive_build(args.file, chosen or fc.DEFAULT_VARIANTS)
        print(f"{args.file}: {len(built['rows'])} pipelines in {sum(r['add_s'] for r in built['rows']):.2f} s, "
              f"{built['bytes']} bytes; the list in {args.file}.json")
        return 0
    if not Path(args.file).is_file():
        raise CliError(f"no binary archive at {args.file} (build one with `attention-proto archive build FILE`)")
    checked = fc.archive_check(args.file, chosen)
    bench.Table([{"variant": r["variant"], "cache": r["first"]["cache"], "ms": 1e3 * r["first"]["wall_s"]}
                 for r in checked["rows"]]).print()
    print(f"{len(checked['rows']) - checked['misses']} of {len(checked['rows'])} pipelines created from the "
          "archive alone (FailOnBinaryArchiveMiss)")
    return 1 if checked["misses"] else 0


# --------------------------------------------------------------------------------------------------
# findings


def _findings_path(args: argparse.Namespace) -> Path:
    return args.findings if args.findings is not None else kb.default_path()


def _load(args: argparse.Namespace) -> tuple[Path, list[kb.Finding]]:
    path = _findings_path(args)
    if not path.exists():
        raise CliError(f"no findings file at {path} (run a bench, or pass --findings PATH)")
    return path, kb.load(path)


def _value(finding: kb.Finding) -> str:
    return f"{bench.format_cell(finding.value)} {finding.unit}".strip()


def cmd_findings_list(args: argparse.Namespace) -> int:
    """Prints the findings matching the filters as an aligned table."""
    path, findings = _load(args)
    chosen = kb.select(findings, proto=args.proto, kind=args.kind, backend=args.backend,
                       device_name=args.device)
    rows = [{"id": f.id, "kind": f.kind, "value": _value(f), "backend": f.device["backend"],
             "device": f.device["name"]} for f in chosen]
    print(f"{len(chosen)} of {len(findings)} findings in {path}")
    if rows:
        bench.Table(rows).print()
    if any(kb.is_cpu_result(f) for f in chosen):
        print(f"note: {_HOST_NOTE}")
    return 0


def cmd_findings_show(args: argparse.Namespace) -> int:
    """Prints one finding as JSON with its "measured on" line."""
    path, findings = _load(args)
    for finding in findings:
        if finding.id == args.id:
            print(json.dumps(finding.to_dict(), indent=2, ensure_ascii=False))
            print(f"measured on: {kb.measured_on(finding)}")
            return 0
    near = [f.id for f in findings if args.id.lower() in f.id.lower()][:10]
    hint = f"; ids containing it: {', '.join(near)}" if near else ""
    raise CliError(f"no finding with id {args.id!r} in {path}{hint}")


def cmd_findings_validate(args: argparse.Namespace) -> int:
    """Checks every line of the findings file; exit status 1 on the first bad line."""
    try:
        path, findings = _load(args)
    except kb.FindingError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {len(findings)} valid findings in {path}")
    return 0


def _summary_lines(findings: Sequence[kb.Finding]) -> list[str]:
    lines = []
    for proto, kinds in kb.group(findings).items():
        lines.append(f"  {proto}")
        for kind, items in kinds.items():
            lines.append(f"    {kind} ({len(items)})")
            for f in items:
                mark = "[CPU result, not Apple GPU] " if kb.is_cpu_result(f) else ""
                lines.append(f"      - {mark}{f.claim} [{_value(f)}] · {kb.device_label(f.device)}")
    return lines


def cmd_findings_summary(args: argparse.Namespace) -> int:
    """Prints findings grouped by prototype and kind, Apple-GPU results apart from everything else."""
    path, findings = _load(args)
    apple, other = kb.split_apple_gpu(findings)
    print(f"{len(findings)} findings in {path}\n")
    print("== Apple GPU results (metal backend) ==")
    print("\n".join(_summary_lines(apple)) or "  none yet: no finding was measured on an Apple GPU")
    print("\n== Other backends (not Apple GPU; performance numbers here are CPU results) ==")
    print("\n".join(_summary_lines(other)) or "  none")
    return 0


# --------------------------------------------------------------------------------------------------
# report


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _evidence_text(evidence: dict[str, Any]) -> str:
    parts = []
    if "median" in evidence:
        stats = f"median {bench.format_cell(evidence['median'])}"
        if "p20" in evidence and "p80" in evidence:
            stats += f" (p20 {bench.format_cell(evidence['p20'])}, p80 {bench.format_cell(evidence['p80'])})"
        if evidence.get("timer"):  # timing statistics (TimingStats.evidence) are in seconds
            stats += f" s, {evidence['timer']} timer"
        count = evidence.get("count", len(evidence.get("samples", [])))
        parts.append(stats + (f", n={count}" if count else ""))
    for key in ("test", "table"):
        if key in evidence:
            parts.append(f"{key}: `{evidence[key]}`")
    return "; ".join(parts) or json.dumps(evidence)


def _finding_markdown(finding: kb.Finding) -> list[str]:
    config = ", ".join(f"{k}={bench.format_cell(v)}" for k, v in finding.config.items())
    lines = [f"#### {finding.claim}", ""]
    if kb.is_cpu_result(finding):
        lines += ["> **CPU result** (not an Apple-GPU number): measured on the "
                  f"{finding.device['backend']} backend.", ""]
    lines += [
        f"- **{finding.metric}**: {_value(finding)} ({finding.kind})",
        f"- **measured on**: {kb.measured_on(finding)}",
        f"- config: {config or '-'}",
        f"- evidence: {_evidence_text(finding.evidence)}",
        f"- id: `{finding.id}`",
        "",
    ]
    return lines


def _tables_markdown(directory: Path) -> list[str]:
    lines: list[str] = []
    for path in sorted(directory.glob("*.json")):
        try:
            table = bench.Table.from_json(path)
        except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
            lines += [f"- skipped `{path.name}`: {exc}", ""]
            continue
        lines += [f"#### {_md_escape(table.title or path.stem)}", "",
                  f"measured on: {table.measured_on() or 'unknown (the table names no device)'} "
                  f"· source `{path.name}`", "", table.to_markdown(), ""]
    return lines


def render_report(findings: Sequence[kb.Finding], findings_path: Path, out_path: Path) -> str:
    """The Markdown report: an overview, then per prototype its findings (each with a "measured on"
    line), the JSON tables and the PNG plots found in ``<findings dir>/<proto>/``."""
    base = findings_path.parent
    grouped = kb.group(findings)
    protos = sorted(set(grouped) | {d.name for d in base.iterdir() if d.is_dir()
                                    and (any(d.glob("*.json")) or any(d.glob("*.png")))})
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# attention-proto findings", "",
        f"{len(findings)} findings from `{findings_path}`, generated {stamp} "
        f"by attention-proto {kb.package_version()}.", "",
        f"> Every finding says where it was measured. {_HOST_NOTE[0].upper() + _HOST_NOTE[1:]}; "
        "only findings from the metal backend are Apple-GPU results.", "",
        "| prototype | findings | Apple GPU (metal) | CPU results | other |",
        "| --- | --- | --- | --- | --- |",
    ]
    for proto in protos:
        items = [f for kinds in grouped.get(proto, {}).values() for f in kinds]
        apple = sum(kb.is_apple_gpu(f) for f in items)
        cpu = sum(kb.is_cpu_result(f) for f in items)
        lines.append(f"| [{proto}](#{proto}) | {len(items)} | {apple} | {cpu} | {len(items) - apple - cpu} |")
    lines.append("")
    for proto in protos:
        lines += [f"## {proto}", ""]
        for kind, items in grouped.get(proto, {}).items():
            lines += [f"### {kind}", ""]
            for finding in items:
                lines += _finding_markdown(finding)
        directory = base / proto
        if directory.is_dir():
            tables = _tables_markdown(directory)
            if tables:
                lines += ["### tables", ""] + tables
            plots = sorted(directory.glob("*.png"))
            if plots:
                lines += ["### plots", ""]
                for png in plots:
                    link = Path(os.path.relpath(png, out_path.parent)).as_posix()
                    lines += [f"![{png.stem}]({link})", ""]
    return "\n".join(lines).rstrip() + "\n"


def cmd_report(args: argparse.Namespace) -> int:
    """Writes the Markdown report of all findings, tables and plots."""
    path, findings = _load(args)
    out = args.out if args.out is not None else path.parent / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(findings, path, out), encoding="utf-8")
    print(f"wrote {out} ({len(findings)} findings)")
    return 0


# --------------------------------------------------------------------------------------------------
# parser


def _wrap(text: str) -> str:
    """Wraps help prose to the terminal-friendly width (epilogs stay as written)."""
    return "\n".join(textwrap.fill(par, 88) for par in text.split("\n"))


def cmd_generate(args: argparse.Namespace) -> int:
    """Regenerates prototype 5's sources; reports each generator's status."""
    from attention_proto import generators

    try:
        status = generators.generate(args.generator, out=args.out)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return 0 if any(not s.startswith("unavailable") for s in status.values()) else 1


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  attention-proto {line}" for line in lines)


def _command(
    sub: Any, name: str, summary: str, description: str, examples: Sequence[str],
    handler: Any = None, parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Adds one subcommand with its one-line summary, wrapped description and examples."""
    parser = sub.add_parser(name, parents=list(parents), formatter_class=_formatter, help=summary,
                            description=_wrap(description), epilog=_examples(*examples))
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``attention-proto`` with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="attention-proto", formatter_class=_formatter,
        description=_wrap("Attention-kernel prototypes for Apple-Silicon GPUs: device info, benches, "
                          "knowledge-base findings and reports.\nNote: " + _HOST_NOTE + "."),
        epilog=_examples("lab --quick --only flash_attention --numerics none", "info",
                         "bench flash_attention --quick --head-dims 64 --seq 64", "findings summary",
                         "report --out report.md"),
    )
    parser.add_argument("--version", action="version", version=f"attention-proto {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    findings_opt = argparse.ArgumentParser(add_help=False)
    findings_opt.add_argument("--findings", type=Path, metavar="PATH",
                              help=f"findings file (default: ${kb.ENV_PATH} or findings/findings.jsonl)")

    info = _command(
        sub, "info", "show backends, device limits and roofline peaks",
        "Show the backends usable on this machine (best first), each one's device limits (threadgroup "
        "memory, SIMD width, ...) and the roofline peaks used for percent-of-peak. The host backend is "
        "the CPU: it has no Apple-GPU peak.",
        ["info", "info --backend host --json"], cmd_info)
    info.add_argument("--backend", metavar="NAME", help="only this backend (e.g. host, metal)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    _command(
        sub, "bench", "run one prototype's bench",
        "Run a prototype's bench: `attention-proto bench PROTO [options]`. It prints tables, saves tables and "
        "plots under --out and emits findings. Every bench takes --quick, --sweep, --backend, --findings, "
        "--out, --samples, --repeat and --seed, plus options of its own: `attention-proto bench PROTO --help` "
        "lists them. Without PROTO, list the benches and the questions they answer.",
        ["bench", "bench flash_attention --help", "bench flash_attention --quick --head-dims 64 --seq 64"],
        cmd_bench)

    lab = _command(
        sub, "lab", "build the whole knowledge base on one device",
        "Run everything on one backend: a smoke check of the device, the numerics checks (the test suite's "
        "backend-parametrised tests), every prototype's bench, then validate the findings, say per prototype "
        "which questions are answered on this device, and write report.md and findings.jsonl under --out. "
        "Resumable: a bench whose findings for this device and version exist is skipped unless --force. "
        "On the host backend every timing is a CPU number; questions that need an Apple GPU are answered on "
        "a Mac.",
        ["lab --quick --only flash_attention --numerics none", "lab --quick", "lab --backend metal"], lab_main)
    lab.add_argument("--quick", action="store_true", help="each bench's quick form (minutes on the host backend)")
    lab.add_argument("--backend", metavar="NAME", help="backend to run on (default: the best available)")
    lab.add_argument("--only", nargs="+", metavar="PROTO", help="only these prototypes' benches")
    lab.add_argument("--out", type=Path, metavar="DIR",
                     help="folder for findings, tables, plots, logs and report.md (default: lab/<backend>[-quick])")
    lab.add_argument("--force", action="store_true", help="run benches whose findings already exist again")
    lab.add_argument("--numerics", default="all", metavar="EXPR",
                     help="which numerics checks: 'all' (default), 'none', or a pytest -k expression")

    arc = _command(
        sub, "archive", "prebuild or check a Metal binary archive of the flash kernel's variants",
        "Prototype 4: `build FILE` puts the pipelines of the flash kernel's variants ('default': prototype 1's "
        "default tiles, 24 pipelines; 'all': the 72 of attention_proto.function_constants.VARIANTS) in a Metal "
        "binary archive and lists them in FILE.json; `check FILE` creates each in a fresh process from the archive "
        "alone (FailOnBinaryArchiveMiss), exit status 1 on a miss. Both need the Metal backend.",
        ["archive build flash.metallib --variants all", "archive check flash.metallib"])
    asub = arc.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, summary in (("build", "build an archive (replacing FILE)"), ("check", "check FILE loads alone")):
        a = _command(asub, action, summary, summary + ".", [f"archive {action} flash.metallib"], cmd_archive)
        a.add_argument("file", metavar="FILE", help="the binary archive")
        a.add_argument("--variants", choices=("default", "all"), default=None,
                       help="which variants (default: build 'default'; check those FILE.json lists)")

    fnd = _command(
        sub, "findings", "list, show, validate or summarise findings",
        "Work with the knowledge-base findings file (JSON lines, one finding a line).",
        ["findings list --proto flash_attention --kind performance",
         f"findings show {_EXAMPLE_ID}", "findings validate", "findings summary"])
    fsub = fnd.add_subparsers(dest="action", metavar="ACTION", required=True)
    flist = _command(
        fsub, "list", "list findings (filterable)",
        "List findings as a table: id, kind, value, backend and device.",
        ["findings list --backend host", "findings list --backend metal --device 'M4 Pro'"], cmd_findings_list,
        [findings_opt])
    flist.add_argument("--proto", help="only this prototype")
    flist.add_argument("--kind", choices=kb.KINDS, help="only this kind")
    flist.add_argument("--backend", help="only this backend (host, metal)")
    flist.add_argument("--device", metavar="NAME", help="only devices whose name contains NAME")
    show = _command(
        fsub, "show", "show one finding", "Show one finding as JSON, with the device it was measured on.",
        [f"findings show {_EXAMPLE_ID}"], cmd_findings_show, [findings_opt])
    show.add_argument("id", metavar="ID", help="the finding's id (see `findings list`)")
    _command(
        fsub, "validate", "check the file's schema",
        "Check every line of the findings file against the schema; report the first bad line with its "
        "line number and reason. Exit status 1 when invalid.",
        ["findings validate", "findings validate --findings findings/findings.jsonl"], cmd_findings_validate,
        [findings_opt])
    _command(
        fsub, "summary", "findings grouped by prototype and kind",
        "Summarise findings by prototype and kind. Apple-GPU (metal backend) results come first; "
        "performance findings from other backends are labelled CPU results and never appear under the "
        "Apple GPU heading.",
        ["findings summary"], cmd_findings_summary, [findings_opt])

    rep = _command(
        sub, "report", "write a Markdown report",
        "Write one Markdown file of all findings grouped by prototype, each with a 'measured on' line, "
        "plus the tables (<findings dir>/<proto>/*.json, rendered as Markdown) and plots "
        "(<findings dir>/<proto>/*.png, linked) saved by the benches.",
        ["report", "report --out report.md"], cmd_report, [findings_opt])
    rep.add_argument("--out", type=Path, metavar="FILE",
                     help="Markdown file to write (default: <findings dir>/report.md)")

    gen = _command(
        sub, "generate", "regenerate prototype 5's generated MSL",
        "Regenerate the GEMM, softmax and attention sources of CubeCL, Slang, TileLang and tinygrad into "
        "--out/<generator>/ (with a manifest of the launches each generator reports). Each generator is an "
        "optional dependency (pip extras slang, tilelang, tinygrad; CubeCL needs cargo): a missing one is "
        "reported and skipped. Exit status 1 when none of the asked generators is available.",
        ["generate", "generate --generator tinygrad cubecl"], cmd_generate)
    gen.add_argument("--generator", nargs="+", metavar="NAME", help="only these (cubecl, slang, tilelang, tinygrad)")
    gen.add_argument("--out", type=Path, default=Path("shaders/generated"), metavar="DIR",
                     help="folder to write into (default: shaders/generated, run from the source checkout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attention-proto`` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        # `bench PROTO ...`: the bench's own command line takes everything after the name (its --help too)
        if len(args_list) >= 2 and args_list[0] == "bench" and not args_list[1].startswith("-"):
            from attention_proto.benchspec import run_bench

            return run_bench(bench_spec(args_list[1]), args_list[2:])
        args = build_parser().parse_args(args_list)
        return args.handler(args)
    except (CliError, kb.FindingError) as exc:
        print(f"attention-proto: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
