"""Plots of sweep tables (PNG, matplotlib with the Agg backend, imported only when a plot is drawn).

Every plot takes the ``device`` dict it was measured on and writes its label under the title, so a
chart from the host backend always reads "(CPU timings, not Apple GPU)".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attention_proto import kb


def _rows(table: Any) -> list[Mapping[str, Any]]:
    """The rows of a ``bench.Table`` or of a plain sequence of dicts."""
    return list(getattr(table, "rows", table))


def _check_device(device: Mapping[str, Any]) -> None:
    if not isinstance(device, Mapping) or not device.get("backend") or not device.get("name"):
        raise ValueError("device: expected the device_info() dict with 'backend' and 'name' "
                         f"(plots must say where they were measured), got {device!r}")


def _number(value: Any) -> float:
    """``value`` as a float, NaN when it is missing or not a number (failed sweep rows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _sorted_unique(values: Sequence[Any]) -> list[Any]:
    unique = list(dict.fromkeys(v for v in values if v is not None))
    try:
        return sorted(unique)
    except TypeError:  # mixed types: keep first-seen order
        return unique


def _figure(title: str, device: Mapping[str, Any], size: tuple[float, float]) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, layout="constrained")
    fig.suptitle(title, fontsize=12)
    ax.set_title(kb.device_label(device), fontsize=9, color="0.3")
    return fig, ax


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heatmap(
    table: Any,
    x: str,
    y: str,
    value: str,
    title: str,
    path: str | os.PathLike[str],
    device: Mapping[str, Any],
    *,
    fmt: str = ".3g",
    cmap: str = "viridis",
) -> Path:
    """Draws ``value`` over the grid of ``x`` (columns) by ``y`` (rows) values and saves a PNG.

    ``table`` is a ``bench.Table`` or a list of row dicts; cells without a numeric value (missing
    configs, failed rows) stay blank. ``device`` is the ``device_info()`` dict the numbers come from;
    its label is the subtitle. Returns the path written.
    """
    import numpy as np

    _check_device(device)
    rows = _rows(table)
    xs = _sorted_unique([r.get(x) for r in rows])
    ys = _sorted_unique([r.get(y) for r in rows])
    grid = np.full((len(ys), len(xs)), np.nan)
    for row in rows:
        if row.get(x) is not None and row.get(y) is not None:
            grid[ys.index(row[y]), xs.index(row[x])] = _number(row.get(value))
    # wide enough for the device subtitle, and for the grid when it has many columns
    fig, ax = _figure(title, device, (max(7.0, 1.6 + 0.9 * len(xs)), 1.6 + 0.6 * max(len(ys), 3)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=value)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), cell in np.ndenumerate(grid):
        if np.isfinite(cell):
            ax.text(j, i, format(cell, fmt), ha="center", va="center", fontsize=8,
                    color="black" if cell > middle else "white")
    return _save(fig, path)


def line_chart(
    table: Any,
    x: str,
    y: str | Sequence[str],
    title: str,
    path: str | os.PathLike[str],
    device: Mapping[str, Any],
    *,
    series: str | None = None,
    logx: bool = False,
    logy: bool = False,
    ylabel: str | None = None,
) -> Path:
    """Draws ``y`` against ``x`` and saves a PNG: one line per ``y`` column, and with ``series``
    one line per distinct value of that column (e.g. one per backend or head dim). ``logx`` uses a
    base-2 axis (sizes such as N = 128..8192), ``logy`` a base-10 one.

    ``device`` is the ``device_info()`` dict the numbers come from; its label is the subtitle.
    Rows without a numeric value are skipped. Returns the path written.
    """
    _check_device(device)
    rows = _rows(table)
    ys = [y] if isinstance(y, str) else list(y)
    groups = _sorted_unique([r.get(series) for r in rows]) if series else [None]
    fig, ax = _figure(title, device, (7.0, 4.5))
    for column in ys:
        for group in groups:
            points = sorted(
                (r[x], _number(r.get(column))) for r in rows
                if r.get(x) is not None and (series is None or r.get(series) == group)
                and math.isfinite(_number(r.get(column)))
            )
            if not points:
                continue
            label = " ".join(part for part in (
                column if len(ys) > 1 else "", f"{series}={group}" if series else "") if part)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label or None)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or (ys[0] if len(ys) == 1 else "value"))
    if logx:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 1024 rather than 2^10
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(ys) > 1 or series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def bar_chart(
    table: Any,
    x: str,
    y: str,
    title: str,
    path: str | os.PathLike[str],
    device: Mapping[str, Any],
    *,
    series: str | None = None,
    ylabel: str | None = None,
) -> Path:
    """Draws ``y`` for each value of ``x`` as bars (grouped by ``series`` when given) and saves a PNG;
    e.g. each variant's time relative to the base kernel. ``device`` labels the subtitle. Rows without
    a numeric value are left out. Returns the path written."""
    import numpy as np

    _check_device(device)
    rows = _rows(table)
    xs = list(dict.fromkeys(r.get(x) for r in rows if r.get(x) is not None))
    groups = _sorted_unique([r.get(series) for r in rows]) if series else [None]
    fig, ax = _figure(title, device, (max(7.0, 1.0 + 0.8 * len(xs) * len(groups)), 4.5))
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        values = []
        for value in xs:
            match = [r for r in rows if r.get(x) == value and (series is None or r.get(series) == group)]
            values.append(_number(match[0].get(y)) if match else math.nan)
        offsets = np.arange(len(xs)) + (g - (len(groups) - 1) / 2) * width
        ax.bar(offsets, values, width, label=f"{series}={group}" if series else None)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=20 if len(xs) > 6 else 0)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.grid(True, axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)
