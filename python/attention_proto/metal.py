"""Metal-only controls: binary archives, cache reset and counters.

Prototype 4 (function constants + binary archives) measures pipeline creation cold, warm and from an
archive with these. They exist only where the Metal backend is built in (macOS with an Apple GPU);
elsewhere every function raises BackendUnavailableError.
"""
from __future__ import annotations

import os
from typing import Any

from . import _core
from .kernel import Kernel


def available() -> bool:
    """True when this build has the Metal backend and the machine has a Metal device."""
    return bool(_core.has_metal_backend) and "metal" in _core.backends()


def _require() -> Any:
    if not available():
        raise _core.BackendUnavailableError(
            "[metal] binary archives and Metal counters need the Metal backend (macOS with an Apple GPU); "
            f"available here: {', '.join(_core.backends())}")
    return _core


def set_archive(path: str | os.PathLike[str], *, fail_on_miss: bool = False) -> None:
    """Opens (or starts) the binary archive at `path`; new pipelines are looked up in it first.

    With `fail_on_miss`, a pipeline missing from the archive raises ArchiveMissError instead of being
    compiled, so a bench can tell an archive hit from a miss.
    """
    _require().metal_set_archive(str(path), fail_on_miss)


def clear_archive() -> None:
    """Stops using the binary archive."""
    _require().metal_clear_archive()


def archive_path() -> str:
    """Path of the current archive, or '' when none is set."""
    return str(_require().metal_archive_path())


def archive_add(kernel: Kernel) -> float:
    """Compiles `kernel` (its constants, defines, what it links and max-threads hint: the pipeline spec)
    into the current archive, with the descriptor later lookups use; returns the seconds."""
    return float(_require().metal_archive_add(kernel.source, kernel.path, kernel.include_dirs, kernel.function,
                                              kernel.constants, kernel.defines, kernel.linked_functions,
                                              kernel.max_threads_per_threadgroup, kernel.table_functions,
                                              kernel.libraries, kernel.stitched))


def archive_add_call(proto: str, shapes: dict[str, Any], options: dict[str, Any]) -> float:
    """Compiles every pipeline the prototype call ``proto`` would launch (``shapes``: {argument: (shape,
    dtype)} and ``options``, as for ``_core.plan``) into the current archive; returns the seconds."""
    return float(_require().metal_archive_add_call(proto, shapes, options))


def archive_serialize() -> None:
    """Writes the current archive to its path."""
    _require().metal_archive_serialize()


def clear_caches() -> None:
    """Forgets every cached library and pipeline: the next pipeline is compiled (or read from the archive)."""
    _require().metal_clear_caches()


def stats() -> dict[str, int]:
    """Counters since start: libraries/pipelines compiled, archive hits and misses, buffers wrapped/copied."""
    return dict(_require().metal_stats())
