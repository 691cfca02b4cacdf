"""Backends and device facts, and the core's one-time set-up (where its headers, compiler and shaders are)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from . import _core

_PACKAGE_DIR = Path(__file__).resolve().parent


def _host_include_dir() -> Path:
    """The metal_stdlib emulation headers: installed next to the package, or in a source checkout."""
    installed = _PACKAGE_DIR / "host_include"
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent.parent / "src" / "host" / "include"


def _zig_executable() -> str:
    """The clang driver shipped by the `ziglang` wheel, if installed ('' otherwise)."""
    spec = importlib.util.find_spec("ziglang")
    if spec is None or not spec.submodule_search_locations:
        return ""
    for location in spec.submodule_search_locations:
        zig = Path(location) / "zig"
        if zig.exists():
            return str(zig)
    return ""


def shader_dir() -> Path:
    """Directory of the project's own `.metal` shaders (installed copy or source checkout)."""
    installed = _PACKAGE_DIR / "shaders"
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent.parent / "shaders"


_core.configure(str(_host_include_dir()), _zig_executable(), str(shader_dir()))


def backends() -> list[str]:
    """Names of the backends usable on this machine, best first (e.g. ``["metal", "host"]`` on a Mac).

    On Apple Silicon a missing Metal device raises BackendUnavailableError saying why, so nothing runs
    quietly on the CPU alone; ``APROTO_REQUIRE_METAL=0`` allows the host backend by itself.
    """
    return list(_core.backends())


def device_info(backend: str | None = None) -> _core.DeviceInfo:
    """Facts about a backend's device: name, family, limits (threadgroup memory, SIMD width, ...).

    ``backend=None`` picks the best available backend. On the host backend the device is the CPU and
    the limits are the Apple-GPU limits it emulates. ``.as_dict()`` gives the plain dict findings store.
    """
    return _core.device_info(backend or "")
