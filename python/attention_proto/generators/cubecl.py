"""CubeCL through the `rust/cubecl_msl` crate: `cargo run` prints the MSL cubecl-cpp emits for its
`#[cube]` kernels, with the entry point, cube dim, shared memory and buffer count the compiler reports.

CubeCL leaves the cube count to the launching code, so the grid here is the launch rule of the crate's
kernels (one cube per 16 x 16 tile of C, per softmax row, per attention query row). Scalars travel in
CubeCL's info buffer (`struct info_st`), the argument after the buffers, which the MSL leaves without
an index (Metal gives it the first free one).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from ..protos import burn_extension
from . import SHAPES, Generated, GeneratorUnavailable, Unsupported

def crate_dir() -> Path:
    """The Rust workspace: ./rust when run from a source checkout, else the checkout this file is in."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / "rust" / "Cargo.toml").is_file():
            return root / "rust"
    return Path.cwd() / "rust"


def _grid(kernel: str) -> list[int]:
    s = SHAPES[kernel]
    if kernel.startswith("gemm"):
        return [-(-s["N"] // 16), -(-s["M"] // 16), 1]
    return [s["rows"] if kernel == "softmax" else s["N"], 1, 1]


def info_words(source: str) -> int:
    """32-bit words of CubeCL's `struct info_st` in `source` (its arrays of uint32_t)."""
    body = re.search(r"struct info_st\s*\{([^}]*)\}", source)
    return sum(int(n) for n in re.findall(r"uint32_t\s+\w+\[(\d+)\]", body.group(1))) if body else 0


def run_crate(crate: Path | None = None) -> dict:
    """Builds (debug profile: the quickest cold build) and runs the crate; returns its JSON."""
    crate = crate or crate_dir()
    try:
        cargo = burn_extension.cargo()
    except burn_extension.CargoUnavailable as e:
        raise GeneratorUnavailable(str(e)) from None
    if not (crate / "Cargo.toml").is_file():
        raise GeneratorUnavailable(f"no Rust workspace at {crate} (run from a source checkout)")
    proc = subprocess.run([cargo, "run", "--quiet", "--locked", "-p", "cubecl_msl"], cwd=crate,
                          env=burn_extension.cargo_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cargo run -p cubecl_msl failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def generate() -> tuple[str, list[Generated | Unsupported]]:
    """CubeCL's MSL for every problem of SHAPES."""
    report = run_crate()
    # CubeCL's kernels take their sizes at run time: the large GEMM is the float16 one on another grid
    large = [{**k, "kernel": name} for name in ("gemm_f16_large",) for k in report["kernels"] if k["kernel"] == "gemm_f16"]
    items: list[Generated | Unsupported] = []
    for k in report["kernels"] + large:
        names = ["A", "B", "C"] if k["kernel"].startswith("gemm") else \
            {"softmax": ["X", "Y"], "attention": ["Q", "K", "V", "O"]}[k["kernel"]]
        assert len(names) == k["buffers"], (k["kernel"], k["buffers"])
        info = {"struct": "info", "words": info_words(k["source"]), "scalars": k["scalars"]}
        launch = {"function": k["function"], "grid": _grid(k["kernel"]), "threadgroup": k["cube_dim"],
                  "args": [{"buffer": n} for n in names] + [info]}
        items.append(Generated(k["kernel"], k["source"].strip(), [launch],
                               note=f"shared memory {k['shared_memory_bytes']} bytes (cubecl-cpp)"))
    return report["cubecl"], items
