"""Prototype 4: what specialising prototype 1's flash kernel costs, at start-up and in every call.

:data:`VARIANTS` are 72 real variants of ``shaders/flash_attention.metal``: head dim 64, 80, 96, 128 x
float32, float16, bfloat16 x causal or not x 3 tiles that fit 32 KB (:func:`variant_tiles`). Each runs by
one of three :data:`STRATEGIES` (``src/protos/function_constants.cpp``), all numerically prototype 1:

- ``"constants"``: function constants, prototype 1 as it is (one library, one pipeline per variant);
- ``"defines"``: the same values as preprocessor defines, so one library per variant, with the register
  arrays sized exactly (what MLX and llama.cpp compile ahead of time);
- ``"runtime"``: no specialisation: one pipeline per dtype, head dim, tiles and causal read from the params
  buffer, register arrays at :data:`RUNTIME_MAX_HEAD_DIM` / :data:`RUNTIME_MAX_BLOCK_K` (values above them
  raise ValueError).

Compile costs are measured in fresh processes (:func:`compile_costs`), because "cold" only means something
there: on the host backend with an empty or a filled disk cache (``APROTO_CACHE_DIR``), on Metal with a
comment no earlier compile has seen appended to the shader (``_core.set_shader_note``), so Metal's own
shader cache cannot serve it. :func:`archive_build` / :func:`archive_check` put the variants' pipelines
in a Metal binary archive and prove a later process creates them from it alone.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _core, memory
from .. import metal as _metal
from .flash_attention import DEFAULT_TILES, fitting_tiles

_FACTS = _core.proto_facts("function_constants")
STRATEGIES: tuple[str, ...] = ("constants", "defines", "runtime")
HEAD_DIMS: tuple[int, ...] = (64, 80, 96, 128)
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
RUNTIME_MAX_HEAD_DIM: int = _FACTS["runtime_max_head_dim"][0]
RUNTIME_MAX_BLOCK_K: int = _FACTS["runtime_max_block_k"][0]
"""The runtime-argument kernel's register arrays hold this many head-dim / key fragments (x 8)."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One specialisation of the flash kernel (``return_lse`` off, as in a plain call)."""

    head_dim: int
    dtype: str
    causal: bool
    block_q: int
    block_k: int

    @property
    def name(self) -> str:
        """e.g. ``d64_float16_causal_32x32``."""
        return f"d{self.head_dim}_{self.dtype}_{'causal' if self.causal else 'full'}_{self.block_q}x{self.block_k}"

    def options(self, strategy: str) -> dict[str, Any]:
        """The entry point's options for this variant."""
        return {"strategy": strategy, "causal": self.causal, "scale": 1.0 / math.sqrt(self.head_dim),
                "block_q": self.block_q, "block_k": self.block_k}

    def shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Stand-in shapes for a plan of this variant."""
        dt = _dtype(self.dtype)
        return {name: ((1, 1, 8, self.head_dim), dt) for name in ("q", "k", "v", "out")}


def _dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def variant_tiles(head_dim: int, dtype: str) -> list[tuple[int, int]]:
    """The 3 tiles of one (head dim, dtype): prototype 1's default, then the fitting tiles of largest
    area ``block_q * block_k`` (ties: the larger block_q), i.e. the biggest that fit 32 KB."""
    default = DEFAULT_TILES[(head_dim, dtype)]
    # Tiles cost bytes by itemsize alone: bfloat16 fits as float16 does (and needs no ml_dtypes at import).
    itemsize_twin = "float16" if dtype == "bfloat16" else dtype
    rest = sorted((t for t in fitting_tiles(head_dim, itemsize_twin) if t != default),
                  key=lambda t: (-t[0] * t[1], -t[0]))
    return [default, *rest[:2]]


VARIANTS: tuple[Variant, ...] = tuple(
    Variant(d, dt, causal, bq, bk) for d in HEAD_DIMS for dt in DTYPES for causal in (False, True)
    for bq, bk in variant_tiles(d, dt))
"""The 72 variants: head dim x dtype x causal x 3 tiles."""

DEFAULT_VARIANTS: tuple[Variant, ...] = tuple(v for v in VARIANTS if (v.block_q, v.block_k) == DEFAULT_TILES[
    (v.head_dim, v.dtype)])
"""The 24 variants with prototype 1's default tiles: what plain calls use."""


def variants(which: str) -> tuple[Variant, ...]:
    """``"default"`` (:data:`DEFAULT_VARIANTS`) or ``"all"`` (:data:`VARIANTS`)."""
    if which not in ("default", "all"):
        raise ValueError(f"variants must be 'default' or 'all', got {which!r}")
    return DEFAULT_VARIANTS if which == "default" else VARIANTS


def flash_attention_variant_timed(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, strategy: str, block_q: int, block_k: int,
    causal: bool = False, scale: float | None = None, return_lse: bool = False, backend: str | None = None,
    out: np.ndarray | None = None, lse_out: np.ndarray | None = None, repeat: int = 1,
) -> tuple[np.ndarray, np.ndarray | None, _core.DispatchTiming]:
    """Prototype 1's flash attention (``attention_proto.flash_attention``, same arguments) built by
    ``strategy`` (one of :data:`STRATEGIES`); returns ``(out, lse | None, timing)``. Bad input raises
    ValueError / TypeError naming the argument, e.g. a head dim or block_k over the runtime maxima."""
    shaped = isinstance(q, np.ndarray) and q.ndim == 4
    if shaped:
        scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
        out = memory.empty(q.shape, q.dtype) if out is None else out
        if return_lse and lse_out is None:
            lse_out = memory.empty(q.shape[:3], np.float32)
    timing = _core.function_constants(
        {"q": q, "k": k, "v": v, "out": out, "lse": lse_out if return_lse else None},
        {"strategy": strategy, "causal": causal, "scale": scale, "block_q": block_q, "block_k": block_k},
        backend or "", repeat)
    return out, lse_out if return_lse else None, timing  # type: ignore[return-value]


def plan_variant(variant: Variant, strategy: str, *, backend: str | None = None,
                 build: bool = False) -> _core.LaunchInfo:
    """The launch of ``variant`` by ``strategy`` (pipeline key, spec); with ``build`` its pipeline too."""
    return _core.plan("function_constants", variant.shapes(), variant.options(strategy), backend or "", build)[0]


def _stages(info: Any) -> dict[str, Any]:
    return {"library_s": info.library_seconds, "function_s": info.function_seconds,
            "pipeline_s": info.pipeline_seconds, "cache": info.cache, "library_origin": info.library_origin}


def _build(variant: Variant, strategy: str, backend: str) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        info = plan_variant(variant, strategy, backend=backend, build=True).pipeline
    except _core.ArchiveMissError as exc:  # only with an archive set to fail on a miss
        return {"wall_s": time.perf_counter() - start, "cache": "miss", "error": str(exc)}
    return {"wall_s": time.perf_counter() - start, **_stages(info)}


def measure_builds(items: Sequence[tuple[Variant, str]], backend: str, *, warm: bool = False) -> list[dict[str, Any]]:
    """In this process: builds each (variant, strategy) pipeline (``first``), builds it again (``memory``:
    the in-process hit) and, with ``warm`` (Metal), once more after forgetting the backend's caches
    (``warm``: Metal's own shader cache serves it). One row of stage seconds per item and phase."""
    rows = []
    for variant, strategy in items:
        row = {"variant": variant.name, "strategy": strategy, "first": _build(variant, strategy, backend)}
        row["memory"] = _build(variant, strategy, backend)
        rows.append(row)
    if warm:  # after every first build, so each pipeline really was cold first
        _metal.clear_caches()
        for row, (variant, strategy) in zip(rows, items):
            row["warm"] = _build(variant, strategy, backend)
    return rows


def _worker() -> None:
    """A fresh process's side of :func:`compile_costs` (request on stdin, JSON rows on stdout)."""
    req = json.load(sys.stdin)
    _core.set_shader_note(req["note"])
    items = [(Variant(**v), s) for v, s in req["items"]]
    if req["archive"]:
        _metal.set_archive(req["archive"], fail_on_miss=req["mode"] == "load")
    if req["mode"] == "add":
        rows = []
        for variant, strategy in items:
            seconds = _metal.archive_add_call("function_constants", variant.shapes(), variant.options(strategy))
            rows.append({"variant": variant.name, "strategy": strategy, "add_s": seconds})
        _metal.archive_serialize()
    else:
        rows = measure_builds(items, req["backend"], warm=req["backend"] == "metal" and req["mode"] == "build")
    print(json.dumps(rows))


def compile_costs(items: Sequence[tuple[Variant, str]], backend: str, *, mode: str = "build",
                  cache_dir: str | os.PathLike[str] | None = None, note: str = "",
                  archive: str | os.PathLike[str] | None = None, timeout: float = 1800) -> list[dict[str, Any]]:
    """Runs :func:`measure_builds` (``mode`` ``"build"``; on Metal with ``warm``) in a fresh Python process,
    or adds the items to the binary ``archive`` (``"add"``, then serialises it) or builds them from it
    alone (``"load"``: ``FailOnBinaryArchiveMiss``, a miss is an error). ``cache_dir`` becomes the host
    backend's ``APROTO_CACHE_DIR``; ``note`` a comment appended to the shader (a text no compile has seen)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["APROTO_CACHE_DIR"] = str(cache_dir)
    request = {"items": [(dataclasses.asdict(v), s) for v, s in items], "backend": backend, "mode": mode,
               "note": note, "archive": str(archive) if archive else ""}
    code = "from attention_proto.protos.function_constants import _worker; _worker()"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(request), capture_output=True, text=True,
                          env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"[function_constants] the {mode} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def archive_build(path: str | os.PathLike[str], chosen: Iterable[Variant],
                  strategy: str = "constants") -> dict[str, Any]:
    """Builds a Metal binary archive at ``path`` holding the pipelines of ``chosen`` (in a fresh process)
    and writes their list next to it (``<path>.json``, what :func:`archive_check` reads). Returns the
    seconds per pipeline and the archive's size. Raises BackendUnavailableError without Metal."""
    chosen = list(chosen)
    _metal._require()
    path = Path(path)
    path.unlink(missing_ok=True)  # a fresh archive, not one extended
    rows = compile_costs([(v, strategy) for v in chosen], "metal", mode="add", archive=path)
    Path(f"{path}.json").write_text(json.dumps({"strategy": strategy,
                                                "variants": [dataclasses.asdict(v) for v in chosen]}))
    return {"rows": rows, "bytes": path.stat().st_size}


def archive_check(path: str | os.PathLike[str], chosen: Iterable[Variant] | None = None) -> dict[str, Any]:
    """Creates the pipelines listed next to the archive (or ``chosen``) in a fresh process with the
    archive attached and ``FailOnBinaryArchiveMiss`` set; returns one row per pipeline (``cache`` is
    ``"archive"`` for a hit) and ``misses``. Raises BackendUnavailableError without Metal,
    FileNotFoundError without the archive."""
    _metal._require()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no binary archive at {path}")
    manifest = json.loads(Path(f"{path}.json").read_text()) if Path(f"{path}.json").is_file() else {}
    strategy = manifest.get("strategy", "constants")
    items = list(chosen) if chosen is not None else [Variant(**v) for v in manifest.get("variants", [])] or list(
        DEFAULT_VARIANTS)
    rows = compile_costs([(v, strategy) for v in items], "metal", mode="load", archive=path)
    return {"rows": rows, "misses": sum(r["first"]["cache"] != "archive" for r in rows)}
