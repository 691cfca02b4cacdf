"""Backends and device facts, and the host backend's one-time set-up."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

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


_core.configure_host(str(_host_include_dir()), _zig_executable())


def backends() -> list[str]:
    """Names of the backends usable on this machine, best first (e.g. ``["metal", "host"]`` on a Mac)."""
    return list(_core.backends())


def device_info(backend: str | None = None) -> dict[str, Any]:
    """Facts about a backend's device: name, family, limits (threadgroup memory, SIMD width, ...).

    ``backend=None`` picks the best available backend. On the host backend the device is the CPU and
    the limits are the Apple-GPU limits it emulates.
    """
    return dict(_core.device_info(backend or ""))
