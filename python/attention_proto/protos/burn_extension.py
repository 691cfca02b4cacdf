"""Prototype 8's bridge: the Rust crate ``rust/burn_extension`` (an ``AttentionBackend`` extension trait
over Burn's ``Backend``, run on Burn's Flex CPU backend) driven from Python through files.

:func:`build` builds the crate's ``burn_attention`` binary with cargo; :func:`run` writes q, k, v (and an
output gradient) as raw float32, runs one call of the extension or of Burn's own ``attention`` op, and
reads the outputs back. Flex timings are native CPU code (not the MSL emulation, and never an Apple GPU).
The crate is found in ``$APROTO_RUST_DIR``, the source checkout the current directory is in, or the copy
shipped inside the package; cargo builds into ``$CARGO_TARGET_DIR`` or ``~/.cache/attention-proto/cargo``
(shared by both, so Burn is compiled once).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

CRATE = "burn_extension"
BINARY = "burn_attention"
PROFILE = "dev"  # tests and bench share one build: see rust/Cargo.toml's profile notes


class CargoUnavailable(RuntimeError):
    """cargo is not installed, or the crate's sources are not there."""


def rust_dir() -> Path:
    """The cargo workspace holding the crate (see the module docstring for the search order)."""
    env = os.environ.get("APROTO_RUST_DIR")
    candidates = [Path(env)] if env else []
    candidates += [p / "rust" for p in (Path.cwd(), *Path.cwd().parents)]
    candidates.append(Path(__file__).resolve().parents[1] / "_rust")
    for c in candidates:
        if (c / CRATE / "Cargo.toml").is_file():
            return c
    raise CargoUnavailable(f"the {CRATE} crate was not found (looked in {', '.join(map(str, candidates[:3]))}, ...; "
                           "set APROTO_RUST_DIR to the repository's rust/ folder)")


def cargo() -> str:
    """The cargo executable (PATH, then ~/.cargo/bin), or CargoUnavailable saying how to get one."""
    found = shutil.which("cargo") or shutil.which("cargo", path=str(Path.home() / ".cargo" / "bin"))
    if not found:
        raise CargoUnavailable("cargo was not found on PATH or in ~/.cargo/bin: install Rust >= 1.95 with rustup "
                               "(https://rustup.rs) to build and test prototype 8")
    return found


def cargo_env() -> dict[str, str]:
    """The environment every cargo run of the package uses: one target folder for the workspace's crates
    (prototypes 5 and 8) and for the checkout's sources and the package's copy alike, so Burn, CubeCL and
    their dependencies (a cold build's minutes) are built once and shared."""
    default = Path.home() / ".cache" / "attention-proto" / "cargo"
    return {**os.environ, "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR") or str(default)}


def binary() -> Path:
    """Where :func:`build` puts the ``burn_attention`` binary."""
    return Path(cargo_env()["CARGO_TARGET_DIR"]) / "debug" / BINARY


def cargo_run(*args: str, env: dict[str, str] | None = None, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    """``cargo <args>`` in the workspace (output captured; ``env`` added to the environment); RuntimeError
    with cargo's output on failure."""
    proc = subprocess.run([cargo(), *args], cwd=rust_dir(), env={**cargo_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"cargo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def build() -> float:
    """Builds the binary (a no-op when it is up to date); returns the wall seconds it took."""
    start = time.monotonic()
    cargo_run("build", "--locked", "-p", CRATE, "--bin", BINARY)
    return time.monotonic() - start


@dataclasses.dataclass
class Result:
    """One call's outputs: ``out`` [B, Hq, Nq, Dv]; ``lse`` [B, Hq, Nq] (extension only); ``grads``
    (dq, dk, dv) with a gradient; ``seconds`` per timed run (wall time inside the binary, native CPU)."""

    out: np.ndarray
    lse: np.ndarray | None
    grads: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    seconds: list[float]


def run(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, impl: str = "extension", causal: bool = False,
        scale: float | None = None, softcap: float | None = None, alibi_slopes: np.ndarray | None = None,
        grad_out: np.ndarray | None = None, repeat: int = 1, warmup: int = 0) -> Result:
    """Runs ``impl`` ("extension" or "burn", Burn's own op) on the Flex backend; with ``grad_out`` the
    forward and backward of ``sum(grad_out * out)`` through Burn's autodiff. Build first (:func:`build`)."""
    if impl not in ("extension", "burn"):
        raise ValueError(f"impl must be 'extension' or 'burn', got {impl!r}")
    (b, hq, nq, d), (_, hkv, nk, _), dv = q.shape, k.shape, v.shape[-1]
    with tempfile.TemporaryDirectory(prefix="burn_attention_") as tmp:
        folder = Path(tmp)
        arrays = {"q": q, "k": k, "v": v, **({} if grad_out is None else {"dout": grad_out})}
        for name, a in arrays.items():
            np.ascontiguousarray(a, dtype="<f4").tofile(folder / f"{name}.f32")
        argv = [str(binary()), "--dir", tmp, "--shape", ",".join(map(str, (b, hq, hkv, nq, nk, d, dv))),
                "--impl", impl, "--repeat", str(repeat), "--warmup", str(warmup)]
        argv += ["--causal"] * causal + ["--grad"] * (grad_out is not None)
        argv += [] if scale is None else ["--scale", repr(float(scale))]
        argv += [] if softcap is None else ["--softcap", repr(float(softcap))]
        argv += [] if alibi_slopes is None else ["--alibi", ",".join(repr(float(s)) for s in alibi_slopes)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{BINARY} failed ({proc.returncode}): {proc.stderr.strip()}")

        def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
            return np.fromfile(folder / f"{name}.f32", dtype="<f4").reshape(shape)

        lse = read("lse", (b, hq, nq)) if (folder / "lse.f32").exists() else None
        grads = None if grad_out is None else (read("dq", q.shape), read("dk", k.shape), read("dv", v.shape))
        return Result(read("out", (b, hq, nq, dv)), lse, grads, json.loads(proc.stdout)["seconds"])
