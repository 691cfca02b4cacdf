"""The attention-proto command line: help texts, info, bench dispatch, findings and the report."""

from __future__ import annotations

import shlex
import sys
import types

import pytest

import attention_proto
from attention_proto import bench, benches, cli, kb

HOST = {"backend": "host", "name": "AMD EPYC 7B13", "family": "cpu", "max_threadgroup_memory": 32768,
        "simd_width": 32, "max_threads_per_threadgroup": 1024, "compute_units": 2,
        "unified_memory": True, "extra": {"compiler": "clang 18"}}
METAL = {"backend": "metal", "name": "Apple M4", "family": "apple9"}


def make_finding(id: str, proto: str = "flash_attention", kind: str = "performance",
                 device: dict | None = None, claim: str = "Br=32 is fastest for D=64.") -> kb.Finding:
    return kb.Finding(id=id, proto=proto, kind=kind, claim=claim, metric="tflops", value=0.0125,
                      unit="TFLOP/s", config={"D": 64, "causal": True}, device=dict(device or HOST),
                      evidence={"median": 0.002, "p20": 0.0019, "p80": 0.0021, "count": 20,
                                "timer": "wall"},
                      created="2025-01-31T12:00:00Z", version="0.1.0")


@pytest.fixture
def findings_file(tmp_path):
    path = tmp_path / "findings" / "findings.jsonl"
    kb.emit_many([
        make_finding("fa/host/perf"),
        make_finding("fa/host/num", kind="numerics", claim="FP16 output is within 2e-3 of FP64."),
        make_finding("fa/metal/perf", device=METAL, claim="M4 reaches 90% of peak."),
        make_finding("pa/host/perf", proto="paged_attention", claim="V2 wins beyond 4096 keys."),
    ], path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        ([], "device info, benches"),
        (["info"], "device limits"),
        (["bench"], "--help` lists them"),
        (["findings"], "knowledge-base findings file"),
        (["findings", "list"], "id, kind, value"),
        (["findings", "show"], "measured on"),
        (["findings", "validate"], "line number"),
        (["findings", "summary"], "labelled CPU results"),
        (["report"], "Markdown"),
    ],
)
def test_every_help_explains_itself(capsys, argv, expect):
    with pytest.raises(SystemExit) as info:
        cli.main(argv + ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: attention-proto") and "example" in out
    assert expect in " ".join(out.split())


def test_info_shows_backends_limits_and_no_gpu_peak_for_the_host(capsys, monkeypatch):
    monkeypatch.setattr(attention_proto, "backends", lambda: ["host"], raising=False)
    monkeypatch.setattr(attention_proto, "device_info",
                        lambda name=None: types.SimpleNamespace(as_dict=lambda: dict(HOST)), raising=False)
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "backends (best first): host" in out
    assert "host backend · AMD EPYC 7B13 (CPU timings, not Apple GPU)" in out
    assert "max_threadgroup_memory:" in out and "32768" in out and "compiler:" in out
    assert "roofline:" in out and "n/a" in out
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0 and '"backends": [\n    "host"\n  ]' in out
    code, _, err = run(capsys, "info", "--backend", "metal")
    assert code == 1 and "'metal' is not available" in err


def test_info_without_the_extension_says_how_to_get_it(capsys, monkeypatch):
    monkeypatch.delattr(attention_proto, "backends", raising=False)
    code, _, err = run(capsys, "info")
    assert code == 1 and "pip install ." in err


def test_info_on_the_real_backends(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0 and "backends (best first):" in out and "max_threadgroup_memory:" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("attention-proto ")


def test_bench_lists_protos_and_their_questions(capsys, fake_bench):
    assert "fake_proto" in cli.available_protos()
    code, out, _ = run(capsys, "bench")
    assert code == 0 and "fake_proto: A fake bench" in out
    assert "- biggest: How many bytes does the tile take? (any backend)" in out


def test_bench_help_shows_its_own_options_and_questions(capsys, fake_bench):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "fake_proto", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: attention-proto bench fake_proto")
    assert "--tile TILE" in out and "--quick" in out and "--samples" in out
    assert "biggest: How many bytes" in out and "attention-proto bench fake_proto --quick --tile 16" in out


def test_bench_options_work_without_double_dash(capsys, fake_bench, tmp_path):
    path = tmp_path / "f.jsonl"
    code, out, _ = run(capsys, "bench", "fake_proto", "--quick", "--tile", "32", "--backend", "host",
                       "--findings", str(path))
    assert code == 0
    assert "biggest: answered" in out and "speed: not answered" in out
    (finding,) = kb.load(path)
    assert finding.value == 4 * 32 * 32 and finding.question == "biggest" and finding.device["backend"] == "host"
    saved = bench.Table.from_json(tmp_path / "fake_proto" / "sizes.json")
    assert saved.rows == [{"tile": 32, "mode": "quick", "bytes": 4096}]
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "fake_proto", "--tile", "x"])
    assert info.value.code == 2 and "invalid int value" in capsys.readouterr().err
def test_findings_validate_good_and_corrupt(capsys, findings_file):
    code, out, _ = run(capsys, "findings", "validate", "--findings", str(findings_file))
    assert code == 0 and "ok: 4 valid findings" in out
    with open(findings_file, "a") as handle:
        handle.write('{"id": "x", "kind": "speed"}\n')
    code, _, err = run(capsys, "findings", "validate", "--findings", str(findings_file))
    assert code == 1 and "findings.jsonl:5: field" in err
    code, _, err = run(capsys, "findings", "validate", "--findings", str(findings_file.parent / "no.jsonl"))
    assert code == 1 and "no findings file" in err


def test_findings_list_and_show(capsys, findings_file):
    code, out, _ = run(capsys, "findings", "list", "--findings", str(findings_file), "--backend", "host")
    assert code == 0 and "3 of 4 findings" in out and "fa/host/perf" in out and "fa/metal" not in out
    assert "CPU timings" in out
    code, out, _ = run(capsys, "findings", "show", "fa/metal/perf", "--findings", str(findings_file))
    assert code == 0 and '"id": "fa/metal/perf"' in out
    assert "measured on: metal backend · Apple M4 (apple9)" in out
    code, _, err = run(capsys, "findings", "show", "perf", "--findings", str(findings_file))
    assert code == 1 and "ids containing it" in err and "fa/host/perf" in err


def test_findings_summary_keeps_cpu_results_out_of_the_apple_gpu_section(capsys, findings_file):
    code, out, _ = run(capsys, "findings", "summary", "--findings", str(findings_file))
    assert code == 0
    apple, other = out.split("== Other backends")
    assert "M4 reaches 90% of peak." in apple
    assert "V2 wins beyond 4096 keys." not in apple and "Br=32 is fastest" not in apple
    assert "[CPU result, not Apple GPU] V2 wins beyond 4096 keys." in other
    assert "numerics (1)" in other and "[CPU result, not Apple GPU] FP16" not in other


def test_report_groups_by_proto_with_device_lines_tables_and_plots(capsys, findings_file):
    proto_dir = findings_file.parent / "flash_attention"
    bench.Table([{"Br": 32, "tflops": 0.0125}], title="tile sweep", meta={"device": HOST}).save(
        proto_dir, "tiles")
    (proto_dir / "tiles.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out_path = findings_file.parent.parent / "report.md"
    code, out, _ = run(capsys, "report", "--findings", str(findings_file), "--out", str(out_path))
    assert code == 0 and "wrote" in out
    report = out_path.read_text()
    assert report.index("## flash_attention") < report.index("## paged_attention")
    flash = report[report.index("## flash_attention"):report.index("## paged_attention")]
    assert "### performance" in flash and "### numerics" in flash
    assert ("- **measured on**: host backend · AMD EPYC 7B13 (CPU timings, not Apple GPU) · "
            "attention-proto 0.1.0 · 2025-01-31T12:00:00Z") in flash
    assert "- **measured on**: metal backend · Apple M4 (apple9)" in flash
    assert "**CPU result**" in flash
    assert "#### tile sweep" in flash and "| Br | tflops |" in flash and "| 32 | 0.0125 |" in flash
    assert "![tiles](findings/flash_attention/tiles.png)" in flash
    assert "| [flash_attention](#flash_attention) | 3 | 1 | 1 | 1 |" in report


def test_report_defaults_next_to_the_findings(capsys, findings_file):
    code, _, _ = run(capsys, "report", "--findings", str(findings_file))
    assert code == 0 and (findings_file.parent / "report.md").exists()


def help_examples(capsys, argv: list[str]) -> list[list[str]]:
    """The example command lines in the --help of `attention-proto <argv>`."""
    with pytest.raises(SystemExit):
        cli.main(argv + ["--help"])
    out = capsys.readouterr().out
    lines = out.split("examples:", 1)[1].splitlines() if "examples:" in out else []
    return [shlex.split(line.split("#")[0])[1:] for line in lines if line.strip().startswith("attention-proto ")]


def test_every_example_in_every_help_runs(capsys, tmp_path, monkeypatch):
    """Each example a --help shows runs as written (in a scratch folder, with its own findings file)."""
    import attention_proto as ap

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(kb.ENV_PATH, str(tmp_path / "findings" / "findings.jsonl"))
    helps = [[], ["info"], ["bench"], ["findings"], ["findings", "list"], ["findings", "show"],
             ["findings", "validate"], ["findings", "summary"], ["report"]]
    helps += [["bench", proto] for proto in cli.available_protos()]
    examples = [e for argv in helps for e in help_examples(capsys, argv)]
    assert len(examples) >= 15
    # the bench examples first: the findings examples read what they write
    examples.sort(key=lambda e: e[0] != "bench")
    skipped = []
    for example in examples:
        if "metal" in example and "metal" not in ap.backends():
            skipped.append(example)  # needs a Mac: checked there
            continue
        try:
            code = cli.main(example)
        except SystemExit as exit:  # --help
            code = exit.code
        capsys.readouterr()
        assert code == 0, f"example failed: attention-proto {shlex.join(example)}"
    assert len(skipped) < len(examples) / 3, skipped
