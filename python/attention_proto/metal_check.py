"""Compile-check the Metal backend (``src/metal/*.cpp``) on a machine without Apple hardware.

The Metal backend is built on macOS only, so elsewhere a misspelt metal-cpp method or a wrong argument
type would go unnoticed. This check compiles every file of ``src/metal/`` with clang against Apple's real
metal-cpp headers, which ship in the macOS wheel of the PyPI package ``mlx-metal``. On Linux a handful of
tiny shim headers (``src/metal/linux_shim/``) stand in for the Apple system headers metal-cpp includes, and
``-fblocks`` enables Apple's block syntax (g++ cannot parse it). Nothing is linked or run.

Ingredients, each found once and cached:

* metal-cpp: ``pip download`` of the ``mlx-metal`` macOS wheel, unzipped into
  ``~/.cache/attention_proto/metal_cpp/<version>/metal_cpp`` (reused when present). Overrides:
  ``APROTO_METAL_CPP`` (an existing ``metal_cpp`` folder), ``APROTO_MLX_METAL_VERSION`` (a wheel version).
* clang: ``clang++`` >= 15 on ``PATH`` (any Apple clang on macOS), else the clang inside the ``ziglang``
  package. Override: ``APROTO_METAL_CHECK_CXX`` (a clang++ command line).

Usage outside pytest::

    python -m attention_proto.metal_check [file.cpp ...]
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

#: The wheel tag of the macOS wheel that carries the headers (any macOS arm64 wheel has the same headers).
WHEEL_PLATFORM = "macosx_14_0_arm64"
_WHEEL_PREFIX = "mlx/include/metal_cpp/"


class MetalCheckUnavailable(RuntimeError):
    """An ingredient of the check (metal-cpp headers, clang, the sources) is missing; the message says which."""


@dataclass
class CheckResult:
    """Outcome of :func:`check_metal_sources`.

    ``ok`` is true when every file compiled. ``skipped`` is true when the check could not run at all, with
    the cause in ``reason``. ``output`` holds the compiler's messages, each file's under a ``== name`` line.
    """

    ok: bool
    skipped: bool = False
    reason: str = ""
    output: str = ""
    files: list[Path] = field(default_factory=list)
    compiler: list[str] = field(default_factory=list)
    metal_cpp: Path | None = None
    seconds: float = 0.0


def _cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "attention_proto" / "metal_cpp"


def _is_metal_cpp(path: Path) -> bool:
    return (path / "Metal" / "Metal.hpp").is_file() and (path / "Foundation" / "Foundation.hpp").is_file()


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def default_src_root() -> Path | None:
    """The repository's ``src/`` folder next to this package in a source checkout, else ``None``.

    An installed package (site-packages) has no ``src/``; callers then pass ``src_root`` themselves.
    """
    src = Path(__file__).resolve().parents[2] / "src"
    return src if (src / "metal").is_dir() else None


def metal_cpp_headers(version: str | None = None) -> Path:
    """Path of a ``metal_cpp`` folder (the one holding ``Metal/Metal.hpp``), downloading it if needed.

    ``version`` (or ``APROTO_MLX_METAL_VERSION``) selects an ``mlx-metal`` release; without one any cached
    copy is reused (the newest), else the latest release is downloaded. Raises :class:`MetalCheckUnavailable`.
    """
    override = os.environ.get("APROTO_METAL_CPP")
    if override:
        if not _is_metal_cpp(Path(override)):
            raise MetalCheckUnavailable(f"APROTO_METAL_CPP={override} has no Metal/Metal.hpp")
        return Path(override)
    root = _cache_root()
    version = version or os.environ.get("APROTO_MLX_METAL_VERSION") or None
    if version:
        if _is_metal_cpp(root / version / "metal_cpp"):
            return root / version / "metal_cpp"
    elif root.is_dir():
        cached = [d for d in root.iterdir() if not d.name.startswith(".") and _is_metal_cpp(d / "metal_cpp")]
        if cached:
            return max(cached, key=lambda d: _version_key(d.name)) / "metal_cpp"
    return _download_metal_cpp(root, version)


def _download_metal_cpp(root: Path, version: str | None) -> Path:
    """Fetches the mlx-metal macOS wheel with pip and unzips only its metal-cpp headers into the cache."""
    spec = f"mlx-metal=={version}" if version else "mlx-metal"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", WHEEL_PLATFORM, "--python-version", "3.11", "--disable-pip-version-check",
               "--quiet", spec, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MetalCheckUnavailable(f"cannot download the {spec} wheel for its metal-cpp headers: {exc}") from exc
        wheels = sorted(Path(tmp).glob("mlx_metal-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise MetalCheckUnavailable(
                f"cannot download the {spec} wheel for its metal-cpp headers ({' '.join(cmd[:4])}): {tail}")
        wheel_version = wheels[0].name.split("-")[1]
        dest = root / wheel_version
        stage = Path(tempfile.mkdtemp(dir=root, prefix=f".{wheel_version}-"))
        with zipfile.ZipFile(wheels[0]) as whl:
            for name in whl.namelist():
                rel = name[len(_WHEEL_PREFIX):]
                if not name.startswith(_WHEEL_PREFIX) or name.endswith("/") or ".." in Path(rel).parts:
                    continue
                target = stage / "metal_cpp" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(whl.read(name))
        if not _is_metal_cpp(stage / "metal_cpp"):
            shutil.rmtree(stage, ignore_errors=True)
            raise MetalCheckUnavailable(f"{wheels[0].name} has no {_WHEEL_PREFIX}Metal/Metal.hpp")
        try:
            stage.rename(dest)  # atomic: a concurrent run sees the whole folder or none
        except OSError:  # another run got there first
            shutil.rmtree(stage, ignore_errors=True)
    if not _is_metal_cpp(dest / "metal_cpp"):
        raise MetalCheckUnavailable(f"{dest} exists but holds no metal-cpp headers; delete it and retry")
    return dest / "metal_cpp"


def _clang_major(exe: str) -> int:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r"clang version (\d+)", out)
    return int(match.group(1)) if match else 0


def find_compiler() -> tuple[list[str], bool]:
    """The clang++ command to use and whether it honours ``-fsyntax-only``.

    zig's driver (``python -m ziglang c++``) does not: given ``-fsyntax-only`` it first builds libc++
    (about 1.5 minutes) and then fails looking for an object file it never wrote. For zig the check
    therefore compiles each file to an object in a temporary folder (about 2 s a file) and links nothing.
    Raises :class:`MetalCheckUnavailable` when no clang is found.
    """
    override = os.environ.get("APROTO_METAL_CHECK_CXX")
    if override:
        return shlex.split(override), True
    # Apple clang numbers its releases differently, and any of them compiles Apple's own headers.
    min_major = 1 if sys.platform == "darwin" else 15
    for name in ["clang++"] + [f"clang++-{v}" for v in range(30, 14, -1)]:
        exe = shutil.which(name)
        if exe and _clang_major(exe) >= min_major:
            return [exe], True
    if importlib.util.find_spec("ziglang") is not None:
        return [sys.executable, "-m", "ziglang", "c++"], False
    raise MetalCheckUnavailable("no clang++ >= 15 on PATH and the ziglang package is not installed "
                                "(pip install ziglang); g++ cannot parse Apple's blocks")


def _compile_one(cmd: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return 1, f"timed out after 600 s: {shlex.join(cmd)}\n"
    return proc.returncode, proc.stdout + proc.stderr


def _binding_flags() -> list[str]:
    """Include flags for nanobind and Python, so src/bindings/metal.cpp is checked too ([] without nanobind)."""
    import sysconfig

    spec = importlib.util.find_spec("nanobind")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return ["-isystem", str(root / "include"), "-isystem", str(root / "ext" / "robin_map" / "include"),
            "-isystem", sysconfig.get_paths()["include"]]


def check_metal_sources(paths: list[str | os.PathLike[str]] | None = None, *,
                        src_root: str | os.PathLike[str] | None = None) -> CheckResult:
    """Compiles the Metal backend's ``.cpp`` files against Apple's metal-cpp headers; never links.

    ``paths``: the files to check (default: every ``.cpp`` in ``<src_root>/metal``). ``src_root``: the
    repository's ``src/`` folder, added with ``-I`` so ``#include "runtime/..."`` and ``"metal/..."``
    resolve (default: next to this package in a source checkout). Files may live elsewhere (e.g. an
    edited copy in a temporary folder) as long as their includes resolve against ``src_root``.

    Returns a :class:`CheckResult`; ``skipped`` is set, with the reason, when the sources, the headers or
    a clang are unavailable.
    """
    start = time.perf_counter()
    src = Path(src_root) if src_root is not None else default_src_root()
    if src is None or not (src / "metal").is_dir():
        return CheckResult(ok=False, skipped=True, reason=(
            "the Metal backend sources (src/metal) are not present: this is an installed package, not a source "
            "checkout; pass src_root=<repository>/src"))
    binding_flags = _binding_flags()
    if paths is not None:
        files = [Path(p) for p in paths]
    else:  # the backend, and its Python bindings when nanobind's headers are at hand
        files = sorted((src / "metal").glob("*.cpp"))
        if binding_flags and (src / "bindings" / "metal.cpp").is_file():
            files.append(src / "bindings" / "metal.cpp")
    try:
        metal_cpp = metal_cpp_headers()
        compiler, syntax_only = find_compiler()
    except MetalCheckUnavailable as exc:
        return CheckResult(ok=False, skipped=True, reason=str(exc), files=files)

    flags = ["-std=c++17", "-fblocks", "-Wall", "-Wextra", "-DAPROTO_WITH_METAL", f"-I{src}",
             "-isystem", str(metal_cpp)]
    flags += binding_flags
    if sys.platform != "darwin":  # a Mac has the real system headers
        flags.append(f"-I{src / 'metal' / 'linux_shim'}")
    with tempfile.TemporaryDirectory(prefix="aproto-metal-check-") as tmp:
        commands = []
        for i, path in enumerate(files):
            out = ["-fsyntax-only"] if syntax_only else ["-c", "-o", str(Path(tmp) / f"{i}-{path.stem}.o")]
            commands.append([*compiler, *flags, *out, str(path)])
        with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
            results = list(pool.map(_compile_one, commands))
    output = "".join(f"== {path}: {'ok' if rc == 0 else 'FAILED'}\n{text}" for path, (rc, text) in zip(files, results))
    ok = bool(files) and all(rc == 0 for rc, _ in results)
    failed = sum(rc != 0 for rc, _ in results)
    reason = f"{len(files) - failed}/{len(files)} files compiled against {metal_cpp}"
    return CheckResult(ok=ok, reason=reason, output=output, files=files, compiler=compiler,
                       metal_cpp=metal_cpp, seconds=time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m attention_proto.metal_check [file.cpp ...]``; exit 0 ok, 1 failed, 2 skipped."""
    args = sys.argv[1:] if argv is None else argv
    result = check_metal_sources(args or None)
    if result.skipped:
        print(f"metal-cpp compile check SKIPPED: {result.reason}")
        return 2
    print(result.output, end="")
    print(f"metal-cpp compile check {'passed' if result.ok else 'FAILED'}: {result.reason} "
          f"with {' '.join(result.compiler)} in {result.seconds:.1f} s")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
