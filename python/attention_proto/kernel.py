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


class FunctionTable:
    """The entries of a ``visible_function_table`` argument, by name: pass it in that argument's
    positional slot. Each name must be one of the kernel's ``table_functions``; the table is filled per
    dispatch, so switching entries (or tables) between dispatches recompiles nothing."""

    def __init__(self, functions: Sequence[str]):
        if isinstance(functions, str) or not all(isinstance(f, str) and f.isidentifier() for f in functions):
            raise TypeError(f"functions must be a sequence of function names, got {functions!r}")
        self.functions = list(functions)

    def __repr__(self) -> str:
        return f"FunctionTable({self.functions!r})"


class StitchingGraph:
    """A function composed of ``[[stitchable]]`` functions (Metal's MTLFunctionStitchingGraph): input
    nodes (the new function's parameters), function nodes (calls, in order) and an output node.

    >>> g = StitchingGraph("softcap_after_alibi")
    >>> x = [g.input(i) for i in range(5)]
    >>> g.output(g.call("softcap", g.call("alibi", *x), *x[1:]))

    Give it to ``Kernel(stitched=[g], libraries=[...])`` with the libraries holding the functions, and
    link it by name (``linked_functions=["softcap_after_alibi"]``).
    """

    def __init__(self, function: str):
        if not isinstance(function, str) or not function.isidentifier():
            raise ValueError(f"function must be the new function's name, got {function!r}")
        self.function = function
        self.nodes: list[tuple[str, list[int]]] = []
        self._output: int | None = None

    def input(self, index: int) -> int:
        """The input node of the new function's parameter `index`."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"an input index is an int >= 0, got {index!r}")
        return index

    def call(self, function: str, *arguments: int) -> int:
        """A function node calling `function` with input nodes or earlier function nodes; returns it."""
        if not isinstance(function, str) or not function.isidentifier():
            raise ValueError(f"function must be a function name, got {function!r}")
        for a in arguments:
            if isinstance(a, bool) or not isinstance(a, int) or a < -len(self.nodes):
                raise ValueError(f"node arguments are input() or call() results of this graph, got {a!r}")
        self.nodes.append((function, list(arguments)))
        return -len(self.nodes)  # node n is -1 - n

    def output(self, node: int) -> None:
        """Makes `node` (a call() result) the output node; it must be the last call."""
        if node != -len(self.nodes) or not self.nodes:
            raise ValueError("the output node must be the graph's last call() (Metal evaluates nodes in order)")
        self._output = node

    def spec(self) -> tuple[str, list[tuple[str, list[int]]]]:
        """``(function, nodes)`` as the core takes it."""
        if self._output is None:
            raise ValueError(f"stitching graph {self.function!r} has no output node (call output())")
        return self.function, self.nodes


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
    Linking (Metal's MTLLinkedFunctions, the same semantics on the host backend): ``linked_functions``
    resolve the kernel's ``extern`` declarations; ``table_functions`` may fill its
    ``visible_function_table`` arguments (pass a :class:`FunctionTable` in that slot); both name
    ``[[visible]]`` functions of the source, of ``libraries`` (MSL texts, or ``(text, path)`` pairs,
    each compiled on its own) or functions ``stitched`` from the libraries' ``[[stitchable]]``
    functions by :class:`StitchingGraph` s.
    """

    def __init__(self, source: str, function: str, *, constants: Mapping[str | int, ConstantValue] | None = None,
                 defines: Mapping[str, str | int | float] | None = None, linked_functions: Sequence[str] = (),
                 max_threads_per_threadgroup: int = 0, path: str | os.PathLike[str] | None = None,
                 include_dirs: Sequence[str | os.PathLike[str]] = (), table_functions: Sequence[str] = (),
                 libraries: Sequence[str | tuple[str, str]] = (), stitched: Sequence[StitchingGraph] = ()):
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
        self.table_functions = [str(f) for f in table_functions]
        self.libraries = [(lib, f"<library {i}>") if isinstance(lib, str) else (str(lib[0]), str(lib[1]))
                          for i, lib in enumerate(libraries)]
        if not all(isinstance(g, StitchingGraph) for g in stitched):
            raise TypeError("stitched must be a sequence of StitchingGraph")
        self.stitched = [g.spec() for g in stitched]
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
                                                   self.max_threads_per_threadgroup, name, self.table_functions,
                                                   self.libraries, self.stitched)
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
        tables = {i: a.functions for i, a in enumerate(args) if isinstance(a, FunctionTable)}
        buffers = [None if isinstance(a, FunctionTable) else a for a in args]
        return _core.dispatch(self.pipeline(backend), buffers, _size3(grid, "grid"),
                              _size3(threadgroup, "threadgroup"), tg, bool(checked), int(repeat), tables)
