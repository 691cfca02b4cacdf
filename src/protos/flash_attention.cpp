// Prototype 1, flash attention forward (shaders/flash_attention.metal): arguments, limits, launch.
#include "attention_params.h"
#include "protos/proto.hpp"
#include "protos/rotary.hpp"

namespace aproto::proto {
namespace {

const std::vector<uint32_t> kHeadDims = {32, 64, 80, 96, 128, 256};  // HEAD_DIM of the shader
constexpr uint32_t kMaxBlockQ = 256;  // block_q / 8 SIMD-groups of 32 threads: Apple's 1024 per threadgroup
constexpr uint32_t kMaxBlockK = 128;  // MAX_BLOCK_K in the shader: its score registers have a literal size
constexpr uint64_t kRowPadBytes = 16;  // ROW_PAD_BYTES in the shader
constexpr int64_t kMaxLength = int64_t(1) << 30;  // the kernel computes row - Nq + Nk in 32-bit ints

// Prototype 7's variants, each off unless given: ALiBi slopes (finite), softcap (> 0), fused RoPE.
FlashVariantParams variant_params(const Call& c) {
  FlashVariantParams v{};
  const float* slopes = c.has("alibi_slopes") && !c.planning() ? static_cast<const float*>(c.array("alibi_slopes").data) : nullptr;
  for (int64_t h = 0; slopes && h < c.dim("Hq"); h++)
    c.require(std::isfinite(slopes[h]), "alibi_slopes must be finite, got " + std::to_string(slopes[h]) + " at index " + std::to_string(h));
  const double cap = c.given("softcap") ? c.number("softcap") : 1.0;
  c.require(cap > 0.0, "softcap must be > 0, got " + std::to_string(cap));
  v.softcap_scale = float(0.6931471805599453 / cap), v.softcap_log2 = float(cap * 1.4426950408889634);  // ln 2, log2 e
  if (!c.given("rope.style")) return v;
  const RotaryOptions r = rotary_options(c, "rope.", c.dim("D"), {{"q_offset", c.dim("Nq")}, {"k_offset", c.dim("Nk")}});
  v.rope_freq_exp = r.freq_exp, v.rope_dim = r.dim, v.rope_q_offset = r.offsets[0], v.rope_k_offset = r.offsets[1];
  return v;
}

std::vector<Launch> plan(const Call& c) {
  const int64_t B = c.dim("B"), Hq = c.dim("Hq"), Hkv = c.dim("Hkv"), Nq = c.dim("Nq"), Nk = c.dim("Nk");
  const int64_t D = c.dim("D");
  c.require_one_of("head_dim", D, kHeadDims);
  c.require(Hq % Hkv == 0, "q heads (" + std::to_string(Hq) + ") must be a multiple of kv heads (" +
                               std::to_string(Hkv) + ")");
  c.require(Nq <= kMaxLength && Nk <= kMaxLength && B <= UINT32_MAX && Hq <= UINT32_MAX,
            "sizes too large for one dispatch (lengths up to 2^30)");
  const uint32_t block_q = c.count("block_q", 8, kMaxBlockQ, 8);
  const uint32_t block_k = c.count("block_k", 8, kMaxBlockK, 8);  // the registers hold MAX_BLOCK_K keys
  const uint32_t itemsize = c.array("q").itemsize;
  const FlashVariantParams variants = variant_params(c);

  Launch l;
  l.pipeline.function = "flash_attention_" + c.kernel_suffix("q");
  l.pipeline.constants = {{"BLOCK_Q", ConstantValue::unsigned_integer(block_q)},
                          {"BLOCK_K", ConstantValue::unsigned_integer(block_k)},
                          {"HEAD_DIM", ConstantValue::unsigned_integer(uint64_t(D))},
                          {"CAUSAL", ConstantValue::boolean(c.flag("causal"))},
                          {"WRITE_LSE", ConstantValue::boolean(c.has("lse"))},
                          {"USE_ALIBI", ConstantValue::boolean(c.has("alibi_slopes"))},
                          {"USE_SOFTCAP", ConstantValue::boolean(c.given("softcap"))},
                          {"USE_ROPE", ConstantValue::boolean(c.given("rope.style"))},
                          {"ROPE_NEOX", ConstantValue::boolean(c.given("rope.style") && c.text("rope.style") == "neox")}};
  for (const char* name : {"q", "k", "v", "out"}) l.bind(l.buffers.size(), c.buffer(name));
  // Without lse, slot 4 is bound to `out` and never written (WRITE_LSE = false): no extra buffer.
  BufferArg lse = c.buffer(c.has("lse") ? "lse" : "out");
  if (!c.has("lse")) lse.dtype = "";
  l.bind(4, lse);
  FlashAttentionParams p{uint32_t(B), uint32_t(Hq), uint32_t(Hkv), uint32_t(Nq), uint32_t(Nk), uint32_t(Hq / Hkv),
                         float(c.number("scale") * 1.4426950408889634)};  // scale * log2(e): the exp2 domain
  l.set_params(5, p);
  BufferArg slopes = c.buffer(c.has("alibi_slopes") ? "alibi_slopes" : "q");  // never read without USE_ALIBI
  if (!c.has("alibi_slopes")) slopes.dtype = "";
  l.bind(6, slopes);
  l.set_params(7, variants);
  l.args.grid = {uint32_t((Nq + block_q - 1) / block_q), uint32_t(Hq), uint32_t(B)};
  l.args.threadgroup = {block_q / 8 * 32, 1, 1};
  // The Q, K and V tiles: the kernel's [[threadgroup(0)]] buffer (see the shader's header comment).
  l.args.threadgroup_memory = {{0, (uint64_t(block_q) + 2 * block_k) * (uint64_t(D) * itemsize + kRowPadBytes)}};
  return {l};
}

const std::vector<std::string> kFloats = {"float32", "float16", "bfloat16"};

const Proto kFlashAttention{
    "flash_attention",
    "flash_attention.metal",
    "Flash attention forward: out = softmax(scale * q k^T + mask) v, and the logsumexp (natural log) into lse; "
    "optionally softcap, ALiBi and RoPE fused on q and k (prototype 7).",
    {{"q", "B Hq Nq D", kFloats, false, false, 4},
     {"k", "B Hkv Nk D", {"=q"}, false, false, 4},
     {"v", "B Hkv Nk D", {"=q"}, false, false, 4},
     {"out", "B Hq Nq D", {"=q"}, true},
     {"lse", "B Hq Nq", {"float32"}, true, true},
     {"alibi_slopes", "Hq", {"float32"}, false, true}},
    {{"causal", OptionKind::Bool, "bottom-right aligned causal mask"},
     {"scale", OptionKind::Float, "softmax scale"},
     {"block_q", OptionKind::Int, "query rows per threadgroup: a multiple of 8, at most 256"},
     {"block_k", OptionKind::Int, "keys per step: a multiple of 8, at most 128"},
     {"softcap", OptionKind::Float, "scores -> softcap * tanh(scores / softcap) before bias and mask; None: off"},
     {"rope.style", OptionKind::Text, "fused RoPE on q and k: 'neox' or 'gptj'; None: off"},
     {"rope.base", OptionKind::Float, "fused RoPE: theta_i = pos * base^(-2i / rotary_dim)"},
     {"rope.rotary_dim", OptionKind::Int, "fused RoPE: dims rotated (even, <= D); None: D"},
     {"rope.q_offset", OptionKind::Int, "fused RoPE: position of query row 0"},
     {"rope.k_offset", OptionKind::Int, "fused RoPE: position of key 0"}},
    plan,
    {{"head_dims", {kHeadDims.begin(), kHeadDims.end()}}, {"max_block_q", {kMaxBlockQ}}, {"max_block_k", {kMaxBlockK}}}};
const Registration kRegistered(kFlashAttention);

}  // namespace
}  // namespace aproto::proto
