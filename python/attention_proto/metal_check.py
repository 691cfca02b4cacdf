"""Compile-check the Metal backend for macOS on a machine without a Mac.

The Metal backend is built on macOS only, so elsewhere a misspelt metal-cpp method or a wrong argument
type would go unnoticed. This check compiles, against Apple's real metal-cpp headers (from the macOS
wheel of the PyPI package ``mlx-metal``), every ``.cpp`` under ``src/``, as a Mac build compiles them
all with ``APROTO_WITH_METAL``: the Metal backend, the registry, the runtime, the host backend, the
prototypes and the bindings. It uses the Apple build's definitions and include directories (``CMakeLists.txt``,
``cmake/metal.cmake``: ``APROTO_WITH_METAL``, ``_XOPEN_SOURCE=700``, ``_DARWIN_C_SOURCE``, ``-I src
-I shaders``), and compiles for the real target:

* Linux: zig's clang, ``python -m ziglang c++ -target aarch64-macos.14.0`` (the package's Linux
  dependency). zig ships Apple's macOS libc and system headers (objc, dispatch, mach,
  TargetConditionals, blocks on), so metal-cpp sees what it sees on a Mac; ``src/metal/sdk_shim/``
  stands in for the two framework headers zig lacks (CoreFoundation: ``CFTimeInterval``; IOSurface:
  ``IOSurfaceRef``). The bindings compile against nanobind and the running Python's headers (a Linux
  ``pyconfig.h``: declarations only, which is all a compile check needs).
* macOS: ``clang++`` from ``PATH`` with the real SDK, no shims.

Each file is compiled to an object in a temporary folder (zig's driver mishandles ``-fsyntax-only``).
Nothing is linked (zig has no Metal or Foundation link stubs) or run: no Metal semantics are tested.

Ingredients and results, each cached under ``~/.cache/attention_proto``:

* metal-cpp: ``pip download`` of the ``mlx-metal`` macOS wheel, unzipped into
  ``metal_cpp/<version>/metal_cpp`` (reused when present). Overrides: ``APROTO_METAL_CPP`` (an existing
  ``metal_cpp`` folder), ``APROTO_MLX_METAL_VERSION`` (a wheel version).
* compiler override: ``APROTO_METAL_CHECK_CXX``, a compiler command line that targets macOS by itself
  (e.g. ``clang++ -target arm64-apple-macos14 -isysroot <MacOSX.sdk>``); no shims are added to it.
* results: a file that compiled cleanly is not compiled again while its command and every file it
  includes (from the compiler's depfile) are unchanged, compared by content, in ``metal_check/``.
  ``APROTO_METAL_CHECK_CACHE=0`` turns this off. ``APROTO_METAL_CHECK_JOBS`` sets the parallel compiles
  (default 2).

Usage outside pytest::

    python -m attention_proto.metal_check [file.cpp ...]
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

#: The wheel tag of the macOS wheel that carries the headers (any macOS arm64 wheel has the same headers).
WHEEL_PLATFORM = "macosx_14_0_arm64"
_WHEEL_PREFIX = "mlx/include/metal_cpp/"
#: zig's target: Apple Silicon, the oldest macOS the package supports.
MACOS_TARGET = "aarch64-macos.14.0"
#: What CMakeLists.txt and cmake/metal.cmake define for every file of a Mac build with Metal.
APPLE_DEFINES = ["-DAPROTO_WITH_METAL", "-D_XOPEN_SOURCE=700", "-D_DARWIN_C_SOURCE"]
_MACRO = "APROTO_WITH_METAL"


class MetalCheckUnavailable(RuntimeError):
    """An ingredient of the check (metal-cpp headers, a compiler, the sources) is missing; the message says which."""


@dataclass
class FileResult:
    """One file's compile: ``ok``, the compiler's messages, and whether the result came from the cache."""

    path: Path
    ok: bool
    output: str = ""
    cached: bool = False


@dataclass
class CheckResult:
    """Outcome of :func:`check_metal_sources`.

    ``ok`` is true when every file compiled. ``skipped`` is true when the check could not run at all, with
    the cause in ``reason``. ``output`` holds the compiler's messages, each file's under a ``== name`` line;
    ``per_file`` the same, file by file.
    """

    ok: bool
    skipped: bool = False
    reason: str = ""
    output: str = ""
    files: list[Path] = field(default_factory=list)
    per_file: list[FileResult] = field(default_factory=list)
    compiler: list[str] = field(default_factory=list)
    metal_cpp: Path | None = None
    seconds: float = 0.0


def _cache_base() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attention_proto"


def _cache_root() -> Path:
    return _cache_base() / "metal_cpp"


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


def find_compiler() -> tuple[list[str], bool]:
    """The compiler command for macOS, and whether it needs ``src/metal/sdk_shim``.

    Raises :class:`MetalCheckUnavailable` when there is none.
    """
    override = os.environ.get("APROTO_METAL_CHECK_CXX")
    if override:
        return shlex.split(override), False
    if sys.platform == "darwin":
        exe = shutil.which("clang++")
        if exe:
            return [exe], False
        raise MetalCheckUnavailable("no clang++ on PATH (install the Xcode command-line tools)")
    if importlib.util.find_spec("ziglang") is not None:
        return [sys.executable, "-m", "ziglang", "c++", "-target", MACOS_TARGET], True
    raise MetalCheckUnavailable("the ziglang package is not installed (pip install ziglang): its clang and "
                                "macOS headers compile the Metal backend for macOS")


def metal_sources(src: Path) -> list[Path]:
    """What a Mac build compiles, every file with APROTO_WITH_METAL defined: ``src/metal/*.cpp`` first,
    then every other ``.cpp`` under ``src`` (runtime, host backend, prototypes, bindings)."""
    files = sorted((src / "metal").glob("*.cpp"))
    return files + sorted(p for p in src.rglob("*.cpp") if p.parent != src / "metal")


def _binding_flags() -> list[str] | None:
    """Include flags for nanobind and Python (files that include nanobind need them), or None without nanobind."""
    spec = importlib.util.find_spec("nanobind")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return ["-isystem", str(root / "include"), "-isystem", str(root / "ext" / "robin_map" / "include"),
            "-isystem", sysconfig.get_paths()["include"]]


# --- result cache ----------------------------------------------------------------------------------------

def _cache_enabled() -> bool:
    return os.environ.get("APROTO_METAL_CHECK_CACHE", "1") not in ("0", "false", "")


def _compiler_identity(compiler: list[str]) -> str:
    """Changes when the compiler does: the ziglang release, or the size and time of the clang++ binary."""
    if "ziglang" in compiler:
        from importlib.metadata import version
        return "ziglang " + version("ziglang")
    exe = shutil.which(compiler[0]) or compiler[0]
    try:
        st = os.stat(exe)
    except OSError:
        return exe
    return f"{exe} {st.st_size} {st.st_mtime_ns}"


def _entry_path(command: list[str]) -> Path:
    key = "\0".join([_compiler_identity(command), *command])
    return _cache_base() / "metal_check" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def _digest(path: str, memo: dict[str, str]) -> str:
    if path not in memo:
        try:
            memo[path] = hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
        except OSError:
            memo[path] = "missing"
    return memo[path]


def _depfile_inputs(depfile: Path) -> list[str]:
    """The inputs a make-style depfile lists (``target: a b \\`` continuation lines, ``\\ `` escapes spaces)."""
    text = depfile.read_text(errors="replace").replace("\\\n", " ")
    _, _, deps = text.partition(": ")
    return [d.replace("\\ ", " ") for d in re.findall(r"(?:\\ |\S)+", deps)]


def _cached(command: list[str], memo: dict[str, str]) -> str | None:
    """The output of a clean compile of `command` whose inputs are all unchanged, else None."""
    try:
        entry = json.loads(_entry_path(command).read_text())
    except (OSError, ValueError):
        return None
    if all(_digest(p, memo) == d for p, d in entry["inputs"].items()):
        return entry["output"]
    return None


def _store(command: list[str], depfile: Path, output: str, memo: dict[str, str]) -> None:
    try:
        inputs = {p: _digest(p, memo) for p in _depfile_inputs(depfile)}
        entry = _entry_path(command)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"inputs": inputs, "output": output}))
        os.replace(tmp, entry)
    except OSError:
        pass  # a cache that cannot be written only costs time


def _compile(path: Path, command: list[str], out_dir: Path, index: int, memo: dict[str, str]) -> FileResult:
    """Compiles one file (`command` lacks the output flags, so it is also the cache key)."""
    use_cache = _cache_enabled()
    if use_cache:
        output = _cached(command, memo)
        if output is not None:
            return FileResult(path, True, output, cached=True)
    obj, dep = out_dir / f"{index}-{path.stem}.o", out_dir / f"{index}-{path.stem}.d"
    full = [*command, "-c", "-o", str(obj), "-MD", "-MF", str(dep)]
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return FileResult(path, False, f"timed out after 600 s: {shlex.join(full)}\n")
    output = proc.stdout + proc.stderr
    if proc.returncode == 0 and use_cache and dep.is_file():
        _store(command, dep, output, memo)
    return FileResult(path, proc.returncode == 0, output)


def check_metal_sources(paths: list[str | os.PathLike[str]] | None = None, *,
                        src_root: str | os.PathLike[str] | None = None) -> CheckResult:
    """Compiles the Metal build's ``.cpp`` files for macOS against Apple's metal-cpp headers; never links.

    ``paths``: the files to check (default: :func:`metal_sources`). ``src_root``: the repository's ``src/``
    folder, added with ``-I`` (and its sibling ``shaders/``) so ``#include "runtime/..."`` resolves
    (default: next to this package in a source checkout). Files may live elsewhere (e.g. an edited copy in
    a temporary folder) as long as their includes resolve against ``src_root``.

    Returns a :class:`CheckResult`; ``skipped`` is set, with the reason, when the sources, the headers or a
    compiler are unavailable. Files that include nanobind are left out, and named in ``reason``, when
    nanobind is not installed.
    """
    start = time.perf_counter()
    src = Path(src_root).resolve() if src_root is not None else default_src_root()
    if src is None or not (src / "metal").is_dir():
        return CheckResult(ok=False, skipped=True, reason=(
            "the Metal backend sources (src/metal) are not present: this is an installed package, not a source "
            "checkout; pass src_root=<repository>/src"))
    files = [Path(p) for p in paths] if paths is not None else metal_sources(src)
    binding_flags = _binding_flags()
    left_out = []
    if binding_flags is None:
        left_out = [p for p in files if "<nanobind/" in p.read_text(errors="replace")]
        files = [p for p in files if p not in left_out]
    try:
        metal_cpp = metal_cpp_headers()
        compiler, needs_shim = find_compiler()
    except MetalCheckUnavailable as exc:
        return CheckResult(ok=False, skipped=True, reason=str(exc), files=files)

    # -Wextra without missing-field-initializers: aggregates initialised up to their defaulted members are meant
    flags = ["-std=c++17", "-Wall", "-Wextra", "-Wno-missing-field-initializers", *APPLE_DEFINES, f"-I{src}"]
    if (src.parent / "shaders").is_dir():
        flags.append(f"-I{src.parent / 'shaders'}")
    flags += ["-isystem", str(metal_cpp), *(binding_flags or [])]
    if needs_shim:
        flags += ["-isystem", str(src / "metal" / "sdk_shim")]
    jobs = max(1, int(os.environ.get("APROTO_METAL_CHECK_JOBS") or min(2, os.cpu_count() or 1)))
    memo: dict[str, str] = {}  # content digests, shared by the files of this run
    with tempfile.TemporaryDirectory(prefix="aproto-metal-check-") as tmp:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            per_file = list(pool.map(
                lambda item: _compile(item[1], [*compiler, *flags, str(item[1].resolve())], Path(tmp), item[0], memo),
                enumerate(files)))
    output = "".join(f"== {r.path}: {'ok' if r.ok else 'FAILED'}{' (cached)' if r.cached else ''}\n{r.output}"
                     for r in per_file)
    failed = sum(not r.ok for r in per_file)
    cached = sum(r.cached for r in per_file)
    warnings = sum(r.output.count("warning:") for r in per_file)
    reason = f"{len(files) - failed}/{len(files)} files compiled against {metal_cpp}"
    reason += f" ({cached} unchanged, from the cache)" if cached else ""
    reason += f", {warnings} warnings" if warnings else ""
    if left_out:
        reason += "; left out without nanobind: " + ", ".join(p.name for p in left_out)
    return CheckResult(ok=bool(files) and failed == 0, reason=reason, output=output, files=files,
                       per_file=per_file, compiler=compiler, metal_cpp=metal_cpp,
                       seconds=time.perf_counter() - start)


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
