"""Benchmark harness: timing statistics, attention FLOP/byte counts, a roofline of Apple GPUs, peers
(MLX and PyTorch SDPA run side by side), sweeps with a progress bar, and result tables.

Every number this module helps produce carries its device: a time measured on the ``host`` backend is a
CPU time, and :func:`device_peaks` gives no Apple-GPU peak for it, so percent-of-peak reads ``n/a``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from attention_proto import kb

# --------------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass(frozen=True)
class TimingStats:
    """Statistics of repeated timings, in seconds. ``timer`` is ``"backend"`` when the timed function
    reported its own time (e.g. GPU time) and ``"wall"`` when the harness measured wall-clock time."""

    samples: list[float]
    median: float
    p20: float
    p80: float
    mean: float
    count: int
    timer: str = "wall"

    @classmethod
    def from_samples(cls, samples: Sequence[float], timer: str = "wall") -> TimingStats:
        """Statistics of ``samples`` (seconds; at least one, all finite and >= 0)."""
        values = [float(s) for s in samples]
        if not values:
            raise ValueError("samples: need at least one timing")
        if not all(math.isfinite(s) and s >= 0 for s in values):
            raise ValueError(f"samples: timings must be finite and >= 0, got {values}")
        p20, median, p80 = np.percentile(values, [20, 50, 80]).tolist()
        return cls(values, median, p20, p80, float(np.mean(values)), len(values), timer)

    @property
    def spread(self) -> float:
        """The relative spread ``(p80 - p20) / median`` (0 when the median is 0)."""
        return (self.p80 - self.p20) / self.median if self.median > 0 else 0.0

    def evidence(self) -> dict[str, Any]:
        """The statistics as a finding's ``evidence`` dict."""
        return {"samples": list(self.samples), "median": self.median, "p20": self.p20,
                "p80": self.p80, "mean": self.mean, "spread": self.spread, "count": self.count,
                "timer": self.timer}


def time_fn(
    fn: Callable[[], float | None],
    warmup: int = 3,
    repeat: int = 20,
    min_time: float = 0.0,
    max_repeat: int = 1000,
) -> TimingStats:
    """Times ``fn``: ``warmup`` untimed calls, then at least ``repeat`` timed ones, continuing until the
    samples add up to ``min_time`` seconds (at most ``max_repeat`` calls).

    ``fn`` returns the seconds its backend measured (e.g. GPU time, ``GPUEndTime - GPUStartTime``), or
    ``None`` to have the harness use the wall-clock time of the call; it must do the same every call.
    """
    if warmup < 0 or repeat < 1 or max_repeat < repeat:
        raise ValueError(f"need warmup >= 0 and 1 <= repeat <= max_repeat, got warmup={warmup}, "
                         f"repeat={repeat}, max_repeat={max_repeat}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    reported: set[bool] = set()
    total = 0.0
    while len(samples) < repeat or (total < min_time and len(samples) < max_repeat):
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        reported.add(result is not None)
        samples.append(wall if result is None else float(result))
        total += samples[-1]
    if len(reported) > 1:
        raise ValueError("fn must either always return its measured seconds or always return None")
    return TimingStats.from_samples(samples, "backend" if True in reported else "wall")


# --------------------------------------------------------------------------------------------------
# Work counts


def attention_flops(B: int, H: int, Nq: int, Nk: int, D: int, causal: bool = False) -> int:
    """FLOPs of one attention forward pass by the project convention: ``4*B*H*Nq*Nk*D``, halved when
    causal (two matmuls, QK^T and PV, each ``2*Nq*Nk*D`` per head; softmax not counted).

    ``H`` is the number of query heads. The halving is the usual convention, not the exact count: with
    bottom-right alignment a causal query ``i`` sees ``min(Nk, max(0, i + Nk - Nq + 1))`` keys, which for
    ``Nq == Nk == N`` is ``N(N+1)/2`` pairs, slightly more than ``N^2/2``.
    """
    flops = 4 * B * H * Nq * Nk * D
    return flops // 2 if causal else flops


def attention_bytes(
    B: int, H: int, Nq: int, Nk: int, D: int, itemsize: int = 2, kv_heads: int | None = None
) -> int:
    """Minimum memory traffic of one attention forward pass in bytes: read Q, K, V once and write O
    once, ``itemsize`` bytes per element (2 for float16/bfloat16, 4 for float32). ``kv_heads`` defaults
    to ``H`` (pass fewer for GQA)."""
    hkv = H if kv_heads is None else kv_heads
    return itemsize * (2 * B * H * Nq * D + 2 * B * hkv * Nk * D)


def tflops(flops: float, seconds: float) -> float:
    """Throughput in TFLOP/s."""
    return flops / seconds / 1e12


def gbps(nbytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (10^9 bytes per second)."""
    return nbytes / seconds / 1e9


# --------------------------------------------------------------------------------------------------
# Roofline


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """Peak figures of one Apple GPU (its largest configuration)."""

    cores: int
    fp32_tflops: float
    fp16_tflops: float
    bandwidth_gbps: float
    source: str


# Apple GPU cores run 128 FP32 lanes each, one FMA (2 FLOPs) per lane per clock, and run FP16 at the
# same rate as FP32 (DESIGN.md "Target hardware facts"; metal-flash-attention README), so FP16 peak =
# FP32 peak below. Where Apple published TFLOPS (M1, M2 families, Apple newsroom launch releases) we use
# them; Apple published no TFLOPS for M3/M4, so those are core count x 358 GFLOP/s per core, the
# per-core rate of the metal-flash-attention README's M4 roofline (10 cores: 1790 G FMA/s = 3.58 TFLOP/s).
# Bandwidths are Apple's tech specs. Binned parts are scaled by the device's reported core count.
_APPLE = "Apple newsroom launch figures"
_EST = "estimate: cores x 0.358 TFLOP/s (MFA M4 roofline); bandwidth: Apple tech specs"
APPLE_GPUS: dict[str, GpuSpec] = {
    "M1": GpuSpec(8, 2.6, 2.6, 68.25, _APPLE),
    "M1 Pro": GpuSpec(16, 5.2, 5.2, 200.0, _APPLE),
    "M1 Max": GpuSpec(32, 10.4, 10.4, 400.0, _APPLE),
    "M1 Ultra": GpuSpec(64, 21.0, 21.0, 800.0, _APPLE),
    "M2": GpuSpec(10, 3.6, 3.6, 100.0, _APPLE),
    "M2 Pro": GpuSpec(19, 6.8, 6.8, 200.0, _APPLE),
    "M2 Max": GpuSpec(38, 13.6, 13.6, 400.0, _APPLE),
    "M2 Ultra": GpuSpec(76, 27.2, 27.2, 800.0, _APPLE),
    "M3": GpuSpec(10, 3.58, 3.58, 100.0, _EST),
    "M3 Pro": GpuSpec(18, 6.44, 6.44, 150.0, _EST),
    "M3 Max": GpuSpec(40, 14.32, 14.32, 400.0, _EST),
    "M3 Ultra": GpuSpec(80, 28.64, 28.64, 819.0, _EST),
    "M4": GpuSpec(10, 3.58, 3.58, 120.0, "metal-flash-attention README roofline; Apple tech specs"),
    "M4 Pro": GpuSpec(20, 7.16, 7.16, 273.0, _EST),
    "M4 Max": GpuSpec(40, 14.32, 14.32, 546.0, _EST),
}
"""Peak figures of Apple GPUs keyed by chip name ("M4 Pro"); see the comment above for sources."""

# Binned parts with a narrower memory bus than the full chip (Apple tech specs).
_BINNED_BANDWIDTH: dict[tuple[str, int], float] = {("M3 Max", 30): 300.0, ("M4 Max", 32): 410.0}

ENV_PEAK_TFLOPS = "ATTENTION_PROTO_PEAK_TFLOPS"
ENV_PEAK_GBPS = "ATTENTION_PROTO_PEAK_GBPS"
_CHIP = re.compile(r"\bM([1-9])(?:\s+(pro|max|ultra))?\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Peaks:
    """Peak throughput of a device; ``None`` where unknown. ``source`` says where the figures come
    from, or why there are none (e.g. the host backend is a CPU)."""

    fp32_tflops: float | None
    fp16_tflops: float | None
    bandwidth_gbps: float | None
    source: str

    def tflops(self, dtype: Any) -> float | None:
        """The compute peak for ``dtype`` ("float32", or "float16"/"bfloat16" -> the FP16 peak)."""
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
        return self.fp32_tflops if name == "float32" else self.fp16_tflops

    def percent_of_peak(self, measured_tflops: float, dtype: Any) -> float | None:
        """``measured_tflops`` as a percentage of the compute peak, or ``None`` without a peak."""
        peak = self.tflops(dtype)
        return 100.0 * measured_tflops / peak if peak else None

    def percent_of_bandwidth(self, measured_gbps: float) -> float | None:
        """``measured_gbps`` as a percentage of the bandwidth peak, or ``None`` without a peak."""
        return 100.0 * measured_gbps / self.bandwidth_gbps if self.bandwidth_gbps else None


def format_percent(percent: float | None) -> str:
    """``"93.1%"``, or ``"n/a"`` when there is no peak to compare with."""
    return "n/a" if percent is None else f"{percent:.1f}%"


def chip_name(device_name: str) -> str | None:
    """The chip key ("M4 Pro") in a device name such as "Apple M4 Pro", or None."""
    match = _CHIP.search(device_name)
    if not match:
        return None
    return f"M{match.group(1)}" + (f" {match.group(2).capitalize()}" if match.group(2) else "")


def _env_float(name: str) -> float | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive number, got {text!r}")
    return value


def _table_peaks(device_info: Mapping[str, Any]) -> Peaks:
    backend = device_info.get("backend")
    name = str(device_info.get("name") or "")
    if backend != "metal":
        return Peaks(None, None, None,
                     f"n/a: the {backend} backend is not an Apple GPU (CPU timings have no GPU peak)")
    chip = chip_name(name)
    spec = APPLE_GPUS.get(chip) if chip else None
    if spec is None:
        return Peaks(None, None, None, f"n/a: no roofline entry for {name!r} "
                                       f"(set {ENV_PEAK_TFLOPS} / {ENV_PEAK_GBPS})")
    cores = device_info.get("compute_units")
    cores = cores if isinstance(cores, int) and cores > 0 else spec.cores
    scale = cores / spec.cores
    bandwidth = _BINNED_BANDWIDTH.get((chip, cores), spec.bandwidth_gbps)
    return Peaks(spec.fp32_tflops * scale, spec.fp16_tflops * scale, bandwidth,
                 f"{chip} {cores}-core GPU ({spec.source})")


def device_peaks(device_info: Mapping[str, Any], overrides: Mapping[str, float] | None = None) -> Peaks:
    """Peaks for a ``device_info()`` dict: the Apple GPU table for the metal backend (matched on names
    like "Apple M4 Pro", scaled by ``compute_units`` for binned parts), none for the host backend and
    unknown devices. ``$ATTENTION_PROTO_PEAK_TFLOPS`` / ``$ATTENTION_PROTO_PEAK_GBPS`` override the
    table, and ``overrides`` (keys ``"tflops"``, ``"gbps"``) override both; a TFLOP/s override sets
    the FP32 and FP16 peak alike."""
    peaks = _table_peaks(device_info)
    given = {"tflops": _env_float(ENV_PEAK_TFLOPS), "gbps": _env_float(ENV_PEAK_GBPS)}
    given.update({key: float(val) for key, val in (overrides or {}).items() if val is not None})
    unknown = set(given) - {"tflops", "gbps"}
    if unknown:
        raise ValueError(f"overrides: unknown keys {sorted(unknown)} (expected 'tflops', 'gbps')")
    if given["tflops"] is None and given["gbps"] is None:
        return peaks
    return Peaks(
        given["tflops"] or peaks.fp32_tflops,
        given["tflops"] or peaks.fp16_tflops,
        given["gbps"] or peaks.bandwidth_gbps,
        f"override ({ENV_PEAK_TFLOPS}/{ENV_PEAK_GBPS} or overrides); otherwise {peaks.source}",
    )


# --------------------------------------------------------------------------------------------------
# Peers: MLX and PyTorch SDPA, timed in this process on the same inputs


@dataclasses.dataclass(frozen=True)
class PeerResult:
    """One peer's timing: ``name`` ("mlx", "torch"), ``device`` (e.g. "torch mps", "torch cpu")."""

    name: str
    device: str
    stats: TimingStats


def _causal_mask(nq: int, nk: int) -> np.ndarray:
    """Bottom-right aligned causal mask (True = attend): query i sees keys j <= i + nk - nq."""
    return np.arange(nk)[None, :] <= np.arange(nq)[:, None] + (nk - nq)


def mlx_sdpa(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    warmup: int = 3, repeat: int = 20,
) -> PeerResult | None:
    """Times ``mx.fast.scaled_dot_product_attention`` on MLX's default device (wall time around
    ``mx.eval``), or returns None when MLX is not installed. Shapes as DESIGN.md (GQA allowed)."""
    try:
        import mlx.core as mx
    except ImportError:
        return None

    def to_mx(a: np.ndarray) -> Any:
        if a.dtype.name == "bfloat16":
            return mx.array(a.astype(np.float32)).astype(mx.bfloat16)
        return mx.array(a)

    mq, mk, mv = to_mx(q), to_mx(k), to_mx(v)
    mask: Any = None
    if causal:
        mask = "causal" if q.shape[2] == k.shape[2] else mx.array(_causal_mask(q.shape[2], k.shape[2]))
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    mx.eval(mq, mk, mv)

    def run() -> None:
        mx.eval(mx.fast.scaled_dot_product_attention(mq, mk, mv, scale=s, mask=mask))

    stats = time_fn(run, warmup=warmup, repeat=repeat)
    return PeerResult("mlx", f"mlx {mx.default_device()}", stats)


def torch_sdpa(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    warmup: int = 3, repeat: int = 20,
) -> PeerResult | None:
    """Times ``torch.nn.functional.scaled_dot_product_attention`` on MPS when available, else the
    CPU (wall time with a device synchronise), or returns None when PyTorch is not installed."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    device = "mps" if torch.backends.mps.is_available() else "cpu"

    def to_torch(a: np.ndarray) -> Any:
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16).to(device)
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    tq, tk, tv = to_torch(q), to_torch(k), to_torch(v)
    if tk.shape[1] != tq.shape[1]:  # GQA: repeat kv heads once, outside the timed region
        group = tq.shape[1] // tk.shape[1]
        tk, tv = tk.repeat_interleave(group, dim=1), tv.repeat_interleave(group, dim=1)
    nq, nk = q.shape[2], k.shape[2]
    # torch's is_causal is top-left aligned; our convention is bottom-right, so pass a mask if Nq != Nk.
    mask = torch.from_numpy(_causal_mask(nq, nk)).to(device) if causal and nq != nk else None
    sync = torch.mps.synchronize if device == "mps" else (lambda: None)

    def run() -> None:
        F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask, is_causal=causal and mask is None,
                                       scale=scale)
        sync()

    stats = time_fn(run, warmup=warmup, repeat=repeat)
    return PeerResult("torch", f"torch {device}", stats)


def run_peers(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False, scale: float | None = None,
    warmup: int = 3, repeat: int = 20,
) -> dict[str, PeerResult]:
    """Every installed peer's result on the same inputs, keyed by name (empty when none installed)."""
    results = {}
    for peer in (mlx_sdpa, torch_sdpa):
        result = peer(q, k, v, causal=causal, scale=scale, warmup=warmup, repeat=repeat)
        if result is not None:
            results[result.name] = result
    return results


# --------------------------------------------------------------------------------------------------
# Progress and sweeps


class Progress:
    """A small progress bar on ``stream`` (default stderr). On a terminal it redraws one line; when
    the stream is not a terminal (CI logs, pipes) it prints one line per 10% of progress."""

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, width: int = 28):
        self.total = max(int(total), 0)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = 0
        self._last_draw = 0.0

    def _line(self, note: str) -> str:
        frac = self.done / self.total if self.total else 1.0
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        bar = "#" * int(frac * self.width)
        text = (f"{self.desc} [{bar:<{self.width}}] {self.done}/{self.total} {100 * frac:3.0f}% "
                f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left")
        return f"{text}  {note}" if note else text

    def update(self, n: int = 1, note: str = "") -> None:
        """Marks ``n`` more items done; ``note`` (e.g. the current config) is shown on the line."""
        self.done = min(self.done + n, self.total)
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r\x1b[2K" + self._line(note))
                self.stream.flush()
            return
        decile = self.done * 10 // self.total if self.total else 10
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(self._line(note) + "\n")
            self.stream.flush()

    def write(self, line: str) -> None:
        """Prints a line above the bar (on a terminal the bar is redrawn below it)."""
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + "\n" + self._line(""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the bar (a final newline on a terminal)."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _describe(config: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={val}" for key, val in config.items())


class Sweep:
    """Runs ``fn(config)`` for every config with a progress bar and collects one row per config.

    A row is the config merged with the dict ``fn`` returns. An exception in one config does not stop
    the sweep: its row gets an ``error`` column ("TypeName: message") and the sweep goes on.
    """

    def __init__(
        self,
        configs: Iterable[Mapping[str, Any]],
        fn: Callable[[dict[str, Any]], Mapping[str, Any] | None],
        *,
        desc: str = "sweep",
        meta: Mapping[str, Any] | None = None,
        stream: TextIO | None = None,
        progress: Progress | None = None,
    ):
        self.configs = [dict(c) for c in configs]
        self.fn = fn
        self.desc = desc
        self.meta = dict(meta or {})
        self.stream = stream
        self.progress = progress

    def run(self) -> Table:
        """Runs every config and returns the rows as a :class:`Table` titled ``desc``. With a
        ``progress`` given (a larger run's bar) it advances that one instead of drawing its own."""
        progress = self.progress or Progress(len(self.configs), self.desc, self.stream)
        rows = []
        try:
            for config in self.configs:
                row = dict(config)
                try:
                    row.update(self.fn(dict(config)) or {})
                except Exception as exc:  # one failing config must not abort the sweep
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                progress.update(note=_describe(config))
        finally:
            if self.progress is None:
                progress.close()
        return Table(rows, title=self.desc, meta=self.meta)


# --------------------------------------------------------------------------------------------------
# Tables


def format_cell(value: Any) -> str:
    """A cell as text: floats with 4 significant digits, None as "-", bools lower-case."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # str(float) is the shortest text that reads back as the same float


def _csv_value(text: str) -> Any:
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


class Table:
    """Rows of results (dicts) with a title and ``meta`` (put the ``device`` dict there, so printed
    and saved tables say where they were measured). Prints aligned, saves as JSON and CSV."""

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        title: str = "",
        meta: Mapping[str, Any] | None = None,
    ):
        self.rows = [dict(r) for r in rows]
        self.title = title
        self.meta = dict(meta or {})
        if columns is None:
            seen: dict[str, None] = {}
            for row in self.rows:
                seen.update(dict.fromkeys(row))
            if "error" in seen:  # errors read best at the end
                seen["error"] = seen.pop("error")
            columns = list(seen)
        self.columns = list(columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Table) and self.rows == other.rows and self.columns == other.columns
                and self.title == other.title and self.meta == other.meta)

    def column(self, name: str) -> list[Any]:
        """The values of one column (None where a row lacks it)."""
        return [row.get(name) for row in self.rows]

    def measured_on(self) -> str | None:
        """The device label of ``meta["device"]``, or None when the table has no device."""
        device = self.meta.get("device")
        return kb.device_label(device) if isinstance(device, Mapping) else None

    def _cells(self) -> list[list[str]]:
        return [[format_cell(row.get(col)) for col in self.columns] for row in self.rows]

    def format(self) -> str:
        """The table as aligned text: title, "measured on" line, header, rule, rows."""
        cells = self._cells()
        widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(self.columns)]
        numeric = [all(v is None or isinstance(v, (int, float)) for v in self.column(col))
                   for col in self.columns]  # numbers align right, text left

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if num else v.ljust(w)
                             for v, w, num in zip(values, widths, numeric)).rstrip()

        out = [self.title] if self.title else []
        if self.measured_on():
            out.append(f"measured on: {self.measured_on()}")
        out += [line(self.columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
        return "\n".join(out)

    def print(self, file: TextIO | None = None) -> None:
        """Prints :meth:`format` to ``file`` (default stdout)."""
        print(self.format(), file=file if file is not None else sys.stdout)

    def to_markdown(self) -> str:
        """The rows as a Markdown table (no title)."""
        def line(values: Sequence[str]) -> str:
            return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

        return "\n".join([line(self.columns), line(["---"] * len(self.columns))]
                         + [line(r) for r in self._cells()])

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Saves title, meta, columns and rows as JSON (lossless for JSON types)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"title": self.title, "meta": self.meta, "columns": self.columns, "rows": self.rows}
        path.write_text(json.dumps(kb.jsonable(data), indent=1, allow_nan=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Table:
        """Reads a table saved by :meth:`to_json`; ValueError if the file is not one."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError(f"{path}: not a saved Table (expected an object with a 'rows' list)")
        return cls(data["rows"], data.get("columns"), data.get("title", ""), data.get("meta"))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Saves the rows as CSV, preceded by ``#`` comment lines with the title, the "measured on"
        line and the meta as JSON (read with ``pandas.read_csv(path, comment="#")`` or
        :meth:`from_csv`). Empty cells are None; bools are written true/false."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            handle.write(f"# title: {self.title}\n")
            if self.measured_on():
                handle.write(f"# measured on: {self.measured_on()}\n")
            handle.write(f"# meta: {json.dumps(kb.jsonable(self.meta))}\n")
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            for row in self.rows:
                writer.writerow([_csv_text(row.get(col)) for col in self.columns])
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> Table:
        """Reads a CSV saved by :meth:`to_csv`; numbers come back as int/float, empty cells as None."""
        title, meta = "", {}
        with open(path, newline="", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        body = [line for line in lines if not line.startswith("#")]
        for line in lines:
            if line.startswith("# title: "):
                title = line[len("# title: "):]
            elif line.startswith("# meta: "):
                meta = json.loads(line[len("# meta: "):])
        reader = csv.reader(body)
        columns = next(reader, [])
        rows = [{col: _csv_value(text) for col, text in zip(columns, values)} for values in reader]
        return cls(rows, columns, title, meta)

    def save(self, out_dir: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
        """Writes ``<out_dir>/<stem>.json`` and ``<out_dir>/<stem>.csv``; returns both paths."""
        out_dir = Path(out_dir)
        return self.to_json(out_dir / f"{stem}.json"), self.to_csv(out_dir / f"{stem}.csv")
