"""TileLang: `tilelang.lower(prim_func, target="metal")` of T.prim_func kernels.

TileLang imports PyTorch at start-up (for its JIT adapters) although lowering to Metal source never
calls it. Where torch is not installed (a CPU-only machine cannot get a usable torch wheel from PyPI
without the CUDA stack), an inert stand-in module lets the import through; nothing it returns is
used by lowering. The launch facts come from TileLang: the MSL signature's parameter order, the PrimFunc's
`blockIdx` bindings (grid) and `tl.launch_threads` (threadgroup) and each buffer's element type as the MSL
signature declares it (TileLang declares vectorised half buffers as `uint4`).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import types
from typing import Any

from . import SHAPES, Generated, GeneratorUnavailable, Unsupported


class _Inert(type):
    """A class whose attributes are further inert classes: enough for `isinstance(x, torch.Tensor)`."""

    _made: dict[str, type] = {}

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _inert(f"{cls.__name__}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> type:
        return _inert(f"{cls.__name__}()")


def _inert(name: str) -> type:
    return _Inert._made.setdefault(name, _Inert(name, (), {}))


class _InertModule(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _inert(f"{self.__name__}.{name}")


def _import() -> tuple[Any, str]:
    if importlib.util.find_spec("tilelang") is None:  # before any stand-in: it must not outlive a failed import
        raise GeneratorUnavailable("tilelang is not installed (pip install 'attention-proto[tilelang]')")
    try:
        import torch  # noqa: F401
    except ImportError:
        for name in ("torch", "torch.utils", "torch.utils.dlpack", "torch.cuda", "torch.nn", "torch.nn.functional",
                     "torch.library", "torch._C", "torch.utils.cpp_extension", "torch.fx", "torch.distributed",
                     "torch.backends", "torch.backends.cuda", "torch.version", "torch.types", "torch.overrides",
                     "torch._dynamo", "torch.mps"):
            module = _InertModule(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            module.__path__ = []
            sys.modules.setdefault(name, module)
        sys.modules["torch"].__version__ = "0+inert"  # type: ignore[attr-defined]
    try:
        import tilelang
    except ImportError:
        raise GeneratorUnavailable("tilelang is not installed (pip install 'attention-proto[tilelang]')") from None
    return tilelang, tilelang.__version__


def _gemm(T: Any, kernel: str, dtype: str) -> Any:
    s = SHAPES[kernel]
    # tiles dividing M and N: with N = 80 and 32-wide tiles TileLang's simdgroup_store writes past the row
    m, n, k, bm, bn, bk = s["M"], s["N"], s["K"], 32, 16, 32

    @T.prim_func
    def gemm(A: T.Tensor((m, k), dtype), B: T.Tensor((k, n), dtype), C: T.Tensor((m, n), "float32")):
        with T.Kernel(T.ceildiv(n, bn), T.ceildiv(m, bm), threads=64) as (bx, by):
            a_shared = T.alloc_shared((bm, bk), dtype)
            b_shared = T.alloc_shared((bk, bn), dtype)
            c_local = T.alloc_fragment((bm, bn), "float32")
            T.clear(c_local)
            for ko in T.Pipelined(T.ceildiv(k, bk), num_stages=0):
                T.copy(A[by * bm, ko * bk], a_shared)
                T.copy(B[ko * bk, bx * bn], b_shared)
                T.gemm(a_shared, b_shared, c_local)
            T.copy(c_local, C[by * bm, bx * bn])
    return gemm


def _softmax(T: Any) -> Any:
    rows, cols = SHAPES["softmax"]["rows"], SHAPES["softmax"]["cols"]

    @T.prim_func
    def softmax(X: T.Tensor((rows, cols), "float32"), Y: T.Tensor((rows, cols), "float32")):
        with T.Kernel(rows, threads=128) as bx:
            x = T.alloc_fragment((cols,), "float32")
            mx = T.alloc_fragment((1,), "float32")
            total = T.alloc_fragment((1,), "float32")
            T.copy(X[bx, 0], x)
            T.reduce_max(x, mx, dim=0)
            for i in T.Parallel(cols):
                x[i] = T.exp(x[i] - mx[0])
            T.reduce_sum(x, total, dim=0)
            for i in T.Parallel(cols):
                x[i] = x[i] / total[0]
            T.copy(x, Y[bx, 0])
    return softmax


def _attention(T: Any) -> Any:
    n, d = SHAPES["attention"]["N"], SHAPES["attention"]["D"]
    scale = 1.0 / d ** 0.5

    @T.prim_func
    def attention(Q: T.Tensor((n, d), "float32"), K: T.Tensor((n, d), "float32"), V: T.Tensor((n, d), "float32"),
                  O: T.Tensor((n, d), "float32")):
        with T.Kernel(T.ceildiv(n, 32), threads=128) as bx:
            q_shared = T.alloc_shared((32, d), "float32")
            k_shared = T.alloc_shared((n, d), "float32")
            v_shared = T.alloc_shared((n, d), "float32")
            s = T.alloc_fragment((32, n), "float32")
            p_shared = T.alloc_shared((32, n), "float32")
            o = T.alloc_fragment((32, d), "float32")
            mx = T.alloc_fragment((32,), "float32")
            total = T.alloc_fragment((32,), "float32")
            T.copy(Q[bx * 32, 0], q_shared)
            T.copy(K[0, 0], k_shared)
            T.copy(V[0, 0], v_shared)
            T.clear(s)
            T.gemm(q_shared, k_shared, s, transpose_B=True)
            T.reduce_max(s, mx, dim=1)
            for i, j in T.Parallel(32, n):
                s[i, j] = T.exp((s[i, j] - mx[i]) * scale)
            T.reduce_sum(s, total, dim=1)
            T.copy(s, p_shared)
            T.clear(o)
            T.gemm(p_shared, v_shared, o)
            for i, j in T.Parallel(32, d):
                o[i, j] = o[i, j] / total[i]
            T.copy(o, O[bx * 32, 0])
    return attention


_VIEWS = {"uint4": "uint32", "uint2": "uint32", "uint": "uint32", "half": "float16", "float": "float32",
          "float4": "float32", "float2": "float32", "half4": "float16", "half2": "float16"}


def _launch(source: str, func: Any) -> dict[str, Any]:
    signature = re.search(r"\[\[kernel[^\]]*\]\]\s*void\s+(\w+)\s*\((.*?)\)\s*\{", source, re.S)
    args = []
    for name, index in re.findall(r"(\w+)\s*\[\[\s*buffer\((\d+)\)\s*\]\]", signature.group(2)):
        elem = re.search(rf"device\s+(\w+)\s*\*\s*(?:__restrict\s+)?{name}\b", signature.group(2)).group(1)
        args.append((int(index), {"buffer": name, "view": _VIEWS.get(elem, elem)}))
    script = func.script()   # the PrimFunc's own launch facts: blockIdx bindings, tl.launch_threads
    extents = {axis: int(n) for n, axis in re.findall(r'thread_binding\((\d+), thread="blockIdx\.(\w)"\)', script)}
    grid = [extents.get(a, 1) for a in "xyz"]
    threadgroup = [int(t) for t in re.search(r'"tl\.launch_threads":\s*\[(\d+), (\d+), (\d+)\]', script).groups()]
    return {"function": signature.group(1), "grid": grid, "threadgroup": threadgroup,
            "args": [a for _, a in sorted(args)]}


def generate() -> tuple[str, list[Generated | Unsupported]]:
    """TileLang's Metal kernels for every problem of SHAPES."""
    tilelang, version = _import()
    import tilelang.language as T
    import tvm
    makers = {"gemm_f32": lambda: _gemm(T, "gemm_f32", "float32"), "gemm_f16": lambda: _gemm(T, "gemm_f16", "float16"),
              "softmax": lambda: _softmax(T), "attention": lambda: _attention(T),
              "gemm_f16_large": lambda: _gemm(T, "gemm_f16_large", "float16")}
    items: list[Generated | Unsupported] = []
    for kernel, make in makers.items():
        try:
            func = make()
            with tvm.target.Target("metal"):
                artifact = tilelang.lower(func, target="metal")
            source = artifact.kernel_source
            items.append(Generated(kernel, source.strip(), [_launch(source, func)]))
        except Exception as exc:  # a lowering failure is a finding, with TileLang's own message
            message = str(exc).strip().splitlines()
            items.append(Unsupported(kernel, f"{type(exc).__name__}: {message[-1] if message else ''}"[:600]))
    return version, items
