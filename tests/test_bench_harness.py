"""Benchmark harness: timing statistics, work counts, roofline lookup, sweeps, tables and plots."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from attention_proto import bench, plots

HOST = {"backend": "host", "name": "AMD EPYC 7B13", "family": "cpu", "compute_units": 2}


def metal(name: str, cores: int = 0) -> dict:
    return {"backend": "metal", "name": name, "family": "apple9", "compute_units": cores}


class FakeTimer:
    """A function that reports the next of a fixed list of durations and counts its calls."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.calls = 0

    def __call__(self) -> float:
        value = self.durations[self.calls % len(self.durations)]
        self.calls += 1
        return value


def test_time_fn_statistics_of_reported_times():
    fn = FakeTimer([5.0, 1.0, 3.0, 2.0, 4.0])
    stats = bench.time_fn(fn, warmup=2, repeat=5)
    assert fn.calls == 7
    # after 2 warm-up calls the samples are 3, 2, 4, 5, 1
    assert stats.samples == [3.0, 2.0, 4.0, 5.0, 1.0]
    assert (stats.count, stats.median, stats.mean) == (5, 3.0, 3.0)
    assert stats.p20 == pytest.approx(1.8) and stats.p80 == pytest.approx(4.2)
    assert stats.spread == pytest.approx((4.2 - 1.8) / 3.0)
    assert stats.timer == "backend"
    evidence = stats.evidence()
    assert evidence["median"] == 3.0 and evidence["samples"] == stats.samples


def test_time_fn_min_time_extends_the_run_up_to_max_repeat():
    stats = bench.time_fn(FakeTimer([0.125]), warmup=0, repeat=3, min_time=1.0)
    assert stats.count == 8
    stats = bench.time_fn(FakeTimer([0.125]), warmup=0, repeat=3, min_time=100.0, max_repeat=20)
    assert stats.count == 20


def test_time_fn_uses_wall_time_when_fn_returns_none():
    stats = bench.time_fn(lambda: None, warmup=0, repeat=4)
    assert stats.timer == "wall" and stats.count == 4
    assert all(0 <= s < 1 for s in stats.samples)


def test_time_fn_rejects_bad_arguments_and_mixed_returns():
    with pytest.raises(ValueError, match="repeat"):
        bench.time_fn(lambda: None, repeat=0)
    mixed = iter([1.0, None, 1.0, None])
    with pytest.raises(ValueError, match="always"):
        bench.time_fn(lambda: next(mixed), warmup=0, repeat=4)
    with pytest.raises(ValueError, match="finite"):
        bench.time_fn(lambda: float("nan"), warmup=0, repeat=2)


def test_attention_flops_and_bytes():
    assert bench.attention_flops(2, 3, 5, 7, 11) == 4 * 2 * 3 * 5 * 7 * 11
    assert bench.attention_flops(2, 3, 5, 7, 11, causal=True) == 2 * 2 * 3 * 5 * 7 * 11
    assert bench.attention_flops(1, 1, 1024, 1024, 64) == 268_435_456
    # Q and O: 1*8*100*64 elements each; K and V with 2 kv heads: 1*2*300*64 each; 2 bytes each
    assert bench.attention_bytes(1, 8, 100, 300, 64, itemsize=2, kv_heads=2) == 2 * (
        2 * 8 * 100 * 64 + 2 * 2 * 300 * 64)
    assert bench.tflops(2e12, 0.5) == 4.0 and bench.gbps(3e9, 1.5) == 2.0


def test_roofline_for_apple_m4():
    peaks = bench.device_peaks(metal("Apple M4", 10))
    assert peaks.fp32_tflops == pytest.approx(3.58) and peaks.fp16_tflops == pytest.approx(3.58)
    assert peaks.bandwidth_gbps == 120.0
    assert peaks.percent_of_peak(1.79, "float16") == pytest.approx(50.0)
    assert peaks.percent_of_peak(1.79, np.float32) == pytest.approx(50.0)
    assert bench.format_percent(peaks.percent_of_bandwidth(60.0)) == "50.0%"


def test_roofline_for_apple_m4_max_and_its_binned_variant():
    full = bench.device_peaks(metal("Apple M4 Max"))  # compute_units unknown: the full chip
    assert full.bandwidth_gbps == 546.0 and full.fp32_tflops == pytest.approx(14.32)
    binned = bench.device_peaks(metal("Apple M4 Max", 32))
    assert binned.bandwidth_gbps == 410.0 and binned.fp32_tflops == pytest.approx(14.32 * 32 / 40)
    assert bench.device_peaks(metal("Apple M4 Pro")).bandwidth_gbps == 273.0
    assert bench.chip_name("Apple M1 Ultra") == "M1 Ultra" and bench.chip_name("AMD EPYC") is None


def test_roofline_is_na_for_unknown_devices_and_the_host_backend():
    for device in (metal("Apple M9"), metal("Some GPU"), HOST,
                   {"backend": "host", "name": "Apple M4", "family": "cpu"}):
        peaks = bench.device_peaks(device)
        assert peaks.fp32_tflops is None and peaks.bandwidth_gbps is None
        assert peaks.source.startswith("n/a")
        assert bench.format_percent(peaks.percent_of_peak(1.0, "float16")) == "n/a"


def test_roofline_overrides_from_env_and_argument(monkeypatch):
    monkeypatch.setenv(bench.ENV_PEAK_TFLOPS, "2.5")
    peaks = bench.device_peaks(HOST)
    assert peaks.fp16_tflops == 2.5 and peaks.bandwidth_gbps is None
    assert bench.device_peaks(metal("Apple M4"), {"gbps": 100}).bandwidth_gbps == 100
    assert bench.device_peaks(metal("Apple M4"), {"tflops": 1.0}).fp32_tflops == 1.0
    monkeypatch.setenv(bench.ENV_PEAK_GBPS, "fast")
    with pytest.raises(ValueError, match="ATTENTION_PROTO_PEAK_GBPS"):
        bench.device_peaks(HOST)


def test_peers_return_none_when_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx", None)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    q = np.ones((1, 1, 4, 8), np.float32)
    assert bench.mlx_sdpa(q, q, q) is None
    assert bench.torch_sdpa(q, q, q, causal=True) is None
    assert bench.run_peers(q, q, q) == {}


def test_sweep_collects_rows_and_errors_without_aborting():
    stream = io.StringIO()

    def work(config):
        if config["N"] == 0:
            raise ZeroDivisionError("N must be positive")
        return {"inv": 1 / config["N"]}

    table = bench.Sweep([{"N": n} for n in (1, 0, 4)], work, desc="demo", stream=stream).run()
    assert table.columns == ["N", "inv", "error"]
    assert table.rows == [{"N": 1, "inv": 1.0}, {"N": 0, "error": "ZeroDivisionError: N must be positive"},
                          {"N": 4, "inv": 0.25}]
    assert "demo" in stream.getvalue() and "3/3" in stream.getvalue()


def test_progress_prints_about_every_ten_percent_when_not_a_terminal():
    stream = io.StringIO()
    bench.Sweep([{"i": i} for i in range(200)], lambda c: None, stream=stream).run()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].split()[2] == "200/200"


def test_progress_redraws_one_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = bench.Progress(3, "tty", stream)
    for _ in range(3):
        progress.update()
    progress.close()
    assert "\r" in stream.getvalue() and stream.getvalue().count("\n") == 1


def test_table_prints_aligned_and_round_trips_json_and_csv(tmp_path, capsys):
    rows = [{"N": 128, "dtype": "float16", "ms": 0.123456789, "ok": True, "note": None},
            {"N": 1024, "dtype": "bfloat16", "ms": 12.5, "ok": False, "note": "slow, very"}]
    table = bench.Table(rows, title="flash attention", meta={"device": HOST, "quick": True})
    json_path, csv_path = table.save(tmp_path / "out", "sweep")
    assert bench.Table.from_json(json_path) == table
    assert bench.Table.from_csv(csv_path) == table
    assert "# measured on: host backend · AMD EPYC 7B13 (CPU timings, not Apple GPU)" in csv_path.read_text()
    table.print()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "flash attention" and out[1].startswith("measured on: host backend")
    header, rule, first = out[2:5]
    assert header.startswith("   N  dtype") and rule.startswith("----  --------")  # numbers right, text left
    assert first.startswith(" 128  float16 ") and first.split()[2] == "0.1235"
    assert "| N | dtype | ms | ok | note |" in table.to_markdown()


def test_table_from_json_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a saved Table"):
        bench.Table.from_json(path)


def test_heatmap_and_line_chart_write_pngs_labelled_with_the_device(tmp_path):
    rows = [{"Br": br, "Bc": bc, "tflops": br * bc / 1000} for br in (16, 32, 64) for bc in (16, 32)]
    rows.append({"Br": 128, "Bc": 16, "error": "too much threadgroup memory"})
    table = bench.Table(rows)
    png = plots.heatmap(table, "Bc", "Br", "tflops", "tiles", tmp_path / "heat.png", HOST)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = plots.line_chart(rows, "Br", "tflops", "by Br", tmp_path / "line.png", HOST, series="Bc", logx=True)
    assert png.stat().st_size > 1000
    png = plots.bar_chart(rows, "Br", "tflops", "by Br", tmp_path / "bar.png", HOST, series="Bc")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="device"):
        plots.heatmap(table, "Bc", "Br", "tflops", "tiles", tmp_path / "x.png", {})
