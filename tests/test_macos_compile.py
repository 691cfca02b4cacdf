"""The C++ core's platform-neutral part (runtime + host backend) compiles for macOS arm64.

The package is written to build on Apple Silicon too; no Mac runs here, so the ziglang wheel's clang
(which ships macOS system headers) cross-compiles every file of src/runtime and src/host for
aarch64-macos with the definitions CMakeLists.txt sets on Apple. Nothing is linked. The Metal backend
has its own check against Apple's metal-cpp headers (test_metal_compile.py).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "runtime").glob("*.cpp")) + sorted((ROOT / "src" / "host").glob("*.cpp"))


def compile_for_macos(path: Path, out_dir: Path) -> tuple[Path, int, str]:
    cmd = [sys.executable, "-m", "ziglang", "c++", "-target", "aarch64-macos", "-std=c++17", "-Wall",
           "-D_XOPEN_SOURCE=700", "-D_DARWIN_C_SOURCE", f"-I{ROOT / 'src'}", f"-I{ROOT / 'shaders'}",
           "-c", str(path), "-o", str(out_dir / f"{path.stem}.o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return path, r.returncode, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None, reason="needs the ziglang package (its clang)")
def test_runtime_and_host_backend_compile_for_macos_arm64(tmp_path: Path) -> None:
    assert SOURCES, "no sources found"
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: compile_for_macos(p, tmp_path), SOURCES))
    failed = [f"== {p.relative_to(ROOT)}\n{out}" for p, rc, out in results if rc != 0]
    assert not failed, "\n".join(failed)
    warnings = [f"{p.name}: {out}" for p, rc, out in results if "warning:" in out]
    assert not warnings, "\n".join(warnings)
