"""Slang through the compiler slangpy bundles (libslang-compiler), called through its C API with
slangc's command line (`-target metal`), so no GPU device is created.

The launch facts come from Slang's reflection JSON: each parameter's buffer index, the uniforms'
offsets (Slang packs an entry point's uniform parameters into one constant buffer, the MSL parameter
`EntryPointParams_0 constant*`), the thread-group size and the specialization constants, which Slang
emits as Metal function constants.
"""
from __future__ import annotations

import ctypes
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from . import SHAPES, Generated, GeneratorUnavailable, Unsupported

HERE = Path(__file__).resolve().parent
# problem -> (Slang file, entry point, defines)
PROBLEMS = {
    "gemm_f32": ("gemm.slang", "gemm", {"T": "float"}),
    "gemm_f16": ("gemm.slang", "gemm", {"T": "half"}),
    "softmax": ("softmax.slang", "softmax", {}),
    "attention": ("attention.slang", "attention", {}),
    "gemm_f16_large": ("gemm.slang", "gemm", {"T": "half"}),
}


def _library() -> tuple[ctypes.CDLL, str]:
    try:
        import slangpy
    except ImportError:
        raise GeneratorUnavailable("slangpy is not installed (pip install 'attention-proto[slang]')") from None
    path = next(Path(slangpy.__file__).parent.glob("libslang-compiler.so*"), None) or \
        next(Path(slangpy.__file__).parent.glob("libslang-compiler*.dylib"), None)
    if path is None:
        raise GeneratorUnavailable("slangpy ships no libslang-compiler here")
    lib = ctypes.CDLL(str(path))
    vp = ctypes.c_void_p
    lib.spCreateSession.restype, lib.spCreateSession.argtypes = vp, [ctypes.c_char_p]
    lib.spCreateCompileRequest.restype, lib.spCreateCompileRequest.argtypes = vp, [vp]
    lib.spProcessCommandLineArguments.argtypes = [vp, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    lib.spCompile.argtypes = [vp]
    lib.spGetDiagnosticOutput.restype, lib.spGetDiagnosticOutput.argtypes = ctypes.c_char_p, [vp]
    lib.spGetTargetCodeBlob.argtypes = [vp, ctypes.c_int, ctypes.POINTER(vp)]
    lib.spDestroyCompileRequest.argtypes = [vp]
    lib.spGetBuildTagString.restype = ctypes.c_char_p
    from importlib.metadata import version
    return lib, f"{lib.spGetBuildTagString().decode()} (slangpy {version('slangpy')})"


def _blob_text(blob: ctypes.c_void_p) -> str:
    """The bytes of an ISlangBlob (COM vtable: queryInterface, addRef, release, getBufferPointer, getBufferSize)."""
    vtable = ctypes.cast(ctypes.cast(blob, ctypes.POINTER(ctypes.c_void_p))[0], ctypes.POINTER(ctypes.c_void_p))
    pointer = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(vtable[3])(blob)
    size = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(vtable[4])(blob)
    return ctypes.string_at(pointer, size).decode()


def compile_metal(lib: ctypes.CDLL, file: Path, entry: str, defines: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(MSL, reflection) of one entry point, or RuntimeError with Slang's diagnostics."""
    if not file.is_file():  # Slang's command-line parser crashes on a missing file
        raise FileNotFoundError(f"no Slang source at {file}")
    session = lib.spCreateSession(None)
    request = lib.spCreateCompileRequest(session)
    with tempfile.TemporaryDirectory() as tmp:
        reflection = Path(tmp) / "reflection.json"
        args = [str(file), "-target", "metal", "-entry", entry, "-stage", "compute", "-line-directive-mode", "none",
                "-reflection-json", str(reflection)] + [f"-D{k}={v}" for k, v in defines.items()]
        argv = (ctypes.c_char_p * len(args))(*[a.encode() for a in args])
        failed = lib.spProcessCommandLineArguments(request, argv, len(args)) < 0 or lib.spCompile(request) < 0
        diagnostics = (lib.spGetDiagnosticOutput(request) or b"").decode()
        blob = ctypes.c_void_p()
        if failed or lib.spGetTargetCodeBlob(request, 0, ctypes.byref(blob)) < 0 or not blob:
            raise RuntimeError(f"slang cannot compile {file.name}:{entry}: {diagnostics.strip()}")
        source, facts = _blob_text(blob), json.loads(reflection.read_text())
    lib.spDestroyCompileRequest(request)
    return source, facts


def launch(source: str, facts: dict[str, Any], kernel: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The launch and the function-constant values of one compiled entry point, from its reflection."""
    entry = facts["entryPoints"][0]
    slots: dict[int, dict[str, Any]] = {}
    uniforms = []
    for p in entry["parameters"]:
        binding = p.get("binding", {})
        if binding.get("kind") == "constantBuffer":
            slots[binding["index"]] = {"buffer": p["name"]}
        elif binding.get("kind") == "uniform":
            uniforms.append((binding["offset"], p["name"]))
    if uniforms:  # the entry point's uniforms: one constant buffer, the signature's EntryPointParams
        index = int(re.search(r"EntryPointParams_\d+ constant\*\s*\w+\s*\[\[buffer\((\d+)\)\]\]", source).group(1))
        slots[index] = {"struct": "uniforms", "scalars": [name for _, name in sorted(uniforms)]}
    s = SHAPES[kernel]
    tg = entry["threadGroupSize"]
    grid = ([-(-s["N"] // tg[0]), -(-s["M"] // tg[1]), 1] if kernel.startswith("gemm")
            else [s["rows"] if kernel == "softmax" else s["N"], 1, 1])
    # by index: Slang renames them in the MSL (K -> fc_K_0)
    constants = {str(p["binding"]["index"]): s[p["name"]] for p in facts.get("parameters", [])
                 if p.get("binding", {}).get("kind") == "specializationConstant"}
    function = re.search(r"\[\[kernel\]\]\s+void\s+(\w+)\s*\(", source).group(1)
    return {"function": function, "grid": grid, "threadgroup": tg,
            "args": [slots[i] for i in sorted(slots)]}, constants


def generate() -> tuple[str, list[Generated | Unsupported]]:
    """Slang's Metal kernels for every problem of SHAPES."""
    lib, version = _library()
    items: list[Generated | Unsupported] = []
    for kernel, (file, entry, defines) in PROBLEMS.items():
        try:
            source, facts = compile_metal(lib, HERE / file, entry, defines)
        except RuntimeError as exc:
            items.append(Unsupported(kernel, str(exc)))
            continue
        la, constants = launch(source, facts, kernel)
        items.append(Generated(kernel, source.strip(), [la], constants=constants))
    return version, items
