"""`attention-proto lab`: smoke, numerics, benches, summary and report in one run; resume; failures."""
from __future__ import annotations

from pathlib import Path

import pytest

from attention_proto import cli, kb, lab

NUMERICS = "flash_attention and odd_lengths and 7"  # a few real numerics tests: the stage runs, quickly


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["lab", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_lab_end_to_end_on_the_host(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "lab"
    code, out, err = run(capsys, "--quick", "--backend", "host", "--only", "flash_attention", "--out", str(out_dir),
                         "--numerics", NUMERICS)
    assert code == 0, err
    assert "smoke ok: tiny kernel" in out and "smoke ok: zero copy" in out
    assert "numerics: ok: 8 passed, 0 failed" in err  # the bar and its lines go to stderr
    assert "flash_attention/error: answered" in out
    assert "flash_attention/best_tile: answered with CPU numbers (the Apple-GPU answer needs a Mac)" in out
    findings = kb.load(out_dir / "findings.jsonl")
    assert {f.question for f in findings} == {"best_tile", "default_tile", "error", "tiles_fit"}
    assert all(f.device["backend"] == "host" for f in findings)
    report = (out_dir / "report.md").read_text()
    assert report.startswith("# attention-proto lab: host backend")
    assert "Every timing here is a CPU number" in report and "- nothing failed" in report
    assert "| flash_attention | error | answered |" in report
    assert "![tiles_D64_float16]" in report  # the bench's plots are in the report
    assert (out_dir / "numerics.log").is_file() and (out_dir / "flash_attention" / "bench.log").is_file()

    # resumable: the bench's findings exist for this device and version, so it is skipped ...
    code, _, err = run(capsys, "--quick", "--backend", "host", "--only", "flash_attention", "--out", str(out_dir),
                       "--numerics", "none")
    assert code == 0 and "bench flash_attention: done before, skipped" in err
    assert "| bench flash_attention | done before |" in (out_dir / "report.md").read_text()
    # ... unless --force
    code, _, err = run(capsys, "--quick", "--backend", "host", "--only", "flash_attention", "--out", str(out_dir),
                       "--numerics", "none", "--force")
    assert code == 0 and "bench flash_attention: ok" in err


def test_a_failing_smoke_stage_stops_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A kernel that computes the wrong thing: the smoke check must notice and stop before anything else.
    monkeypatch.setattr(lab, "SMOKE_SOURCE", lab.SMOKE_SOURCE.replace("+ 1.0f", "+ 2.0f"))
    code, out, err = run(capsys, "--backend", "host", "--out", str(tmp_path / "lab"), "--numerics", "none")
    assert code == 1
    assert "smoke stage FAILED: tiny kernel: y[0] = 2.0, expected 1.0" in err
    assert "attention-proto info --json" in err  # what to report
    assert not (tmp_path / "lab" / "report.md").exists() and "bench" not in out


def test_questions_without_findings_show_as_unanswered(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       fake_bench: None) -> None:
    code, out, _ = run(capsys, "--backend", "host", "--only", "fake_proto", "--out", str(tmp_path / "lab"),
                       "--numerics", "none")
    assert code == 0
    assert "fake_proto/biggest: answered" in out and "fake_proto/speed: unanswered" in out
    assert "| fake_proto | speed | unanswered | 0 |" in (tmp_path / "lab" / "report.md").read_text()


def test_bench_order_runs_readers_after_what_they_read() -> None:
    class Spec:
        def __init__(self, *reads: str):
            self.reads = reads

    specs = {"a": Spec("c"), "b": Spec(), "c": Spec("b"), "d": Spec("a", "x")}  # x: not present, ignored
    order = lab.bench_order(specs)
    assert order.index("b") < order.index("c") < order.index("a") < order.index("d")
    with pytest.raises(ValueError, match="cycle"):
        lab.bench_order({"a": Spec("b"), "b": Spec("a")})
