"""Real MSL from public projects, fetched at test time from package registries, never committed.

Each project's sources come from one package of a pinned version (their kernels' argument structs
change between releases), downloaded once with the registry's own client and unpacked under
``~/.cache/attention_proto/corpus/`` (``APROTO_CACHE_DIR/corpus`` when set), so a warm run downloads
nothing. A package that cannot be had makes its tests skip with the reason.

- llama.cpp's ggml-metal kernels: the ``llama-cpp-python`` sdist (PyPI), which vendors llama.cpp;
- MLX's kernel headers: the ``mlx-metal`` macOS wheel (PyPI);
- tinygrad's Metal renderer: the ``tinygrad`` wheel (PyPI), run in a subprocess with no device;
- candle's Metal kernels: the ``candle-metal-kernels`` crate (crates.io, through ``cargo fetch``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import pytest

LLAMA_CPP_PYTHON = "0.3.36"
MLX_METAL = "0.32.4"
TINYGRAD = "0.14.0"
CANDLE_METAL_KERNELS = "0.9.2"


def cache_root() -> Path:
    base = os.environ.get("APROTO_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "attention_proto") / "corpus"


def _cached(name: str, fill: Callable[[Path], None]) -> Path:
    """``corpus/<name>``, made by ``fill(stage)`` on first use (atomically: a half-made copy never counts)."""
    dest = cache_root() / name
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}-"))
    try:
        fill(stage)
        (stage / ".complete").write_text("ok\n")
        shutil.rmtree(dest, ignore_errors=True)
        stage.rename(dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return dest


def _run(cmd: list[str], what: str, timeout: float = 900, **kw: object) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot fetch {what}: {exc}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        pytest.skip(f"cannot fetch {what} ({' '.join(cmd[:5])} ...): {tail}")


def _pip_download(spec: str, into: Path, *extra: str) -> Path:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
          *extra, spec, "-d", str(into)], spec)
    files = [p for p in into.iterdir() if p.suffix in (".whl", ".gz")]
    if not files:
        pytest.skip(f"cannot fetch {spec}: pip downloaded nothing")
    return files[0]


def _safe_extract(names: list[str], prefix: str, dest: Path, read: Callable[[str], bytes]) -> int:
    count = 0
    for name in names:
        rel = name[len(prefix):]
        if not name.startswith(prefix) or name.endswith("/") or ".." in Path(rel).parts or not rel:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read(name))
        count += 1
    return count


def llama_cpp() -> Path:
    """ggml's Metal sources as llama-cpp-python ships them: ``ggml-metal/kernels/*.metal`` and the
    headers they include (``ggml-metal/ggml-metal-impl.h``, ``ggml-common.h``)."""
    def fill(stage: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            # an sdist: pip prepares its metadata (scikit-build-core, in an isolated environment). Only this
            # package is taken from source: ":all:" would build the isolated environment's cmake from source too
            sdist = _pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON}", Path(tmp), "--no-binary", "llama-cpp-python")
            root = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/ggml/src/"
            with tarfile.open(sdist) as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                wanted = [n for n in members if n.startswith(root + "ggml-metal/kernels/") or
                          n in (root + "ggml-metal/ggml-metal-impl.h", root + "ggml-common.h")]
                n = _safe_extract(wanted, root, stage, lambda name: tar.extractfile(members[name]).read())  # type: ignore[union-attr]
            if n < 10:
                pytest.skip(f"llama-cpp-python {LLAMA_CPP_PYTHON} has no ggml-metal kernels")
    return _cached(f"llama-cpp-python-{LLAMA_CPP_PYTHON}", fill)


def mlx() -> Path:
    """The include root of MLX's Metal kernel headers (``mlx/backend/metal/kernels/...``)."""
    def fill(stage: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _pip_download(f"mlx-metal=={MLX_METAL}", Path(tmp), "--only-binary=:all:", "--platform",
                                  "macosx_14_0_arm64", "--python-version", "3.11")
            prefix = "mlx/include/"
            with zipfile.ZipFile(wheel) as whl:
                names = [n for n in whl.namelist() if n.startswith(prefix + "mlx/backend/metal/kernels/")]
                if _safe_extract(names, prefix, stage, whl.read) < 10:
                    pytest.skip(f"mlx-metal {MLX_METAL} has no Metal kernel headers")
    return _cached(f"mlx-metal-{MLX_METAL}", fill)


def candle() -> Path:
    """candle's ``metal_src/`` folder of whole .metal files."""
    def fill(stage: Path) -> None:
        if shutil.which("cargo") is None:
            pytest.skip("cargo is not installed: cannot fetch candle-metal-kernels from crates.io")
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp) / "corpus"
            (project / "src").mkdir(parents=True)
            (project / "src" / "lib.rs").write_text("")
            (project / "Cargo.toml").write_text(
                '[package]\nname = "corpus"\nversion = "0.0.0"\nedition = "2021"\n\n'
                f'[dependencies]\ncandle-metal-kernels = "={CANDLE_METAL_KERNELS}"\n')
            home = Path(tmp) / "cargo-home"
            _run(["cargo", "fetch", "--manifest-path", str(project / "Cargo.toml")],
                 f"candle-metal-kernels {CANDLE_METAL_KERNELS}", env={**os.environ, "CARGO_HOME": str(home)})
            crates = list(home.glob(f"registry/cache/*/candle-metal-kernels-{CANDLE_METAL_KERNELS}.crate"))
            if not crates:
                pytest.skip(f"cargo fetched no candle-metal-kernels-{CANDLE_METAL_KERNELS}.crate")
            prefix = f"candle-metal-kernels-{CANDLE_METAL_KERNELS}/src/metal_src/"
            with tarfile.open(crates[0]) as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                if _safe_extract(list(members), prefix, stage, lambda n: tar.extractfile(members[n]).read()) < 5:  # type: ignore[union-attr]
                    pytest.skip(f"candle-metal-kernels {CANDLE_METAL_KERNELS} has no metal_src/")
    return _cached(f"candle-metal-kernels-{CANDLE_METAL_KERNELS}", fill)


# tinygrad renders kernels for Metal without a device: its NULL device with the METAL renderer, whose
# compiler (Apple's MTLCompiler) is replaced by one that only records the rendered source.
_TINYGRAD_RENDER = r'''
import json, sys
from tinygrad.renderer import cstyle

class _Rendered(Exception):
    pass

class _RecordOnly:
    def compile_cached(self, src):
        raise _Rendered()

def _init(self, target):
    cstyle.CStyleLanguage.__init__(self, target)
    self.compiler, self.tensor_cores = _RecordOnly(), []

cstyle.MetalRenderer.__init__ = _init
sources = []
_render = cstyle.MetalRenderer.render
def _record(self, *a, **k):
    src = _render(self, *a, **k)
    sources.append(src)
    return src
cstyle.MetalRenderer.render = _record

from tinygrad import Tensor, dtypes
out = {}
for name, make in [
    ("reduce", lambda: ((Tensor.empty(37, 29) * Tensor.empty(37, 29)).sum(axis=1) + 1)),
    ("matmul", lambda: Tensor.empty(23, 29) @ Tensor.empty(29, 19)),
    ("elementwise_half", lambda: (Tensor.empty(1001, dtype=dtypes.half).exp2() * Tensor.empty(1001, dtype=dtypes.half)).sqrt()),
]:
    sources.clear()
    try:
        make().realize()
    except _Rendered:
        pass
    out[name] = sources[-1] if sources else None
json.dump(out, sys.stdout)
'''


def tinygrad_kernels() -> dict[str, str]:
    """name -> Metal source rendered by tinygrad (see _TINYGRAD_RENDER for the tensor programs)."""
    def fill(stage: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _pip_download(f"tinygrad=={TINYGRAD}", Path(tmp), "--only-binary=:all:")
            with zipfile.ZipFile(wheel) as whl:
                whl.extractall(stage / "site")
        env = {**os.environ, "PYTHONPATH": str(stage / "site"), "DEV": "NULL:METAL", "CACHEDB": str(stage / "cache.db")}
        proc = subprocess.run([sys.executable, "-c", _TINYGRAD_RENDER], capture_output=True, text=True, env=env,
                              timeout=600, cwd=stage)
        if proc.returncode != 0:
            pytest.skip(f"tinygrad {TINYGRAD} could not render Metal kernels: {proc.stderr.strip().splitlines()[-1:]}")
        rendered = json.loads(proc.stdout)
        if not all(rendered.values()):
            pytest.skip(f"tinygrad {TINYGRAD} rendered no kernel for {[k for k, v in rendered.items() if not v]}")
        (stage / "kernels.json").write_text(json.dumps(rendered, indent=1))
        shutil.rmtree(stage / "site")
    return json.loads((_cached(f"tinygrad-{TINYGRAD}", fill) / "kernels.json").read_text())
