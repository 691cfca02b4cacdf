"""The host backend's MSL front end on small kernels of our own, one group per gap real kernels showed
(issue 17): implicit buffer indices, host-named template instances, address-space overloads, whole
library files, the stdlib surface, C++ forms, hygiene. Each runs against numpy where it computes.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

import attention_proto as ap
from attention_proto.msl import kernel_parameters, kernels_in

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"


def src(body: str) -> str:
    return HEADER + textwrap.dedent(body)


# ------------------------------------------------------------------ implicit buffer indices
IMPLICIT = src("""
    kernel void axpy(device float* out, constant float& a [[buffer(0)]], device const float* x,
                     constant uint& n, uint i [[thread_position_in_grid]]) {
        if (i < n) out[i] = a * x[i] + out[i];
    }""")


def test_implicit_buffer_indices_take_the_first_free_index(backend: str, rng: np.random.Generator) -> None:
    params = {p["name"]: (p["attr"], p["arg"], p["type"], p["address_space"])
              for p in kernel_parameters(IMPLICIT, "axpy")}
    assert params == {"out": ("buffer", "1", "float*", "device"), "a": ("buffer", "0", "const float&", "constant"),
                      "x": ("buffer", "2", "const float*", "device"), "n": ("buffer", "3", "const uint&", "constant"),
                      "i": ("thread_position_in_grid", "", "uint", "")}
    n = 1001
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    out = y.copy()
    ap.Kernel(IMPLICIT, "axpy")(np.float32(1.5), out, x, np.uint32(n), grid=(n + 63) // 64, threadgroup=64,
                                backend=backend)
    np.testing.assert_allclose(out, 1.5 * x.astype(np.float64) + y, rtol=1e-6, atol=1e-6)


def test_parameters_under_a_function_constant_are_left_out_when_it_is_false(backend: str) -> None:
    source = src("""
        constant bool has_bias [[function_constant(0)]];
        kernel void k(device float* out, device const float* bias [[function_constant(has_bias)]],
                      uint i [[thread_position_in_grid]]) { out[i] = has_bias ? bias[i] : -1.0f; }""")
    params = kernel_parameters(source, "k")
    assert [(p["name"], p["arg"], p["condition"]) for p in params[:2]] == [("out", "0", ""), ("bias", "1", "has_bias")]
    out = np.full(4, np.nan, np.float32)
    ap.Kernel(source, "k", constants={"has_bias": False})(out, grid=1, threadgroup=4, backend=backend)
    np.testing.assert_array_equal(out, -1)
    bias = np.arange(4, dtype=np.float32)
    ap.Kernel(source, "k", constants={"has_bias": True})(out, bias, grid=1, threadgroup=4, backend=backend)
    np.testing.assert_array_equal(out, bias)


def test_a_value_parameter_without_attribute_is_refused() -> None:
    bad = src("kernel void k(device float* out, uint n) { out[0] = n; }")
    with pytest.raises(ap.ShaderCompileError, match="'n' has no attribute: Metal requires"):
        kernel_parameters(bad, "k")


# ------------------------------------------------------------------ template instances
TEMPLATES = src("""
    template <typename T, int S>
    kernel void scale(device T* x [[buffer(0)]], constant T& a [[buffer(1)]], uint i [[thread_position_in_grid]]) {
        x[i] = x[i] * a + T(S);
    }
    template [[host_name("scale_f32")]] kernel void scale<float, 1>(device float*, constant float&, uint);
    typedef decltype(scale<half, 2>) scale_t;
    template [[host_name("scale_f16")]] kernel scale_t scale<half, 2>;
    template [[host_name("scale_i32")]] [[kernel]] decltype(scale<int, 3>) scale<int, 3>;
    #define INSTANCE(name, T, S) template [[host_name(name)]] [[kernel]] decltype(scale<T, S>) scale<T, S>;
    INSTANCE("scale_" "u32", uint, 4)
    template [[kernel]] decltype(scale<short, 5>) scale<short, 5>;   // no host name: not published
    kernel void plain(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] += 1.0f; }
    """)


def test_kernels_in_lists_instances_under_their_host_names() -> None:
    assert kernels_in(TEMPLATES) == ["scale_f32", "scale_f16", "scale_i32", "scale_u32", "plain"]
    types = [p["type"] for p in kernel_parameters(TEMPLATES, "scale_f16")]
    assert types == ["half*", "const half&", "uint"]


@pytest.mark.parametrize("name,dtype,s", [("scale_f32", np.float32, 1), ("scale_f16", np.float16, 2),
                                          ("scale_i32", np.int32, 3), ("scale_u32", np.uint32, 4)])
def test_template_instances_run_by_published_name(backend: str, rng: np.random.Generator, name: str,
                                                  dtype: type, s: int) -> None:
    x = rng.integers(0, 50, 77).astype(dtype)
    out = x.copy()
    ap.Kernel(TEMPLATES, name)(out, dtype(3), grid=1, threadgroup=77, backend=backend)
    np.testing.assert_array_equal(out, x.astype(np.int64) * 3 + s)


def test_a_template_name_or_an_unknown_name_is_explained() -> None:
    with pytest.raises(ap.ShaderCompileError, match="'scale' not found: it is a kernel template; name one of its "
                                                    "instances.*scale_f32, scale_f16"):
        kernel_parameters(TEMPLATES, "scale")
    with pytest.raises(ap.ShaderCompileError, match=r"'nope' not found \(kernels here: scale_f32, .*plain\)"):
        ap.Kernel(TEMPLATES, "nope").pipeline("host")


# ------------------------------------------------------------------ address-space overloads
OVERLOADS = src("""
    struct cplx {
        float re, im;
        cplx() thread : re(0), im(0) {}
        cplx() threadgroup : re(0), im(0) {}
        cplx(float r, float i) thread : re(r), im(i) {}
        cplx(float r, float i) device : re(r), im(i) {}
        float norm() const thread { return re * re + im * im; }
        float norm() const constant { return re * re + im * im; }
    };
    thread cplx& operator+=(thread cplx& a, cplx b) { a.re += b.re; a.im += b.im; return a; }
    threadgroup cplx& operator+=(threadgroup cplx& a, cplx b) { a.re += b.re; a.im += b.im; return a; }
    device cplx& operator+=(device cplx& a, cplx b) { a.re += b.re; a.im += b.im; return a; }
    template <typename T> struct pointee {};
    template <typename T> struct pointee<thread T*> { using type = T; };
    template <typename T> struct pointee<device T*> { using type = T; };
    struct tag { int v; constexpr tag(int x) constant : v(x) {} };   // only a constant constructor
    constant tag seven(7);
    kernel void k(device cplx* z [[buffer(0)]], device float* out [[buffer(1)]],
                  uint i [[thread_index_in_threadgroup]]) {
        threadgroup cplx shared[32];
        shared[i] = cplx(float(i), 1.0f);
        threadgroup_barrier(mem_flags::mem_threadgroup);
        cplx acc;
        acc += shared[31 - i];
        z[i] += acc;
        pointee<device float*>::type scale = 0.5f;
        out[i] = z[i].norm() * scale + float(seven.v);
    }""")


def test_overloads_on_address_spaces_collapse_to_one(backend: str, rng: np.random.Generator) -> None:
    z = rng.standard_normal((32, 2)).astype(np.float32)
    out = np.full(32, np.nan, np.float32)
    z_out = z.copy()
    ap.Kernel(OVERLOADS, "k")(z_out.view(np.uint8), out, grid=1, threadgroup=32, backend=backend)
    re = z[:, 0].astype(np.float64) + (31 - np.arange(32))
    im = z[:, 1].astype(np.float64) + 1
    np.testing.assert_allclose(z_out, np.stack([re, im], axis=1), rtol=1e-6)
    np.testing.assert_allclose(out, (re * re + im * im) * 0.5 + 7, rtol=1e-5)


# ------------------------------------------------------------------ whole library files
LIBRARY = src("""
    constant int FC_scale [[function_constant(0)]];
    constant int FC_helper_only [[function_constant(1)]];
    constant bool FC_enable [[function_constant(2)]];
    #define SCALE FC_scale
    constant bool enabled = FC_enable;                  // a constant computed from one
    int unused_helper(int x) { return x * FC_helper_only; }
    float used_helper(float x) { return enabled ? x * SCALE : x; }
    kernel void a(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = used_helper(o[i]); }
    kernel void b(device int* o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = unused_helper(o[i]); }
    """)


def test_only_the_constants_a_kernel_reaches_are_demanded(backend: str) -> None:
    x = np.arange(5, dtype=np.float32)
    ap.Kernel(LIBRARY, "a", constants={"FC_scale": 3, "FC_enable": True})(x, grid=1, threadgroup=5, backend=backend)
    np.testing.assert_array_equal(x, 3 * np.arange(5))
    with pytest.raises(ap.ShaderCompileError, match="'FC_enable' .* has no value.*kernel 'a' uses it"):
        ap.Kernel(LIBRARY, "a", constants={"FC_scale": 3}).pipeline("host")
    with pytest.raises(ap.ShaderCompileError, match="'FC_helper_only' .* has no value.*kernel 'b' uses it"):
        ap.Kernel(LIBRARY, "b").pipeline("host")


MATRICES = src("""
    kernel void mats(device const float* in [[buffer(0)]], device float* out [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
        if (i != 0) return;
        float4x4 m = float4x4(float4(in[0], in[1], in[2], in[3]), float4(in[4], in[5], in[6], in[7]),
                              float4(in[8], in[9], in[10], in[11]), float4(in[12], in[13], in[14], in[15]));
        float4 v = float4(in[16], in[17], in[18], in[19]);
        float4 mv = m * v;                       // columns weighted by v
        float4 vm = v * m;                       // v dotted with each column
        float4x4 mm = m * transpose(m);
        half4x4 h = (half4x4)m;                  // element-wise conversion, as ggml's dequantizers write
        float2x2 s = float2x2(1.0f, 2.0f, 3.0f, 4.0f);   // column by column
        float3x3 d = float3x3(2.0f);             // diagonal
        for (int k = 0; k < 4; k++) { out[k] = mv[k]; out[4 + k] = vm[k]; out[8 + k] = mm[1][k]; out[12 + k] = h[2][k]; }
        out[16] = s[1][0]; out[17] = d[1][1]; out[18] = d[0][1]; out[19] = m[3][2];
    }""")


def test_matrix_types(backend: str, rng: np.random.Generator) -> None:
    data = rng.standard_normal(20).astype(np.float32)
    out = np.full(20, np.nan, np.float32)
    ap.Kernel(MATRICES, "mats")(data, out, grid=1, threadgroup=1, backend=backend)
    cols = data[:16].astype(np.float64).reshape(4, 4)        # MSL matrices are arrays of columns
    m, v = cols.T, data[16:].astype(np.float64)
    np.testing.assert_allclose(out[0:4], m @ v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[4:8], v @ m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[8:12], (m @ m.T)[:, 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[12:16], cols[2].astype(np.float16), rtol=1e-3)
    np.testing.assert_array_equal(out[16:19], [3.0, 2.0, 0.0])
    assert out[19] == np.float32(cols[3, 2])


# ------------------------------------------------------------------ stdlib surface
STDLIB = src("""
    #include <metal_type_traits>
    template <typename T, typename = enable_if_t<is_floating_point_v<T>>> T twice(T x) { return x * T(2); }
    static_assert(is_same_v<decltype(twice(1.0h)), half>, "half is a floating-point type");
    static_assert(is_floating_point_v<bfloat> && !is_floating_point_v<int>, "bfloat too");
    constexpr constant bfloat BF_MAX = numeric_limits<bfloat>::max();
    #define DECLARE(T, name) thread T name
    #define CONST_PTR(T) constant T*
    float first(CONST_PTR(float) p) { return p[0]; }
    kernel void lib(device const float* x [[buffer(0)]], device float* out [[buffer(1)]],
                    constant float* c [[buffer(2)]], uint l [[thread_index_in_simdgroup]]) {
        float a = x[l], b = x[32 + l], e = x[64 + l];
        DECLARE(float, sum) = 0.0f;
        out[l] = fmax3(a, b, e);
        out[32 + l] = fmin3(a, b, e);
        out[64 + l] = fmedian3(a, b, e);
        out[96 + l] = sinpi(a) + cospi(b);
        out[128 + l] = simd_shuffle_and_fill_down(a, b, ushort(3));
        out[160 + l] = simd_shuffle_and_fill_down(a, b, ushort(3), ushort(8));
        out[192 + l] = simd_shuffle_and_fill_up(a, b, ushort(2), ushort(16));
        sum += __metal_fabs(a, __METAL_MAYBE_FAST_MATH__) + twice(first(c));
        out[224 + l] = sum + float(BF_MAX) * 0.0f;
    }""")


def test_stdlib_surface(backend: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal(96).astype(np.float32)
    out = np.full(256, np.nan, np.float32)
    ap.Kernel(STDLIB, "lib")(x, out, np.array([1.25], np.float32), grid=1, threadgroup=32, backend=backend)
    a, b, e = (x[k * 32:(k + 1) * 32].astype(np.float64) for k in range(3))
    lane = np.arange(32)
    np.testing.assert_array_equal(out[0:32], np.maximum(np.maximum(a, b), e).astype(np.float32))
    np.testing.assert_array_equal(out[32:64], np.minimum(np.minimum(a, b), e).astype(np.float32))
    np.testing.assert_array_equal(out[64:96], np.median(np.stack([a, b, e]), axis=0).astype(np.float32))
    np.testing.assert_allclose(out[96:128], np.sin(np.pi * a) + np.cos(np.pi * b), rtol=1e-5, atol=1e-5)

    def fill(delta: int, modulo: int) -> np.ndarray:  # MSL: shift within groups of `modulo` lanes
        base, p = lane - lane % modulo, lane % modulo
        src = p + delta
        wrapped = base + src % modulo
        return np.where((src >= 0) & (src < modulo), a[wrapped], b[wrapped]).astype(np.float32)
    np.testing.assert_array_equal(out[128:160], fill(3, 32))
    np.testing.assert_array_equal(out[160:192], fill(3, 8))
    np.testing.assert_array_equal(out[192:224], fill(-2, 16))
    np.testing.assert_allclose(out[224:256], np.abs(a) + 2.5, rtol=1e-6)


# ------------------------------------------------------------------ C++ forms
FORMS = src("""
    template <typename T> T id(T x) { return x; }
    typedef float4 f4;
    kernel void forms(device const char* raw [[buffer(0)]], device float* out [[buffer(1)]],
                      uint i [[thread_position_in_grid]]) {
        if (i != 0) return;
        float4 v = float4(reinterpret_cast<device const float4*>(raw)[1]);
        float4 w = float4(id<float4>(v) * 2.0f);          // a template call inside a constructor
        half4 h = (half4)v;                               // a cast converts element-wise
        half4 g = half4(w);                               // so does a one-argument constructor
        float4 back = float4((half4)(v + 1.0f));
        f4 aliased = f4(int4(1, -2, 3, -4)) + (f4)uint4(10, 20, 30, 40);   // aliases convert too
        for (int k = 0; k < 4; k++) { out[k] = h[k]; out[4 + k] = g[k]; out[8 + k] = back[k]; out[12 + k] = aliased[k]; }
    }""")


def test_casts_and_templates_inside_constructors(backend: str, rng: np.random.Generator) -> None:
    data = rng.uniform(-4, 4, 8).astype(np.float32)
    out = np.full(16, np.nan, np.float32)
    ap.Kernel(FORMS, "forms")(data.view(np.uint8), out, grid=1, threadgroup=1, backend=backend)
    v = data[4:8]
    np.testing.assert_array_equal(out[0:4], v.astype(np.float16))
    np.testing.assert_array_equal(out[4:8], (2 * v).astype(np.float16))
    np.testing.assert_array_equal(out[8:12], (v + 1).astype(np.float16))
    np.testing.assert_array_equal(out[12:16], [11, 18, 33, 36])


def test_a_multi_argument_constructor_takes_its_own_element_type_only() -> None:
    bad = src("""
        kernel void k(device float4* out [[buffer(0)]]) { half2 h = half2(1.0h); out[0] = float4(h, h); }""")
    with pytest.raises(ap.ShaderCompileError, match="no implicit conversion between vector types"):
        ap.Kernel(bad, "k").pipeline("host")


# ------------------------------------------------------------------ preprocessor and hygiene
PREPROCESSED = src("""
    namespace detail { inline float half_of(float x) { return 0.5f * x; } }   // a kernel's own `detail`
    #if defined(__METAL_VERSION__) && __METAL_VERSION__ >= 320 && defined(__METAL__) && __HAVE_BFLOAT__
    #define VERSION_OK 1
    #elif 1
    #define VERSION_OK 0
    #endif
    #define CAT(a, b) a ## b
    #define STR(x) #x
    #ifdef NOT_DEFINED
    kernel void hidden(device float* o [[buffer(0)]]) { o[0] = 0; }
    #endif
    kernel void CAT(pre, processed)(device float* o [[buffer(0)]], uint i [[thread_position_in_grid]]) {
        o[i] = detail::half_of(float(VERSION_OK) + float(sizeof(STR(ab)) - 1));   // "ab" is 3 bytes
    }""")


def test_preprocessor_and_predefined_macros(backend: str) -> None:
    assert kernels_in(PREPROCESSED) == ["preprocessed"]
    out = np.full(3, np.nan, np.float32)
    ap.Kernel(PREPROCESSED, "preprocessed")(out, grid=1, threadgroup=3, backend=backend)
    np.testing.assert_array_equal(out, [1.5, 1.5, 1.5])


def test_error_directive_and_compile_errors_come_first(tmp_path: object) -> None:
    with pytest.raises(ap.ShaderCompileError, match=r"#error this target is not supported"):
        kernels_in(src("#error this target is not supported\nkernel void k(device float* o [[buffer(0)]]) {}"))
    header = tmp_path / "helpers.h"  # type: ignore[operator]
    header.write_text("#pragma once\ninline float helper(float x) { return x; }\n")
    broken = src('#include "helpers.h"\nkernel void k(device float* o [[buffer(0)]]) { o[0] = undefined_name; }')
    with pytest.raises(ap.ShaderCompileError) as e:
        ap.Kernel(broken, "k", path=tmp_path / "k.metal").pipeline("host")  # type: ignore[operator]
    message = str(e.value)
    assert "pragma once" not in message and "undefined_name" in message
