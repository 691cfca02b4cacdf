"""Score modifiers in the attention inner loop (shaders/score_mod_attention.metal) in the four modes, and the
runtime's linking (linked functions, visible function tables, stitching graphs) through attention_proto.Kernel.

Numerics: every output is poisoned with NaN, handed to the kernel, and checked element by element against the
FP64 reference (reference.score_mod_attention with the modifier's own numpy reference), so an element never
written fails. Bounds: the norm bound ``||o - r|| / ||r||`` and MLX's element-wise rule
``max(|o - r| - atol |r|) <= atol``. float32: atol 2e-5 (float32 dot products and the online softmax over up to
77 keys, plus Metal's fast exp); half types: the output's one rounding (u = 2^-11 float16, 2^-8 bfloat16), atol 2u.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import poisoned

import attention_proto as ap
from attention_proto import _core, reference
from attention_proto.protos import score_mod_attention as sm

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
ATOL = {"float32": 2e-5, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}
MODES = sm.MODES

# A modifier no built-in covers: position- and head-dependent, with a mask of its own.
USER_MSL = """\
// a user's modifier: a head-dependent bias, a ripple over the query row, and every 5th key masked
float score_mod(float score, uint batch, uint head, uint q_idx, uint kv_idx) {
  if (kv_idx % 5 == 3) return -INFINITY;
  return score + (head == 1 ? 0.25f : -0.5f) + 0.5f * sin(0.3f * float(q_idx)) + 0.125f * float(batch);
}
"""


def user_reference(s, b, h, i, j):
    return np.where(j % 5 == 3, -np.inf, s + np.where(h == 1, 0.25, -0.5) + 0.5 * np.sin(0.3 * i) + 0.125 * b)


USER = ap.ScoreMod.from_msl(USER_MSL, path="my_score_mod.metal", reference=user_reference)


def inputs(rng, dtype="float32", b=2, hq=4, hkv=2, nq=33, nk=77, d=24):
    ty = DTYPES[dtype]
    return (rng.standard_normal((b, hq, nq, d)).astype(ty), rng.standard_normal((b, hkv, nk, d)).astype(ty),
            rng.standard_normal((b, hkv, nk, d)).astype(ty))


def check(o, r, dtype):
    assert not np.isnan(o.astype(np.float64)).any(), "some outputs were never written (still NaN)"
    o64 = o.astype(np.float64)
    atol = ATOL[dtype]
    assert np.linalg.norm(o64 - r) <= 4 * atol * max(np.linalg.norm(r), 1e-30) + atol
    assert np.max(np.abs(o64 - r) - atol * np.abs(r)) <= atol


def run(q, k, v, mod, mode, backend, causal=False, memory="package"):
    out = poisoned(q.shape, q.dtype, memory)
    got = ap.score_mod_attention(q, k, v, mod, mode=mode, causal=causal, backend=backend, out=out)
    assert got is out
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(sm.BUILTINS))
def test_builtins_in_every_mode(backend, rng, mode, name):
    q, k, v = inputs(rng)
    causal = name in ("sliding_window", "identity")
    mod = ap.ScoreMod.builtin(name, **({"window": 9} if name == "sliding_window" else {}))
    o = run(q, k, v, mod, mode, backend, causal, "package" if name != "softcap" else "plain")
    check(o, sm.reference(q, k, v, mod, causal=causal), "float32")


@pytest.mark.parametrize("mode", MODES)
def test_user_modifier_in_every_mode(backend, rng, mode):
    q, k, v = inputs(rng, nq=40, nk=35, d=16)
    o = run(q, k, v, USER, mode, backend, causal=True, memory="plain")
    check(o, sm.reference(q, k, v, USER, causal=True), "float32")


@pytest.mark.parametrize("mode", MODES)
def test_stitched_composition(backend, rng, mode):
    """softcap after alibi after the user's modifier: one stitched function in mode "stitched" (a graph of
    three [[stitchable]] pieces), the same composition inlined, linked or in a table otherwise."""
    q, k, v = inputs(rng, b=1, nq=7, nk=100, d=8)
    mod = ap.stitch(USER, ap.ScoreMod.builtin("alibi", num_heads=4), ap.ScoreMod.builtin("softcap", cap=3.0))
    o = run(q, k, v, mod, mode, backend)
    r = reference.score_mod_attention(
        q, k, v, lambda s, b, h, i, j: 3.0 * np.tanh((user_reference(s, b, h, i, j) + 2.0 ** (-2.0 * (h + 1)) * (j - i))
                                                     / 3.0))
    check(o, r, "float32")


@pytest.mark.parametrize("mode", ["inline", "stitched"])
def test_a_builtin_twice_in_one_composition(backend, rng, mode):
    """Two relative-bias tables in one library: each piece's program-scope table is its own."""
    t1, t2 = rng.standard_normal((2, 9)), rng.standard_normal((3, 5))
    mod = ap.stitch(ap.ScoreMod.builtin("relative_bias", table=t1), ap.ScoreMod.builtin("relative_bias", table=t2))
    q, k, v = inputs(rng, b=1, hq=4, hkv=1, nq=12, nk=20, d=8)
    check(run(q, k, v, mod, mode, backend), sm.reference(q, k, v, mod), "float32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types(backend, rng, dtype):
    q, k, v = inputs(rng, dtype, b=1, hq=2, hkv=1, nq=33, nk=64, d=32)
    o = run(q, k, v, "softcap", "table", backend, causal=True)
    check(o, sm.reference(q, k, v, "softcap", causal=True), dtype)


def test_identity_matches_flash_attention(backend, rng):
    """Plain attention two ways: the modifier kernel (identity, linked) and prototype 1's kernel."""
    q, k, v = inputs(rng, b=1, hq=2, hkv=2, nq=33, nk=65, d=32)
    o = run(q, k, v, "identity", "linked", backend, causal=True)
    flash = ap.flash_attention(q, k, v, causal=True, backend=backend)
    assert np.max(np.abs(o - flash)) <= 2e-5


@pytest.mark.parametrize("mode", ["linked", "table"])
def test_equal_to_prototype_7s_fused_variants(backend, rng, mode):
    """softcap and ALiBi as score modifiers against flash attention's function-constant variants. Prototype 7
    measures ALiBi's distance from the bottom-right aligned query row (j - (i + Nk - Nq)); the shift is a
    constant per row, which softmax ignores."""
    q, k, v = inputs(rng, b=1, hq=4, hkv=2, nq=20, nk=45, d=32)
    softcap = run(q, k, v, ap.ScoreMod.builtin("softcap", cap=2.5), mode, backend, causal=True)
    assert np.max(np.abs(softcap - ap.flash_attention(q, k, v, causal=True, softcap=2.5, backend=backend))) <= 2e-5
    alibi = run(q, k, v, "alibi", mode, backend, causal=True)
    fused = ap.flash_attention(q, k, v, causal=True, alibi_slopes=ap.alibi_slopes(4), backend=backend)
    assert np.max(np.abs(alibi - fused)) <= 2e-5


def test_rows_whose_keys_are_all_masked_output_zero(backend, rng):
    q, k, v = inputs(rng, b=1, hq=1, hkv=1, nq=9, nk=4, d=8)  # causal, Nq > Nk: rows 0..4 see no key
    o = run(q, k, v, "identity", "inline", backend, causal=True)
    assert np.all(o[0, 0, :5] == 0)
    check(o, sm.reference(q, k, v, "identity", causal=True), "float32")


# --- the runtime: linking through attention_proto.Kernel --------------------------------------------------

KERNEL = """
#include <metal_stdlib>
using namespace metal;
typedef float unary(float x);
extern float transform(float x);
kernel void apply_linked(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                         uint i [[thread_position_in_grid]]) {
  y[i] = transform(x[i]);
}
kernel void apply_table(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                        visible_function_table<unary> fns [[buffer(2)]], uint i [[thread_position_in_grid]]) {
  y[i] = fns[i % fns.size()](x[i]);
}
"""
LIBRARY = """
#include <metal_stdlib>
using namespace metal;
float helper(float x) { return x + 1.0f; }  // private to this library
[[visible]] float transform(float x) { return 2.0f * helper(x); }
[[visible]] float negate(float x) { return -x; }
[[stitchable]] float add(float a, float b) { return a + b; }
[[stitchable]] float mul(float a, float b) { return a * b; }
[[visible]] int wrong_type(int x) { return x; }
"""


def run_kernel(kernel, fn_args, backend, n=37):
    x = np.linspace(-2, 2, n).astype(np.float32)
    y = poisoned((n,), np.float32)
    kernel(x, y, *fn_args, grid=(n,), threadgroup=(1,), backend=backend)
    return x, y


def test_linked_function_from_another_library(backend):
    k = ap.Kernel(KERNEL, "apply_linked", libraries=[(LIBRARY, "lib.metal")], linked_functions=["transform"])
    x, y = run_kernel(k, (), backend)
    np.testing.assert_array_equal(y, 2 * (x + 1))


def test_function_table_switched_between_dispatches_without_recompiling(backend):
    k = ap.Kernel(KERNEL, "apply_table", libraries=[LIBRARY], table_functions=["transform", "negate"])
    x, y = run_kernel(k, (ap.FunctionTable(["negate"]),), backend)
    np.testing.assert_array_equal(y, -x)
    pipeline = k.pipeline(backend)
    x, y = run_kernel(k, (ap.FunctionTable(["transform", "negate"]),), backend)
    np.testing.assert_array_equal(y, np.where(np.arange(len(x)) % 2 == 0, 2 * (x + 1), -x))
    assert k.pipeline(backend) is pipeline  # one pipeline, two tables: a table is dispatch state


def test_stitching_graph(backend):
    g = ap.StitchingGraph("fma3")  # (x + x) * x, from two [[stitchable]] functions
    x0 = g.input(0)
    g.output(g.call("mul", g.call("add", x0, x0), x0))
    k = ap.Kernel(KERNEL.replace("transform", "fma3"), "apply_linked", libraries=[LIBRARY], stitched=[g],
                  linked_functions=["fma3"])
    x, y = run_kernel(k, (), backend)
    np.testing.assert_allclose(y, 2 * x * x, rtol=1e-6)


# --- errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_bad_user_function_points_into_the_users_text(mode, rng):
    bad = ap.ScoreMod.from_msl("float score_mod(float score, uint batch, uint head, uint q_idx, uint kv_idx) {\n"
                               "  float x = score * 2.0f;\n  return x + undefined_thing;\n}\n", path="bad_mod.metal")
    q, k, v = inputs(rng, b=1, hq=1, hkv=1, nq=4, nk=4, d=8)
    with pytest.raises(ap.ShaderCompileError, match=r"bad_mod\.metal:3"):
        ap.score_mod_attention(q, k, v, bad, mode=mode, backend="host")


def test_argument_errors(rng):
    q, k, v = inputs(rng, b=1, hq=2, hkv=2, nq=4, nk=4, d=8)
    with pytest.raises(ValueError, match="mode must be"):
        ap.score_mod_attention(q, k, v, mode="fused")
    with pytest.raises(ValueError, match="unknown built-in score_mod 'tanh'"):
        ap.ScoreMod.builtin("tanh")
    with pytest.raises(ValueError, match="neither a built-in"):
        ap.score_mod_attention(q, k, v, "softcapp")
    with pytest.raises(TypeError, match="score_mod must be"):
        ap.score_mod_attention(q, k, v, 3.0)
    with pytest.raises(ValueError, match="cap must be"):
        ap.ScoreMod.builtin("softcap", cap=-1.0)
    with pytest.raises(ValueError, match="at most one user"):
        ap.stitch(USER, USER)
    with pytest.raises(ValueError, match="head_dim must be in 1..128"):
        big = np.ones((1, 1, 2, 129), np.float32)
        ap.score_mod_attention(big, big, big)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        ap.score_mod_attention(q, k[:, :1].repeat(3, axis=1), v[:, :1].repeat(3, axis=1))
    with pytest.raises(TypeError, match="k"):
        ap.score_mod_attention(q, k.astype(np.float16), v)
    arrays = {"q": q, "k": k, "v": v, "out": np.empty_like(q)}  # the entry point's own checks of the graph
    options = {"mode": "stitched", "causal": False, "scale": 1.0, "score_mod": USER_MSL, "score_mod_path": "p"}
    with pytest.raises(ValueError, match="stitch_graph: an argument is an input index or nK"):
        _core.score_mod_attention(arrays, {**options, "stitch_graph": "f:0,x1"}, "host", 1)
    with pytest.raises(ValueError, match="stitch_graph: expected 'function:arg"):
        _core.score_mod_attention(arrays, {**options, "stitch_graph": "f"}, "host", 1)
    with pytest.raises(ValueError, match="stitch_graph is given with mode 'stitched' and only then"):
        _core.score_mod_attention(arrays, {**options, "mode": "linked", "stitch_graph": "f:0"}, "host", 1)


def test_link_errors_say_what_metal_rejects(host_only):
    def build(source=KERNEL, fn="apply_linked", **kw):
        return ap.Kernel(source, fn, **kw).info(host_only)

    with pytest.raises(ap.ShaderCompileError, match="calls `extern` float transform\\(float\\), which no linked"):
        build(libraries=[LIBRARY])
    with pytest.raises(ap.ShaderCompileError, match="'helper' is not a \\[\\[visible\\]\\] or \\[\\[stitchable\\]\\]"):
        build(libraries=[LIBRARY], linked_functions=["helper"])
    with pytest.raises(ap.ShaderCompileError, match="does not match the linked int wrong_type\\(int\\)"):
        build(KERNEL.replace("transform", "wrong_type"), libraries=[LIBRARY], linked_functions=["wrong_type"])
    with pytest.raises(ap.ShaderCompileError, match="cannot be a template"):
        build(libraries=["template <typename T> [[visible]] T f(T x) { return x; }"])
    g = ap.StitchingGraph("s")
    g.output(g.call("transform", g.input(0)))
    with pytest.raises(ap.ShaderCompileError, match="\\[\\[visible\\]\\], not \\[\\[stitchable\\]\\]"):
        build(KERNEL.replace("transform", "s"), libraries=[LIBRARY], stitched=[g], linked_functions=["s"])
    g = ap.StitchingGraph("s")
    g.output(g.call("add", g.input(0)))
    with pytest.raises(ap.ShaderCompileError, match="passes 1 arguments to float add\\(float, float\\)"):
        build(KERNEL.replace("transform", "s"), libraries=[LIBRARY], stitched=[g], linked_functions=["s"])
    g = ap.StitchingGraph("s")
    first = g.call("add", g.input(0), g.input(0))
    g.call("mul", first, first)
    with pytest.raises(ValueError, match="output node must be the graph's last"):
        g.output(first)
    with pytest.raises(ValueError, match="has no output node"):
        ap.Kernel(KERNEL, "apply_linked", stitched=[g])


def test_table_errors(host_only):
    k = ap.Kernel(KERNEL, "apply_table", libraries=[LIBRARY], table_functions=["transform", "wrong_type"])
    x, y = np.ones(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="needs a function table"):
        k(x, y, None, grid=(4,), threadgroup=(1,), backend=host_only)
    with pytest.raises(ValueError, match="'negate', which is not one of the pipeline's table functions"):
        k(x, y, ap.FunctionTable(["negate"]), grid=(4,), threadgroup=(1,), backend=host_only)
    with pytest.raises(ValueError, match="'wrong_type' does not have the signature"):
        k(x, y, ap.FunctionTable(["wrong_type"]), grid=(4,), threadgroup=(1,), backend=host_only)
    with pytest.raises(ValueError, match="no visible_function_table parameter"):
        ap.Kernel(KERNEL, "apply_linked", libraries=[LIBRARY], linked_functions=["transform"])(
            x, y, ap.FunctionTable(["transform"]), grid=(4,), threadgroup=(1,), backend=host_only)
    with pytest.raises(TypeError, match="sequence of function names"):
        ap.FunctionTable("transform")
