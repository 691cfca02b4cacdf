"""Prototype 5: generated MSL against hand-written. Runs the committed sources of
``shaders/generated/<generator>/`` (and the hand-written ``shaders/gemm.metal`` / ``softmax.metal``)
through :class:`attention_proto.Kernel`, launched as each generator's manifest says.

>>> out, timing = run_generated("tinygrad", "gemm_f32", inputs)   # inputs: {"A": ..., "B": ...}
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..generators import BUFFERS, GENERATORS, OUTPUTS, SHAPES
from ..kernel import DispatchTiming, Kernel
from ..runtime import shader_dir

HAND_WRITTEN = {"gemm_f32": ("gemm.metal", "gemm_f32"), "gemm_f16": ("gemm.metal", "gemm_f16"),
                "gemm_f16_large": ("gemm.metal", "gemm_f16"),
                "softmax": ("softmax.metal", "softmax"), "attention": None}


def generated_dir() -> Path:
    """The folder of the committed generated sources (installed copy or source checkout)."""
    return shader_dir() / "generated"


@cache
def manifest(generator: str) -> dict[str, Any]:
    """The manifest a generator's sources were written with (version, kernels, launches, unsupported)."""
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    path = generated_dir() / generator / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no generated sources for {generator} at {path.parent} "
                                f"(run `attention-proto generate --generator {generator}`)")
    return json.loads(path.read_text())


def random_inputs(kernel: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh random inputs of the problem's shape (never zeros)."""
    shape = SHAPES[kernel]
    return {name: rng.standard_normal([shape[d] for d in dims]).astype(dtype)
            for name, (dtype, dims) in BUFFERS[kernel].items() if name != OUTPUTS[kernel]}


def output_like(kernel: str) -> np.ndarray:
    """The output array of a problem, poisoned with NaN."""
    dtype, dims = BUFFERS[kernel][OUTPUTS[kernel]]
    return np.full([SHAPES[kernel][d] for d in dims], np.nan, dtype)


@cache
def _kernel(path: Path, function: str, constants: tuple[tuple[str, int], ...]) -> Kernel:
    # manifest keys are function-constant indices ("0") or names
    return Kernel.from_file(path, function, constants={int(k) if k.isdigit() else k: v for k, v in constants})


def _argument(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], scratch: np.ndarray,
              shape: Mapping[str, int]) -> Any:
    if "buffer" not in spec:  # a struct of uint32 scalars (CubeCL's info buffer, Slang's uniforms)
        words = np.zeros(max(int(spec.get("words", 0)), len(spec["scalars"])), np.uint32)
        words[:len(spec["scalars"])] = [shape[name] for name in spec["scalars"]]
        return words
    if spec["buffer"] == "scratch":
        return scratch[spec["offset"]:spec["offset"] + spec["nbytes"]].view(np.float32)
    array = arrays[spec["buffer"]]
    # the element type the MSL declares, where it differs (TileLang reads float16 as `device uint4*`)
    return array.view(spec["view"]) if spec.get("view", array.dtype.name) != array.dtype.name else array


def run_generated(generator: str, kernel: str, inputs: Mapping[str, np.ndarray], out: np.ndarray | None = None,
                  backend: str | None = None, repeat: int = 1) -> tuple[np.ndarray, list[DispatchTiming]]:
    """Runs a committed generated kernel (all its launches, in order) on `inputs`; returns the output
    and one timing per launch. The sources are specialised to SHAPES[kernel]."""
    entry = manifest(generator)["kernels"].get(kernel)
    if entry is None:
        reason = manifest(generator)["unsupported"].get(kernel, "not generated")
        raise ValueError(f"{generator} has no {kernel} kernel: {reason}")
    arrays = dict(inputs)
    arrays[OUTPUTS[kernel]] = output_like(kernel) if out is None else out
    scratch = np.full(max(entry["scratch_bytes"], 4), 0xFF, np.uint8)   # NaN-filled intermediates
    path = generated_dir() / generator / entry["file"]
    timings = []
    for la in entry["launches"]:
        k = _kernel(path, la["function"], tuple(sorted(entry["constants"].items())))
        args = [_argument(a, arrays, scratch, entry["shape"]) for a in la["args"]]
        timings.append(k(*args, grid=la["grid"], threadgroup=la["threadgroup"], backend=backend, repeat=repeat))
    return arrays[OUTPUTS[kernel]], timings


def run_hand_written(kernel: str, inputs: Mapping[str, np.ndarray], out: np.ndarray | None = None,
                     backend: str | None = None, repeat: int = 1) -> tuple[np.ndarray, list[DispatchTiming]]:
    """Runs the hand-written counterpart of a problem (shaders/gemm.metal, shaders/softmax.metal) at
    the shapes of `inputs` (any sizes)."""
    if HAND_WRITTEN.get(kernel) is None:
        raise ValueError(f"no hand-written {kernel} here (attention: prototype 1, attention_proto.flash_attention)")
    file, function = HAND_WRITTEN[kernel]
    k = _kernel(shader_dir() / file, function, ())
    if kernel.startswith("gemm"):
        a, b = inputs["A"], inputs["B"]
        (m, kk), n = a.shape, b.shape[1]
        c = np.full((m, n), np.nan, np.float32) if out is None else out
        params = np.array((m, n, kk), dtype=[("M", "<u4"), ("N", "<u4"), ("K", "<u4")])[()]
        t = k(a, b, c, params, grid=(-(-n // 32), -(-m // 32)), threadgroup=(128,),
              backend=backend, repeat=repeat)
        return c, [t]
    x = inputs["X"]
    y = np.full(x.shape, np.nan, np.float32) if out is None else out
    t = k(x, y, np.uint32(x.shape[1]), grid=(x.shape[0],), threadgroup=(256,), backend=backend, repeat=repeat)
    return y, [t]


def reference(kernel: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The FP64 result of a problem on `inputs` (the rounded inputs the kernel sees)."""
    x = {name: np.asarray(a, np.float64) for name, a in inputs.items()}
    if kernel.startswith("gemm"):
        return x["A"] @ x["B"]
    if kernel == "softmax":
        e = np.exp(x["X"] - x["X"].max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    from ..reference import attention
    return attention(x["Q"][None, None], x["K"][None, None], x["V"][None, None])[0, 0]
