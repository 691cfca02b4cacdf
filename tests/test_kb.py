"""Knowledge-base findings: schema validation, atomic concurrent emission, replace-by-id, loading."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attention_proto import kb

HOST = {"backend": "host", "name": "AMD EPYC 7B13", "family": "cpu"}
METAL = {"backend": "metal", "name": "Apple M4", "family": "apple9"}


def record(**changes: Any) -> dict[str, Any]:
    """A valid finding record with ``changes`` applied."""
    base = {
        "id": "flash_attention/tflops/host/D=64",
        "proto": "flash_attention",
        "kind": "performance",
        "claim": "Br=32, Bc=32 is the fastest tile for D=64 on this device.",
        "metric": "tflops",
        "value": 0.0123,
        "unit": "TFLOP/s",
        "config": {"D": 64, "N": 1024},
        "device": dict(HOST),
        "evidence": {"samples": [0.011, 0.012, 0.013], "median": 0.012, "p20": 0.0114,
                     "p80": 0.0126, "spread": 0.1},
        "created": "2025-01-31T12:00:00Z",
        "version": "0.1.0",
    }
    base.update(changes)
    return base


def finding(**changes: Any) -> kb.Finding:
    return kb.Finding.from_dict(record(**changes))


def test_valid_record_round_trips_through_json():
    f = finding()
    assert kb.Finding.from_dict(json.loads(f.to_json())) == f
    assert list(f.to_dict()) == list(kb.FIELDS)


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"kind": "speed"}, "kind", "unknown kind 'speed'"),
        ({"claim": "   "}, "claim", "must not be empty"),
        ({"claim": "One.\nTwo."}, "claim", "single line"),
        ({"claim": "x" * 401}, "claim", "one sentence"),
        ({"value": float("nan")}, "value", "must be finite"),
        ({"value": float("inf")}, "value", "must be finite"),
        ({"value": "1.5"}, "value", "expected a number, got str"),
        ({"value": True}, "value", "expected a number, got bool"),
        ({"config": [1, 2]}, "config", "expected an object"),
        ({"config": {"x": object()}}, "config", "not JSON-serialisable"),
        ({"device": {"name": "Apple M4", "family": "apple9"}}, "device", "missing 'backend'"),
        ({"device": {"backend": "", "name": "x", "family": "cpu"}}, "device", "'backend' must not be empty"),
        ({"evidence": {}}, "evidence", "needs timing statistics"),
        ({"evidence": {"median": float("nan")}}, "evidence.median", "must be finite"),
        ({"evidence": {"samples": []}}, "evidence.samples", "non-empty list"),
        ({"created": "yesterday"}, "created", "not an ISO 8601"),
        ({"created": "2025-01-31T12:00:00+02:00"}, "created", "must be UTC"),
        ({"proto": 3}, "proto", "expected a string, got int"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_records_are_rejected_with_the_field_and_reason(changes, field, reason):
    with pytest.raises(kb.FindingError) as info:
        kb.validate(record(**changes))
    assert f"field '{field}'" in str(info.value)
    assert reason in str(info.value)


def test_missing_field_and_non_object_are_rejected():
    rec = record()
    del rec["evidence"]
    with pytest.raises(kb.FindingError, match="field 'evidence': missing"):
        kb.validate(rec)
    with pytest.raises(kb.FindingError, match="must be a JSON object, got list"):
        kb.validate([rec])


def test_constructing_a_bad_finding_raises():
    with pytest.raises(kb.FindingError, match="field 'kind'"):
        kb.Finding(**record(kind="vibes"))


def test_evidence_may_name_the_test_instead_of_timings():
    f = finding(kind="numerics", evidence={"test": "tests/test_flash_attention.py::test_fp16"})
    assert f.evidence["test"].endswith("test_fp16")


def test_numpy_values_become_plain_json():
    f = finding(value=np.float32(1.5), config={"N": np.int64(7), "shape": (1, 2)},
                evidence={"samples": np.array([0.5, 0.25]), "median": np.float64(0.375)})
    assert f.value == 1.5 and type(f.config["N"]) is int and f.config["shape"] == [1, 2]
    assert json.loads(f.to_json())["evidence"]["samples"] == [0.5, 0.25]


def test_defaults_for_created_and_version():
    rec = record()
    del rec["created"], rec["version"]
    f = kb.Finding(**rec)
    assert f.created.endswith("Z") and f.version


def test_make_id_is_stable_readable_and_backend_aware():
    a = kb.make_id("flash_attention", "tflops", {"N": 1024, "D": 64, "causal": True})
    b = kb.make_id("flash_attention", "tflops", {"causal": True, "D": 64, "N": 1024})
    assert a == b == "flash_attention/tflops/D=64,N=1024,causal=true"
    assert kb.make_id("p", "m", {"D": 64}, backend="metal") == "p/m/metal/D=64"
    assert kb.make_id("p", "m", {}) == "p/m"


def test_emit_appends_and_replaces_by_id(tmp_path):
    path = tmp_path / "sub" / "findings.jsonl"
    kb.emit(finding(id="a", value=1.0), path)
    kb.emit(finding(id="b", value=2.0), path)
    kb.emit(finding(id="a", value=3.0), path)
    loaded = kb.load(path)
    assert [(f.id, f.value) for f in loaded] == [("a", 3.0), ("b", 2.0)]
    assert len(path.read_text().splitlines()) == 2


def test_emit_many_is_one_update_and_last_duplicate_wins(tmp_path):
    path = tmp_path / "findings.jsonl"
    kb.emit_many([finding(id="x", value=1.0), finding(id="y"), finding(id="x", value=9.0)], path)
    assert [(f.id, f.value) for f in kb.load(path)] == [("x", 9.0), ("y", 0.0123)]


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(kb.ENV_PATH, str(tmp_path / "kb.jsonl"))
    assert kb.default_path() == tmp_path / "kb.jsonl"
    kb.emit(finding())
    assert (tmp_path / "kb.jsonl").exists()
    monkeypatch.delenv(kb.ENV_PATH)
    assert kb.default_path() == Path("findings") / "findings.jsonl"


def _emit_worker(path: str, worker: int) -> None:
    for i in range(25):
        kb.emit(kb.Finding.from_dict(record(id=f"w{worker}/{i}", value=float(i))), path)


def test_concurrent_emits_from_several_processes_lose_nothing(tmp_path):
    path = tmp_path / "findings.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_emit_worker, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    loaded = kb.load(path)
    assert sorted(f.id for f in loaded) == sorted(f"w{w}/{i}" for w in range(4) for i in range(25))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_crash_mid_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "findings.jsonl"
    kb.emit(finding(id="kept"), path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        kb.emit(finding(id="lost"), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["findings.jsonl", "findings.jsonl.lock"]


def test_emit_keeps_the_file_mode(tmp_path):
    path = tmp_path / "findings.jsonl"
    kb.emit(finding(id="a"), path)
    path.chmod(0o640)
    kb.emit(finding(id="b"), path)
    assert path.stat().st_mode & 0o777 == 0o640


def test_load_reports_a_corrupt_line_with_its_number(tmp_path):
    path = tmp_path / "findings.jsonl"
    kb.emit_many([finding(id=str(i)) for i in range(3)], path)
    with open(path, "a") as handle:
        handle.write("\n")  # blank lines are allowed and still counted
        handle.write('{"id": "broken", \n')
    with pytest.raises(kb.FindingError, match=r"findings\.jsonl:5: invalid JSON"):
        kb.load(path)


def test_load_reports_a_schema_error_with_its_line_and_field(tmp_path):
    path = tmp_path / "findings.jsonl"
    lines = [finding(id="ok").to_json(), json.dumps(record(id="bad", kind="speed"))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(kb.FindingError, match=r"findings\.jsonl:2: field 'kind': unknown kind"):
        kb.load(path)


def test_load_rejects_duplicate_ids(tmp_path):
    path = tmp_path / "findings.jsonl"
    path.write_text(finding(id="x").to_json() + "\n" + finding(id="x").to_json() + "\n")
    with pytest.raises(kb.FindingError, match=r":2: duplicate id 'x' \(first on line 1\)"):
        kb.load(path)


def test_emit_refuses_to_rewrite_a_corrupt_file(tmp_path):
    path = tmp_path / "findings.jsonl"
    path.write_text("not json\n")
    with pytest.raises(kb.FindingError, match=":1:"):
        kb.emit(finding(), path)
    assert path.read_text() == "not json\n"


def test_select_filters():
    findings = [
        finding(id="1", proto="flash_attention", kind="performance", device=HOST),
        finding(id="2", proto="flash_attention", kind="numerics", device=METAL),
        finding(id="3", proto="paged_attention", kind="performance",
                device={"backend": "metal", "name": "Apple M4 Pro", "family": "apple9"}),
    ]
    ids = lambda fs: [f.id for f in fs]  # noqa: E731
    assert ids(kb.select(findings, proto="flash_attention")) == ["1", "2"]
    assert ids(kb.select(findings, kind="performance")) == ["1", "3"]
    assert ids(kb.select(findings, backend="metal")) == ["2", "3"]
    assert ids(kb.select(findings, device_name="m4")) == ["2", "3"]
    assert ids(kb.select(findings, device_name="M4 Pro", kind="performance")) == ["3"]
    assert ids(kb.select(findings)) == ["1", "2", "3"]
    with pytest.raises(ValueError, match="unknown kind"):
        kb.select(findings, kind="speed")


def test_host_performance_findings_are_kept_out_of_the_apple_gpu_summary():
    host_perf = finding(id="h", kind="performance", device=HOST)
    host_num = finding(id="n", kind="numerics", device=HOST)
    metal_perf = finding(id="m", kind="performance", device=METAL)
    apple, other = kb.split_apple_gpu([host_perf, host_num, metal_perf])
    assert [f.id for f in apple] == ["m"]
    assert [f.id for f in other] == ["h", "n"]
    assert kb.is_apple_gpu(metal_perf) and not kb.is_apple_gpu(host_perf)
    assert kb.is_cpu_result(host_perf) and not kb.is_cpu_result(host_num)
    assert not kb.is_cpu_result(metal_perf)
    assert "CPU timings, not Apple GPU" in kb.device_label(HOST)
    assert kb.device_label(METAL) == "metal backend · Apple M4 (apple9)"


def test_group_by_proto_and_kind():
    grouped = kb.group([finding(id="1", proto="b", kind="numerics"),
                        finding(id="2", proto="a", kind="numerics"),
                        finding(id="3", proto="b", kind="performance")])
    assert list(grouped) == ["a", "b"]
    assert list(grouped["b"]) == ["performance", "numerics"]
