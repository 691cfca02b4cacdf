"""Run any MSL compute kernel from Python, on any available backend."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import _core
from .runtime import backends


@dataclass(frozen=True)
class DispatchTiming:
    """Timing of one dispatch.

    ``seconds`` is GPU time (``GPUEndTime - GPUStartTime``) on Metal and wall-clock time on the host
    backend, where it measures the CPU emulation, never an Apple GPU.
    """

    seconds: float
    timer: str
    backend: str
    bytes_copied: int = 0
    buffers_copied: int = 0

    def __float__(self) -> float:
        return self.seconds


Size3 = int | Sequence[int]


def _size3(value: Size3, name: str) -> tuple[int, int, int]:
    dims = [value] if isinstance(value, (int, np.integer)) else list(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise TypeError(f"{name} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    if any(d < 1 for d in dims):
        raise ValueError(f"{name} must be >= 1 in every dimension, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))  # type: ignore[return-value]


def _as_buffer(index: int, arg: Any) -> tuple[np.ndarray | None, bool]:
    """One positional argument -> (uint8 view of its memory, writable)."""
    if arg is None:
        return None, False
    if isinstance(arg, np.ndarray) and arg.ndim > 0:
        if not arg.flags.c_contiguous:
            raise TypeError(f"argument {index} ([[buffer({index})]]): the array must be C-contiguous "
                            "(use np.ascontiguousarray)")
        return arg.reshape(-1).view(np.uint8), bool(arg.flags.writeable)
    if isinstance(arg, (np.generic, np.ndarray)):  # numpy scalar, structured scalar, 0-d array
        return np.frombuffer(np.asarray(arg).tobytes(), dtype=np.uint8), False
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(arg), dtype=np.uint8), False
    if isinstance(arg, (bool, int, float)):
        raise TypeError(f"argument {index} ([[buffer({index})]]): a plain Python {type(arg).__name__} has no "
                        "MSL type; pass a numpy scalar such as np.uint32(...) or np.float32(...)")
    raise TypeError(f"argument {index} ([[buffer({index})]]): expected a numpy array, numpy scalar, bytes or "
                    f"None, got {type(arg).__name__}")


class Kernel:
    """An MSL compute kernel, compiled per backend and per set of function-constant values.

    >>> k = Kernel(src, "scale", constants={"N": 64})
    >>> k(x, np.float32(2.0), grid=(4,), threadgroup=(64,))

    Positional arguments bind to ``[[buffer(0)]]``, ``[[buffer(1)]]``, ... in order: numpy arrays are
    used in place (outputs are written into them), numpy scalars and structured scalars fill
    ``constant T&`` parameters, ``None`` leaves a slot unbound. ``grid`` counts threadgroups.
    """

    def __init__(self, source: str, function: str, *, constants: Mapping[str | int, bool | int | float] | None = None,
                 path: str | os.PathLike[str] | None = None, include_dirs: Sequence[str | os.PathLike[str]] = ()):
        if not isinstance(source, str) or not source.strip():
            raise TypeError("source must be the MSL text of the kernel (a non-empty str)")
        if not isinstance(function, str) or not function.isidentifier():
            raise ValueError(f"function must be the kernel's name, got {function!r}")
        self.source = source
        self.function = function
        self.constants: dict[str | int, bool | int | float] = dict(constants or {})
        for key, value in self.constants.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"constant keys must be names or [[function_constant(i)]] indices, got {key!r}")
            if not isinstance(value, (bool, int, float, np.generic)):
                raise TypeError(f"constant {key!r} must be a bool, int or float, got {type(value).__name__}")
        self.path = str(path) if path is not None else f"<{function}>"
        self.include_dirs = [str(d) for d in include_dirs]
        self._pipelines: dict[str, _core.Pipeline] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], function: str, *,
                  constants: Mapping[str | int, bool | int | float] | None = None,
                  include_dirs: Sequence[str | os.PathLike[str]] = ()) -> "Kernel":
        """Loads the kernel `function` from an MSL file (quoted includes are resolved next to it)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no MSL file at {p}")
        return cls(p.read_text(), function, constants=constants, path=p.resolve(), include_dirs=include_dirs)

    def pipeline(self, backend: str | None = None) -> _core.Pipeline:
        """The compiled pipeline on `backend` (None = the best available); built once, then cached."""
        name = backend or backends()[0]
        if name not in self._pipelines:
            self._pipelines[name] = _core.pipeline(self.source, self.path, self.include_dirs, self.function,
                                                   self.constants, name)
        return self._pipelines[name]

    def info(self, backend: str | None = None) -> dict[str, Any]:
        """Facts of the pipeline: limits, threadgroup memory, compile seconds, which cache it came from."""
        return dict(self.pipeline(backend).info)

    def __call__(self, *args: Any, grid: Size3, threadgroup: Size3,
                 threadgroup_memory: Mapping[int, int] | None = None, backend: str | None = None,
                 checked: bool = False) -> DispatchTiming:
        """Dispatches the kernel over `grid` threadgroups of `threadgroup` threads and waits for it.

        `threadgroup_memory` gives the byte length of each ``[[threadgroup(n)]]`` parameter. With
        `checked` (or APROTO_CHECKED=1) the host backend bounds-checks device-buffer accesses and raises
        OutOfBoundsError naming the buffer and offset.
        """
        g, t = _size3(grid, "grid"), _size3(threadgroup, "threadgroup")
        views: list[np.ndarray | None] = []
        writable: list[bool] = []
        for i, a in enumerate(args):
            view, w = _as_buffer(i, a)
            views.append(view)
            writable.append(w)
        tg = {}
        for index, nbytes in (threadgroup_memory or {}).items():
            if not isinstance(index, (int, np.integer)) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
                raise TypeError(f"threadgroup_memory maps [[threadgroup(n)]] indices to byte counts, got {index!r}: "
                                f"{nbytes!r}")
            tg[int(index)] = int(nbytes)
        pipeline = self.pipeline(backend)
        r = _core.dispatch(pipeline, views, writable, g, t, tg, bool(checked))
        return DispatchTiming(seconds=r["seconds"], timer=r["timer"], backend=pipeline.backend,
                              bytes_copied=r["bytes_copied"], buffers_copied=r["buffers_copied"])
