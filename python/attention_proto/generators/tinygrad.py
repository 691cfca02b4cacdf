"""tinygrad's Metal renderer without a Metal device: the NULL device renders for target METAL:Apple9.

tinygrad imports its Metal runtime (Objective-C) only for the compiler object the renderer keeps; a stub
module stands in for it, so nothing here needs macOS. The launches come from the compiled schedule: each
CALL's PROGRAM carries tinygrad's ProgramInfo (global_size = threadgroups, local_size) and its argument
buffers, in the kernel's parameter order.
"""
from __future__ import annotations

import os
import sys
import types
from typing import Any

from . import BUFFERS, OUTPUTS, SHAPES, Generated, GeneratorUnavailable, Unsupported

TARGET = "NULL:METAL:Apple9"   # M3/M4 family: tinygrad enables its 8x8 simdgroup_matrix tensor cores there


def _import() -> tuple[Any, str]:
    os.environ["DEV"] = TARGET
    os.environ["PARALLEL"] = "0"          # worker processes would not see the stub below
    if "tinygrad.runtime.ops_metal" not in sys.modules:
        stub = types.ModuleType("tinygrad.runtime.ops_metal")

        class MetalCompiler:  # what MetalRenderer instantiates; the NULL device never compiles
            def compile(self, src: str) -> bytes:
                return src.encode()

            compile_cached = compile

        stub.MetalCompiler = MetalCompiler  # type: ignore[attr-defined]
        sys.modules["tinygrad.runtime.ops_metal"] = stub
    try:
        import tinygrad
        from importlib.metadata import version
    except ImportError:
        raise GeneratorUnavailable("tinygrad is not installed (pip install 'attention-proto[tinygrad]')") from None
    return tinygrad, version("tinygrad")


def _resolve(u: Any, Ops: Any) -> tuple[int, int, int]:
    """(param index, byte offset, byte length) of a CALL argument: a BUFFER or a byte view into one."""
    offset = nbytes = None
    while u.op is not Ops.BUFFER:
        if u.op is Ops.SHRINK:
            offset, nbytes = u.src[1].arg, u.src[2].arg
        u = u.src[0]
    total = u.src[0].arg * u.arg.dtype.itemsize
    return u.arg.slot, offset or 0, total if nbytes is None else nbytes


def _build(tinygrad: Any, kernel: str) -> Any:
    Tensor, dtypes = tinygrad.Tensor, tinygrad.dtypes
    s = SHAPES[kernel]
    ins = [Tensor.empty(*(s[d] for d in shape), dtype=getattr(dtypes, {"float32": "float32", "float16": "half"}[dt]))
           for name, (dt, shape) in BUFFERS[kernel].items() if name != OUTPUTS[kernel]]
    if kernel.startswith("gemm"):
        return ins, ins[0].matmul(ins[1], dtype=dtypes.float32)
    if kernel == "softmax":
        return ins, ins[0].softmax(axis=-1)
    q, k, v = (t.reshape(1, 1, s["N"], s["D"]) for t in ins)
    return ins, q.scaled_dot_product_attention(k, v).reshape(s["N"], s["D"])


def _kernel(tinygrad: Any, kernel: str) -> Generated:
    from tinygrad.engine.realize import compile_linear
    from tinygrad.uop.ops import Ops
    ins, out = _build(tinygrad, kernel)
    linear, _ = out.linear_with_vars()
    calls = [c for c in compile_linear(linear).src if c.src[0].op is Ops.PROGRAM]
    args = [[_resolve(b, Ops) for b in c.src[1:]] for c in calls]
    # Parameters: written by a kernel and whole = the output; read whole = the inputs in creation order
    # (checked against their sizes); any buffer used through byte views = scratch.
    names = [n for n in BUFFERS[kernel] if n != OUTPUTS[kernel]]
    viewed = {p for a in args for p, off, n in a if off or any(p == q and n != m for q, _, m in a)}
    written = {a[i][0] for c, a in zip(calls, args) for i in c.src[0].arg.outs}
    params = sorted({p for a in args for p, _, _ in a} - viewed)
    role = {p: OUTPUTS[kernel] if p in written else None for p in params}
    for p, name in zip([p for p in params if role[p] is None], names):
        role[p] = name
    sources, launches = [], []
    for c, a in zip(calls, args):
        info = c.src[0].arg
        name = info.function_name   # tinygrad may give two different kernels one name: number the repeats
        if any(la["function"] == name for la in launches):
            name = f"{name}_{len(launches)}"
        src = next(u.arg for u in c.src[0].src if u.op is Ops.SOURCE)
        sources.append(src.replace(f" {info.function_name}(", f" {name}("))
        launches.append({"function": name, "grid": [int(g) for g in info.global_size],
                         "threadgroup": [int(x) for x in (info.local_size or (1, 1, 1))],
                         "args": [{"buffer": role[p]} if p in role else
                                  {"buffer": "scratch", "offset": off, "nbytes": n} for p, off, n in a]})
    scratch = max((o["offset"] + o["nbytes"] for la in launches for o in la["args"] if o["buffer"] == "scratch"),
                  default=0)
    return Generated(kernel, "\n".join(_merge(sources)), launches, scratch_bytes=scratch)


def _merge(sources: list[str]) -> list[str]:
    """One file for a multi-kernel schedule: each top-level item (include, helper, kernel) once."""
    items: list[str] = []
    for src in sources:
        block, depth = [], 0
        for line in src.splitlines():
            block.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                item = "\n".join(block)
                if item.strip() and item not in items:
                    items.append(item)
                block = []
    return items


def generate() -> tuple[str, list[Generated | Unsupported]]:
    """tinygrad's Metal kernels for every problem of SHAPES."""
    tinygrad, version = _import()
    items: list[Generated | Unsupported] = []
    for kernel in SHAPES:
        try:
            items.append(_kernel(tinygrad, kernel))
        except Exception as exc:  # a lowering failure is a finding, with tinygrad's own message
            items.append(Unsupported(kernel, f"{type(exc).__name__}: {exc}"))
    return version, items
