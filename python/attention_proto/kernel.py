"""Run any MSL compute kernel from Python, on any available backend."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from .runtime import backends

DispatchTiming = _core.DispatchTiming
PipelineInfo = _core.PipelineInfo

Size3 = int | Sequence[int]
ConstantValue = bool | int | float | np.generic


def _size3(value: Size3, name: str) -> list[int]:
    dims = [value] if isinstance(value, (int, np.integer)) else list(value) if isinstance(value, Sequence) else None
    if dims is None or not 1 <= len(dims) <= 3 or \
            not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"{name} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    return [int(d) for d in dims]


class Kernel:
    """An MSL compute kernel, compiled per backend and per specialisation.

    >>> k = Kernel(src, "scale", constants={"N": 64})
    >>> k(x, np.float32(2.0), grid=(4,), threadgroup=(64,))

    Positional arguments bind to ``[[buffer(0)]]``, ``[[buffer(1)]]``, ... in order: numpy arrays are
    used in place (outputs are written into them) and must hold the parameter's element type
    (``device float*`` takes float32; pass ``array.view(np.float32)`` to reinterpret memory on purpose,
    or a uint8 view for raw bytes); numpy scalars and structured scalars fill ``constant T&``
    parameters; ``None`` leaves a slot unbound. ``grid`` counts threadgroups.

    A pipeline is specified by ``constants`` (function-constant values, by name or index), ``defines``
    (preprocessor macros), ``linked_functions`` (``[[visible]]`` functions linked at creation) and
    ``max_threads_per_threadgroup`` (a hint the pipeline is built with; 0 = the device limit).
    """

    def __init__(self, source: str, function: str, *, constants: Mapping[str | int, ConstantValue] | None = None,
                 defines: Mapping[str, str | int | float] | None = None, linked_functions: Sequence[str] = (),
                 max_threads_per_threadgroup: int = 0, path: str | os.PathLike[str] | None = None,
                 include_dirs: Sequence[str | os.PathLike[str]] = ()):
        if not isinstance(source, str) or not source.strip():
            raise TypeError("source must be the MSL text of the kernel (a non-empty str)")
        if not isinstance(function, str) or not function.isidentifier():
            raise ValueError(f"function must be the kernel's name, got {function!r}")
        self.source = source
        self.function = function
        self.constants: dict[str | int, ConstantValue] = dict(constants or {})
        self.defines = {str(k): str(v) for k, v in (defines or {}).items()}
        self.linked_functions = [str(f) for f in linked_functions]
        if not isinstance(max_threads_per_threadgroup, int) or max_threads_per_threadgroup < 0:
            raise ValueError(f"max_threads_per_threadgroup must be an int >= 0, got {max_threads_per_threadgroup!r}")
        self.max_threads_per_threadgroup = max_threads_per_threadgroup
        self.path = str(path) if path is not None else f"<{function}>"
        self.include_dirs = [str(d) for d in include_dirs]
        self._pipelines: dict[str, _core.Pipeline] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], function: str, **options: Any) -> Kernel:
        """Loads the kernel `function` from an MSL file (quoted includes are resolved next to it);
        ``options`` as for the constructor."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no MSL file at {p}")
        return cls(p.read_text(), function, path=p.resolve(), **options)

    def pipeline(self, backend: str | None = None) -> _core.Pipeline:
        """The compiled pipeline on `backend` (None = the best available); built once, then cached."""
        name = backend or backends()[0]
        if name not in self._pipelines:
            self._pipelines[name] = _core.pipeline(self.source, self.path, self.include_dirs, self.function,
                                                   self.constants, self.defines, self.linked_functions,
                                                   self.max_threads_per_threadgroup, name)
        return self._pipelines[name]

    def info(self, backend: str | None = None) -> PipelineInfo:
        """Facts of the pipeline: limits, threadgroup memory, compile stages, cache, declared arguments."""
        return self.pipeline(backend).info

    def __call__(self, *args: Any, grid: Size3, threadgroup: Size3,
                 threadgroup_memory: Mapping[int, int] | None = None, backend: str | None = None,
                 checked: bool = False, repeat: int = 1) -> DispatchTiming:
        """Dispatches the kernel over `grid` threadgroups of `threadgroup` threads and waits for it.

        `threadgroup_memory` gives the byte length of each ``[[threadgroup(n)]]`` parameter. With
        `checked` (or APROTO_CHECKED=1) the host backend bounds-checks device-buffer accesses and raises
        OutOfBoundsError naming the buffer and offset. `repeat` runs the dispatch that many times in one
        submission (one command buffer on Metal); the timing is per dispatch.

        Raises TypeError for an argument of the wrong kind or element type, ValueError for more
        arguments than the kernel has buffer slots, an unbound slot, a read-only array for a parameter
        the kernel writes, or bad sizes.
        """
        tg: dict[int, int] = {}
        for index, nbytes in (threadgroup_memory or {}).items():
            if not isinstance(index, (int, np.integer)) or not isinstance(nbytes, (int, np.integer)):
                raise TypeError(f"threadgroup_memory maps [[threadgroup(n)]] indices to byte counts, got {index!r}: "
                                f"{nbytes!r}")
            if nbytes < 0:
                raise ValueError(f"threadgroup_memory[{index}] must be >= 0, got {nbytes}")
            tg[int(index)] = int(nbytes)
        if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)):
            raise TypeError(f"repeat must be an int, got {type(repeat).__name__}")
        return _core.dispatch(self.pipeline(backend), list(args), _size3(grid, "grid"),
                              _size3(threadgroup, "threadgroup"), tg, bool(checked), int(repeat))
