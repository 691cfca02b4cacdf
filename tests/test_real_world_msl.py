"""Real kernels from public projects, run as their projects ship them, against numpy references.

The sources are fetched at test time (tests/msl_corpus.py) and never committed. Only the kernel name,
the function constants and the arguments are chosen here, the way each project's host code chooses
them (cited per test); MLX's headers ship without their instantiation files, so those tests publish
instances with MLX's own `instantiate_kernel` macro, as MLX's JIT does.
"""
from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap
import msl_corpus
from attention_proto.msl import kernels_in


def assert_close(out: np.ndarray, ref: np.ndarray, *, rtol: float, atol: float, norm: float) -> None:
    """Every element written (outputs start as NaN), a relative norm bound and an element-wise bound."""
    got = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    assert np.isfinite(got).all(), f"{np.count_nonzero(~np.isfinite(got))} elements unwritten or not finite"
    err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err <= norm, f"relative norm error {err:.3g} > {norm}"
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


def as_bytes(record: np.ndarray) -> np.ndarray:
    """A C struct argument (a numpy record) as the uint8 bytes a `constant S&` parameter takes."""
    return np.frombuffer(record.tobytes(), dtype=np.uint8).copy()


# ------------------------------------------------------------------------------------------ llama.cpp
# ggml-metal's kernels (llama-cpp-python's vendored llama.cpp). Arguments follow ggml-metal-ops.cpp and
# ggml-metal-device.cpp of the same release; struct layouts follow ggml-metal-impl.h.

@pytest.fixture(scope="module")
def ggml() -> dict[str, object]:
    root = msl_corpus.llama_cpp()
    return {"kernels": root / "ggml-metal" / "kernels", "include_dirs": [root / "ggml-metal", root]}


def ggml_kernel(ggml: dict[str, object], file: str, name: str, **constants: object) -> ap.Kernel:
    return ap.Kernel.from_file(ggml["kernels"] / file, name, constants=constants,  # type: ignore[operator]
                               include_dirs=ggml["include_dirs"])  # type: ignore[arg-type]


KARGS_UNARY = np.dtype([(n, "<i4") for n in ("ne00", "ne01", "ne02", "ne03")] +
                       [(n, "<u8") for n in ("nb00", "nb01", "nb02", "nb03")] +
                       [(n, "<i4") for n in ("ne0", "ne1", "ne2", "ne3")] +
                       [(n, "<u8") for n in ("nb0", "nb1", "nb2", "nb3")] +
                       [(n, "<f4") for n in ("slope", "scale", "bias", "val", "min", "max")], align=True)

UNARY_OPS = {  # OP_UNARY_NUM_* of ggml-metal-impl.h -> float64 reference
    "SILU": (106, lambda x: x / (1 + np.exp(-x))),
    "GELU": (103, lambda x: 0.5 * x * (1 + np.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)))),
    "SGN": (110, np.sign),
    "STEP": (111, lambda x: (x > 0).astype(np.float64)),
    "TANH": (100, np.tanh),
}


@pytest.mark.parametrize("name,op,dtype", [
    ("kernel_unary_f32_f32", "SILU", np.float32),
    ("kernel_unary_f32_f32", "GELU", np.float32),
    ("kernel_unary_f32_f32_4", "SGN", np.float32),   # T(x > 0) - T(x < 0) with T = float4
    ("kernel_unary_f16_f16_4", "STEP", np.float16),  # T(x > 0) with T = half4
    ("kernel_unary_f32_f32_4", "TANH", np.float32),
])
def test_ggml_unary(ggml: dict[str, object], backend: str, rng: np.random.Generator, name: str, op: str,
                    dtype: type) -> None:
    code, reference = UNARY_OPS[op]
    ne00, ne01, ne02 = 4 * 67, 5, 3                          # rows of 268: a multiple of 4 for the _4 kernels
    x = rng.standard_normal((ne02, ne01, ne00)).astype(dtype) * 3
    x.flat[rng.choice(x.size, 7, replace=False)] = 0         # sign and step of 0
    out = np.full_like(x, np.nan)
    c4 = name.endswith("_4")
    esize = x.itemsize
    args = np.zeros((), KARGS_UNARY)
    args["ne00"] = args["ne0"] = ne00 // 4 if c4 else ne00
    args["ne01"] = args["ne1"] = ne01
    args["ne02"] = args["ne2"] = ne02
    args["ne03"] = args["ne3"] = 1
    args["nb00"] = args["nb0"] = esize
    args["nb01"] = args["nb1"] = ne00 * esize
    args["nb02"] = args["nb2"] = ne00 * ne01 * esize
    args["nb03"] = args["nb3"] = x.nbytes
    k = ggml_kernel(ggml, "unary.metal", name, FC_unary_op=code, FC_unary_cnt=False)
    nth = min(int(args["ne00"]), 256)                        # ggml_metal_op_unary
    nk0 = (int(args["ne00"]) + nth - 1) // nth
    k(as_bytes(args), x.view(np.uint8), out.view(np.uint8), grid=(nk0 * ne01, ne02, 1), threadgroup=nth,
      backend=backend)
    tol = 2e-3 if dtype == np.float16 else 2e-6
    assert_close(out, reference(x.astype(np.float64)), rtol=tol, atol=tol, norm=tol)


KARGS_NORM = np.dtype([("ne00", "<i4"), ("ne00_t", "<i4"), ("nb1", "<u8"), ("nb2", "<u8"), ("nb3", "<u8"),
                       ("eps", "<f4"), ("nef1", "<i4", 3), ("nef2", "<i4", 3), ("nef3", "<i4", 3),
                       ("nbf1", "<u8", 3), ("nbf2", "<u8", 3), ("nbf3", "<u8", 3), ("scale", "<f4")], align=True)


def test_ggml_rms_norm_mul(ggml: dict[str, object], backend: str, rng: np.random.Generator) -> None:
    ne00, ne01, ne02 = 333, 5, 3                             # 333 % 4 != 0: the scalar kernel
    x = rng.standard_normal((ne02, ne01, ne00)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, ne00).astype(np.float32)
    out = np.full_like(x, np.nan)
    args = np.zeros((), KARGS_NORM)
    args["ne00"] = args["ne00_t"] = ne00
    args["nb1"], args["nb2"], args["nb3"] = ne00 * 4, ne00 * ne01 * 4, x.nbytes
    args["eps"] = 1e-6
    args["nef1"] = args["nef2"] = args["nef3"] = [ne01, 1, 1]   # src1 (the weights) broadcast over rows
    args["nef2"][0], args["nef3"][0] = ne02, 1
    args["nbf1"] = [ne00 * 4, 0, 0]
    args["nbf2"] = [ne00 * ne01 * 4, 0, 0]
    args["nbf3"] = [x.nbytes, 0, 0]
    args["scale"] = 1.0
    nth = 32                                                  # ggml_metal_op_norm
    while nth < ne00 and nth < 1024:
        nth *= 2
    nth = min(nth, (ne00 + 31) // 32 * 32)
    k = ggml_kernel(ggml, "norm.metal", "kernel_rms_norm_mul_f32", FC_norm_use_scale=False)
    k(as_bytes(args), x.view(np.uint8), w.view(np.uint8), w.view(np.uint8), out.view(np.uint8),
      grid=(ne01, ne02, 1), threadgroup=nth, threadgroup_memory={0: 32 * 4}, backend=backend)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(axis=-1, keepdims=True) + 1e-6) * w
    assert_close(out, ref, rtol=1e-5, atol=1e-5, norm=1e-6)


KARGS_MUL_MV = np.dtype([("ne00", "<i4"), ("ne01", "<i4"), ("ne02", "<i4"), ("nb00", "<u8"), ("nb01", "<u8"),
                         ("nb02", "<u8"), ("nb03", "<u8"), ("ne10", "<i4"), ("ne11", "<i4"), ("ne12", "<i4"),
                         ("nb10", "<u8"), ("nb11", "<u8"), ("nb12", "<u8"), ("nb13", "<u8"), ("ne0", "<i4"),
                         ("ne1", "<i4"), ("nr0", "<i4"), ("r2", "<i2"), ("r3", "<i2")], align=True)
BLOCK_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])      # ggml-common.h: 32 weights in 18 bytes


def test_ggml_mul_mv_library_file(ggml: dict[str, object], backend: str, rng: np.random.Generator) -> None:
    """mul_mv.metal as shipped: 120+ kernels, 6 function constants, of which this one's helpers use 5."""
    src = (ggml["kernels"] / "mul_mv.metal").read_text()  # type: ignore[operator]
    names = kernels_in(src, path=ggml["kernels"] / "mul_mv.metal", include_dirs=ggml["include_dirs"])  # type: ignore[operator,arg-type]
    assert len(names) > 100 and "kernel_mul_mv_q4_0_f32" in names and "kernel_mul_mv_f16_f32" in names
    assert len(set(names)) == len(names)
    m, kdim, ncols = 37, 32 * 13, 3                           # rows not a multiple of the 8 per threadgroup
    nb = kdim // 32
    pad = 8                                                   # rows past the end are read (not used): padding
    blocks = np.zeros((m + pad, nb), BLOCK_Q4_0)
    blocks["d"] = rng.uniform(0.01, 0.1, (m + pad, nb)).astype(np.float16)
    blocks["qs"] = rng.integers(0, 256, (m + pad, nb, 16), dtype=np.uint8)
    y = rng.standard_normal((ncols, kdim)).astype(np.float32)
    out = np.full((ncols, m), np.nan, np.float32)
    q = blocks["qs"][:m].astype(np.int64)
    weights = np.concatenate([(q & 0xF) - 8, (q >> 4) - 8], axis=-1) * blocks["d"][:m, :, None].astype(np.float64)
    weights = weights.reshape(m, kdim)
    args = np.zeros((), KARGS_MUL_MV)
    args["ne00"], args["ne01"], args["ne02"] = kdim, m, 1
    args["nb00"], args["nb01"] = BLOCK_Q4_0.itemsize, nb * BLOCK_Q4_0.itemsize
    args["nb02"] = args["nb03"] = m * nb * BLOCK_Q4_0.itemsize
    args["ne10"], args["ne11"], args["ne12"] = kdim, ncols, 1
    args["nb10"], args["nb11"] = 4, kdim * 4
    args["nb12"] = args["nb13"] = y.nbytes
    args["ne0"], args["ne1"], args["nr0"], args["r2"], args["r3"] = m, ncols, 4, 1, 1
    nsg, nr0 = 2, 4                                           # N_SG_Q4_0, N_R0_Q4_0 (ggml-metal-impl.h)
    k = ggml_kernel(ggml, "mul_mv.metal", "kernel_mul_mv_q4_0_f32", FC_mul_mv_nsg=nsg, FC_mul_mv_ne12=1,
                    FC_mul_mv_r2=1, FC_mul_mv_r3=1, FC_mul_mv_split=False)
    k(as_bytes(args), blocks.view(np.uint8).reshape(-1), y.view(np.uint8), out.view(np.uint8),
      grid=((m + nr0 * nsg - 1) // (nr0 * nsg), ncols, 1), threadgroup=(32, nsg, 1), threadgroup_memory={0: 0},
      backend=backend)  # ggml sets smem = 0 for q4_0
    assert_close(out, y.astype(np.float64) @ weights.T, rtol=1e-4, atol=1e-4, norm=1e-5)


def test_ggml_kernels_in_inactive_branches_are_not_listed(ggml: dict[str, object]) -> None:
    path = ggml["kernels"] / "mul_mv.metal"  # type: ignore[operator]
    names = kernels_in(path.read_text(), path=path, include_dirs=ggml["include_dirs"])  # type: ignore[arg-type]
    # bf16 kernels sit in `#if defined(GGML_METAL_HAS_BF16)`, which ggml defines only for devices with bfloat
    assert not any("bf16" in n for n in names)
    assert "kernel_mul_mv_f32_f32" in names


def test_ggml_flash_attention_vector_kernel_builds(ggml: dict[str, object]) -> None:
    """fa_vec_f16.metal, llama.cpp's single-query flash attention: `(half4)` / `(float4)` casts of other
    vector types, function-pointer template parameters, 13 function constants. It builds with the
    constants ggml_metal_library_get_pipeline_flash_attn_ext_vec passes (numerics need its two-kernel
    workgroup reduction and are covered by the kernels above and MLX's and candle's attention)."""
    path = ggml["kernels"] / "fa_vec_f16.metal"  # type: ignore[operator]
    names = kernels_in(path.read_text(), path=path, include_dirs=ggml["include_dirs"])  # type: ignore[arg-type]
    assert "kernel_flash_attn_ext_vec_f16_dk64_dv64" in names and len(names) > 30
    flags = {f"FC_flash_attn_ext_vec_{f}": False for f in ("has_mask", "has_sinks", "has_bias", "has_scap",
                                                          "has_kvpad", "has_sparse")}
    k = ggml_kernel(ggml, "fa_vec_f16.metal", "kernel_flash_attn_ext_vec_f16_dk64_dv64", **flags,
                    FC_flash_attn_ext_vec_ns10=64, FC_flash_attn_ext_vec_ns20=64, FC_flash_attn_ext_vec_nsg=1,
                    FC_flash_attn_ext_vec_nwg=32)
    k.pipeline("host")  # translates and compiles: ShaderCompileError otherwise


# ------------------------------------------------------------------------------------------ MLX
# MLX's kernel headers (the mlx-metal wheel). Instances are published with MLX's own macro.

@pytest.fixture(scope="module")
def mlx_include() -> list[str]:
    return [str(msl_corpus.mlx())]


def mlx_kernel(include: list[str], headers: list[str], instances: str, name: str, **constants: object) -> ap.Kernel:
    src = "".join(f'#include "mlx/backend/metal/kernels/{h}"\n' for h in ["utils.h", *headers]) + instances
    assert name in kernels_in(src, include_dirs=include)
    return ap.Kernel(src, name, include_dirs=include, constants=constants)  # type: ignore[arg-type]


@pytest.mark.parametrize("op,dtype,size", [("Sigmoid", np.float32, 1001), ("Exp", ml_dtypes.bfloat16, 777)])
def test_mlx_unary(mlx_include: list[str], backend: str, rng: np.random.Generator, op: str, dtype: type,
                   size: int) -> None:
    tname = {np.float32: ("float", "float32"), ml_dtypes.bfloat16: ("bfloat16_t", "bfloat16")}[dtype]
    name = f"v_{op}_{tname[1]}{tname[1]}"
    k = mlx_kernel(mlx_include, ["unary_ops.h", "unary.h"],
                   f'instantiate_kernel("{name}", unary_v, {tname[0]}, {tname[0]}, {op})\n', name)
    x = (rng.standard_normal(size) * 3).astype(dtype)
    out = np.full(size, np.nan, dtype)
    per_thread = 8 // np.dtype(dtype).itemsize               # WorkPerThread<T>::n (utils.h)
    threads = (size + per_thread - 1) // per_thread
    k(x, out, np.uint32(size), grid=(threads + 63) // 64, threadgroup=64, backend=backend)
    x64 = x.astype(np.float64)
    ref = 1 / (1 + np.exp(-x64)) if op == "Sigmoid" else np.exp(x64)
    tol = 1e-2 if dtype == ml_dtypes.bfloat16 else 1e-6       # bfloat16 keeps 8 bits
    assert_close(out.astype(np.float64), ref, rtol=tol, atol=tol * 1e-2, norm=tol)


@pytest.mark.parametrize("kind,dtype,axis", [("single_row", np.float32, 333), ("looped", np.float16, 2111)])
def test_mlx_softmax(mlx_include: list[str], backend: str, rng: np.random.Generator, kind: str, dtype: type,
                     axis: int) -> None:
    t = "float" if dtype == np.float32 else "half"
    name = f"{kind}_softmax_{t}"
    k = mlx_kernel(mlx_include, ["softmax.h"], f'instantiate_kernel("{name}", softmax_{kind}, {t}, float)\n', name)
    rows = 7
    x = (rng.standard_normal((rows, axis)) * 4).astype(dtype)
    out = np.full_like(x, np.nan)
    n_reads = 4                                               # SOFTMAX_N_READS (defines.h)
    # single_row: one thread per N_READS elements, in whole SIMD-groups; looped: 1024 threads, as MLX
    # dispatches it (all 32 SIMD-groups write the partial maxima the kernel combines)
    tg = 32 * (((axis + n_reads - 1) // n_reads + 31) // 32) if kind == "single_row" else 1024
    k(x, out, np.int32(axis), grid=rows, threadgroup=tg, backend=backend)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    tol = 2e-3 if dtype == np.float16 else 1e-5
    assert_close(out, e / e.sum(axis=1, keepdims=True), rtol=tol, atol=tol * 1e-2, norm=tol)


def test_mlx_sdpa_vector_causal_gqa(mlx_include: list[str], backend: str, rng: np.random.Generator) -> None:
    """MLX's single-token attention (sdpa_vector.h): causal, 2 query heads per KV head, half inputs.
    Grid and strides as mlx/backend/metal/scaled_dot_product_attention.cpp lays them out: one
    threadgroup of 32 SIMD-groups per (query head, query position)."""
    name = "sdpa_vector_float16_t_64_64"
    k = mlx_kernel(mlx_include, ["sdpa_vector.h"], f'instantiate_kernel("{name}", sdpa_vector, half, 64, 64)\n',
                   name, has_mask=False, query_transposed=False, do_causal=True, bool_mask=False, float_mask=False,
                   has_sinks=False)   # `blocks` (26) belongs to the 2-pass kernels: not demanded here
    q_heads, kv_heads, q_len, n_keys, d = 4, 2, 3, 45, 64
    q = rng.standard_normal((q_heads, q_len, d)).astype(np.float16)
    keys = rng.standard_normal((kv_heads, n_keys, d)).astype(np.float16)
    values = rng.standard_normal((kv_heads, n_keys, d)).astype(np.float16)
    out = np.full((q_heads, q_len, d), np.nan, np.float16)
    scale = 1 / np.sqrt(d)
    k(q, keys, values, out, np.int32(q_heads // kv_heads), np.int32(n_keys), np.uint64(n_keys * d), np.uint64(d),
      np.uint64(n_keys * d), np.uint64(d), np.float32(scale), grid=(q_heads, q_len, 1), threadgroup=1024,
      backend=backend)
    ref = np.empty((q_heads, q_len, d))
    for h in range(q_heads):
        kh, vh = keys[h // 2].astype(np.float64), values[h // 2].astype(np.float64)
        for t in range(q_len):
            visible = n_keys - q_len + t + 1                    # causal: keys up to this query's position
            s = kh[:visible] @ q[h, t].astype(np.float64) * scale
            p = np.exp(s - s.max())
            ref[h, t] = p @ vh[:visible] / p.sum()
    assert_close(out, ref, rtol=5e-3, atol=2e-3, norm=2e-3)


# ------------------------------------------------------------------------------------------ tinygrad
# Kernels tinygrad's Metal renderer writes (implicit buffer indices); sizes from its `/* n */` comments.

@pytest.fixture(scope="module")
def tinygrad() -> dict[str, str]:
    return msl_corpus.tinygrad_kernels()


def launch_of(src: str) -> tuple[str, tuple[int, ...], tuple[int, ...], list[int]]:
    name = re.search(r"kernel void (\w+)\(", src).group(1)  # type: ignore[union-attr]
    dims = {"gid": [1, 1, 1], "lid": [1, 1, 1]}
    for which, axis, n in re.findall(r"\b(gid|lid)\.([xyz]);\s*/\*\s*(\d+)\s*\*/", src):
        dims[which]["xyz".index(axis)] = int(n)
    sizes = [int(n) for n in re.findall(r"\bdata\d+_(\d+)\b", src.split("{", 1)[0])]
    return name, tuple(dims["gid"]), tuple(dims["lid"]), sizes


@pytest.mark.parametrize("program", ["reduce", "matmul", "elementwise_half"])
def test_tinygrad_rendered(tinygrad: dict[str, str], backend: str, rng: np.random.Generator, program: str) -> None:
    src = tinygrad[program]
    name, grid, local, sizes = launch_of(src)
    assert name in kernels_in(src)
    k = ap.Kernel(src, name)
    if program == "reduce":
        assert sizes == [37, 37 * 29, 37 * 29]
        a, b = (rng.standard_normal((37, 29)).astype(np.float32) for _ in range(2))
        out, ref, tol = np.full(37, np.nan, np.float32), (a.astype(np.float64) * b).sum(axis=1) + 1, 1e-5
    elif program == "matmul":
        assert sizes == [23 * 19, 23 * 29, 29 * 19]
        a = rng.standard_normal((23, 29)).astype(np.float32)
        b = rng.standard_normal((29, 19)).astype(np.float32)
        out, ref, tol = np.full((23, 19), np.nan, np.float32), a.astype(np.float64) @ b, 1e-5
    else:
        assert sizes == [1001] * 3
        a = rng.uniform(-3, 3, 1001).astype(np.float16)
        b = rng.uniform(0.1, 2, 1001).astype(np.float16)
        out, ref, tol = np.full(1001, np.nan, np.float16), np.sqrt(np.exp2(a.astype(np.float64)) * b), 2e-3
    k(out, a, b, grid=grid, threadgroup=local, backend=backend)
    assert_close(out, ref, rtol=tol, atol=tol * np.abs(ref).max(), norm=tol)


# ------------------------------------------------------------------------------------------ candle
# candle-metal-kernels' whole .metal files; arguments follow the crate's Rust launchers.

@pytest.fixture(scope="module")
def candle() -> object:
    return msl_corpus.candle()


@pytest.mark.parametrize("file,name", [("affine.metal", "affine_f32"), ("unary.metal", "gelu_erf_f32")])
def test_candle_elementwise(candle: object, backend: str, rng: np.random.Generator, file: str, name: str) -> None:
    path = candle / file  # type: ignore[operator]
    names = kernels_in(path.read_text(), path=path)
    assert name in names and len(names) > 20               # instances made by candle's init_kernel macros
    n = 1003
    x = rng.standard_normal(n).astype(np.float32)
    out = np.full(n, np.nan, np.float32)
    threads = (n + 1) // 2                                   # work_per_thread<float>() == 2
    k = ap.Kernel.from_file(path, name)
    x64 = x.astype(np.float64)
    if name == "affine_f32":
        k(np.uint64(n), np.float32(1.5), np.float32(-0.25), x, out, grid=(threads + 63) // 64, threadgroup=64,
          backend=backend)
        ref = x64 * 1.5 - 0.25
    else:
        k(np.uint64(n), x, out, grid=(threads + 63) // 64, threadgroup=64, backend=backend)
        from math import erf
        ref = 0.5 * x64 * (1 + np.vectorize(erf)(x64 / np.sqrt(2)))
    assert_close(out, ref, rtol=1e-5, atol=1e-6, norm=1e-6)


def test_candle_sdpa_vector(candle: object, backend: str, rng: np.random.Generator) -> None:
    """candle's port of MLX's single-query attention kernel: 32 SIMD-groups share the keys."""
    path = candle / "scaled_dot_product_attention.metal"  # type: ignore[operator]
    heads, n_keys, d = 3, 77, 64
    q = rng.standard_normal((heads, d)).astype(np.float32)
    kk = rng.standard_normal((heads, n_keys, d)).astype(np.float32)
    v = rng.standard_normal((heads, n_keys, d)).astype(np.float32)
    out = np.full((heads, d), np.nan, np.float32)
    scale = 1 / np.sqrt(d)
    k = ap.Kernel.from_file(path, "sdpa_vector_float_64", constants={"sdpa_vector_has_mask": False})
    k(q, kk, v, out, np.int32(1), np.int32(n_keys), np.uint64(n_keys * d), np.uint64(n_keys * d),
      np.float32(scale), np.float32(1.0), grid=(1, heads, 1), threadgroup=1024, backend=backend)
    s = np.einsum("hd,hnd->hn", q.astype(np.float64), kk) * scale
    p = np.exp(s - s.max(axis=1, keepdims=True))
    ref = np.einsum("hn,hnd->hd", p / p.sum(axis=1, keepdims=True), v)
    assert_close(out, ref, rtol=1e-4, atol=1e-5, norm=1e-5)


def test_a_package_that_cannot_be_had_skips_with_the_reason(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setenv("APROTO_CACHE_DIR", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match=r"cannot fetch no-such-package==0 .*: simulated failure"):
        msl_corpus._run([sys.executable, "-c", "import sys; sys.exit('simulated failure')"], "no-such-package==0")
    assert not (msl_corpus.cache_root() / "anything").exists()
