// Prototype 1, flash attention forward (shaders/flash_attention.metal) and its decode kernel for
// Nq <= 8 (shaders/flash_decode.metal): arguments, limits, launches.
#include <algorithm>

#include "attention_params.h"
#include "protos/proto.hpp"
#include "protos/rotary.hpp"

namespace aproto::proto {
namespace {

const std::vector<uint32_t> kHeadDims = {32, 64, 80, 96, 128, 256};  // HEAD_DIM of the shaders
constexpr uint32_t kMaxBlockQ = 256;  // block_q / 8 SIMD-groups of 32 threads: Apple's 1024 per threadgroup
constexpr uint32_t kMaxBlockK = 128;  // MAX_BLOCK_K in the shader: its score registers have a literal size
constexpr uint64_t kRowPadBytes = 16;  // ROW_PAD_BYTES in the shader
constexpr int64_t kMaxLength = int64_t(1) << 30;  // the kernel computes row - Nq + Nk in 32-bit ints
constexpr int64_t kMaxQRegsDim = 128;  // MAX_Q_REGS_DIM in the shader
constexpr uint32_t kDecodeMaxRows = 8, kDecodeThreads = 256;  // MAX_ROWS, SIMDGROUPS * 32 in flash_decode.metal
// Layout switches: option name, the shader's function constant (false when not given), doc.
const std::vector<std::array<std::string, 3>> kSwitches = {
    {"kv_alias", "KV_ALIAS", "K and V share one tile"}, {"kv_device", "KV_DEVICE", "full K/V blocks read from device"},
    {"q_regs", "Q_REGS", "Q fragments in registers (head_dim <= 128)"}, {"q_scaled", "Q_SCALED", "Q scaled at load"},
    {"fast_exp", "FAST_EXP", "fast::exp2 with finite sentinels"}, {"vec16", "VEC16", "16-byte loads, vector stores"},
    {"p_float", "P_FLOAT", "P in float32 for the P V product"}};
ConstantValue u32(int64_t v) { return ConstantValue::unsigned_integer(uint64_t(v)); }

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

// The checks and the launch both kernels share: buffers 0..5 (q, k, v, out, lse, params).
Launch common(const Call& c) {
  const int64_t B = c.dim("B"), Hq = c.dim("Hq"), Hkv = c.dim("Hkv"), Nq = c.dim("Nq"), Nk = c.dim("Nk");
  c.require_one_of("head_dim", c.dim("D"), kHeadDims);
  c.require(Hq % Hkv == 0, "q heads (" + std::to_string(Hq) + ") must be a multiple of kv heads (" +
                               std::to_string(Hkv) + ")");
  c.require(Nq <= kMaxLength && Nk <= kMaxLength && B <= UINT32_MAX && Hq <= UINT32_MAX,
            "sizes too large for one dispatch (lengths up to 2^30)");
  Launch l;
  for (const char* name : {"q", "k", "v", "out"}) l.bind(l.buffers.size(), c.buffer(name));
  // Without lse, slot 4 is bound to `out` and never written (WRITE_LSE = false): no extra buffer.
  BufferArg lse = c.buffer(c.has("lse") ? "lse" : "out");
  if (!c.has("lse")) lse.dtype = "";
  l.bind(4, lse);
  l.set_params(5, FlashAttentionParams{uint32_t(B), uint32_t(Hq), uint32_t(Hkv), uint32_t(Nq), uint32_t(Nk),
                                       uint32_t(Hq / Hkv), float(c.number("scale") * 1.4426950408889634)});  // * log2(e)
  l.pipeline.constants = {{"HEAD_DIM", u32(c.dim("D"))}, {"CAUSAL", ConstantValue::boolean(c.flag("causal"))},
                          {"WRITE_LSE", ConstantValue::boolean(c.has("lse"))}};
  return l;
}

std::vector<Launch> plan_decode(const Call& c) {
  Launch l = common(c);
  const int64_t Nq = c.dim("Nq"), group_rows = c.dim("Hq") / c.dim("Hkv") * Nq;
  c.require(Nq <= kDecodeMaxRows, "the decode kernel takes up to 8 query rows (Nq), got " + std::to_string(Nq));
  const uint32_t rows = uint32_t(std::min<int64_t>(group_rows, kDecodeMaxRows));  // (head, query) rows per threadgroup
  l.pipeline.function = "flash_decode_" + c.kernel_suffix("q");
  l.pipeline.constants["ROWS"] = u32(rows);
  l.args = {{uint32_t((group_rows + rows - 1) / rows), uint32_t(c.dim("Hkv")), uint32_t(c.dim("B"))},
            {kDecodeThreads, 1, 1}, {{0, 4 * kDecodeThreads / 32 * (2 * rows + uint64_t(c.dim("D")))}}};  // the shader's header
  return {l};
}

std::vector<Launch> plan(const Call& c) {
  Launch l = common(c);
  const int64_t D = c.dim("D");
  const uint32_t block_q = c.count("block_q", 8, kMaxBlockQ, 8);
  const uint32_t block_k = c.count("block_k", 8, kMaxBlockK, 8);  // the registers hold MAX_BLOCK_K keys
  auto on = [&c](const std::string& name) { return c.given(name) && c.flag(name); };
  c.require(!on("q_regs") || D <= kMaxQRegsDim, "q_regs keeps D / 8 Q fragments in registers: head_dim up to " +
                                                    std::to_string(kMaxQRegsDim) + ", got " + std::to_string(D));
  l.pipeline.function = "flash_attention_" + c.kernel_suffix("q");
  for (const auto& [name, on_] : {std::pair<const char*, bool>{"USE_ALIBI", c.has("alibi_slopes")}, {"USE_SOFTCAP", c.given("softcap")},
       {"USE_ROPE", c.given("rope.style")}, {"ROPE_NEOX", c.given("rope.style") && c.text("rope.style") == "neox"}})
    l.pipeline.constants[name] = ConstantValue::boolean(on_);
  BufferArg slopes = c.buffer(c.has("alibi_slopes") ? "alibi_slopes" : "q");  // never read without USE_ALIBI
  if (!c.has("alibi_slopes")) slopes.dtype = "";
  l.bind(6, slopes);
  l.set_params(7, variant_params(c));
  l.pipeline.constants.insert({{"BLOCK_Q", u32(block_q)}, {"BLOCK_K", u32(block_k)}});
  for (const auto& s : kSwitches) l.pipeline.constants[s[1]] = ConstantValue::boolean(on(s[0]));
  if (on("sized")) l.pipeline.defines = {{"FA_SIZED_HEAD_DIM", std::to_string(D)}, {"FA_SIZED_BLOCK_K", std::to_string(block_k)}};
  // The Q, K and V tiles: the kernel's [[threadgroup(0)]] buffer (the shader's header comment: per layout).
  const uint64_t kv_rows = (on("kv_alias") || on("kv_device") ? 1 : 2) * uint64_t(block_k);
  const uint64_t rows = on("q_regs") ? std::max<uint64_t>(block_q, kv_rows) : block_q + kv_rows;
  l.args = {{uint32_t((c.dim("Nq") + block_q - 1) / block_q), uint32_t(c.dim("Hq")), uint32_t(c.dim("B"))},
            {block_q / 8 * 32, 1, 1}, {{0, rows * (uint64_t(D) * c.array("q").itemsize + kRowPadBytes)}}};
  return {l};
}

const std::vector<ArgSpec> kArgs = {{"q", "B Hq Nq D", {"float32", "float16", "bfloat16"}, false, false, 4, 16},  // vec16: 16 B
                                    {"k", "B Hkv Nk D", {"=q"}, false, false, 4, 16},
                                    {"v", "B Hkv Nk D", {"=q"}, false, false, 4, 16},
                                    {"out", "B Hq Nq D", {"=q"}, true},
                                    {"lse", "B Hq Nq", {"float32"}, true, true}};
const std::vector<OptionSpec> kOptions = {{"causal", OptionKind::Bool, "bottom-right aligned causal mask"},
                                          {"scale", OptionKind::Float, "softmax scale"}};
std::vector<ArgSpec> flash_args() {
  std::vector<ArgSpec> a = kArgs;
  a.push_back({"alibi_slopes", "Hq", {"float32"}, false, true});
  return a;
}
std::vector<OptionSpec> flash_options() {
  std::vector<OptionSpec> o = kOptions;
  o.insert(o.end(), {{"softcap", OptionKind::Float, "scores -> softcap * tanh(scores / softcap) before bias and mask; None: off"},
                     {"rope.style", OptionKind::Text, "fused RoPE on q and k: 'neox' or 'gptj'; None: off"},
                     {"rope.base", OptionKind::Float, "fused RoPE: theta_i = pos * base^(-2i / rotary_dim)"},
                     {"rope.rotary_dim", OptionKind::Int, "fused RoPE: dims rotated (even, <= D); None: D"},
                     {"rope.q_offset", OptionKind::Int, "fused RoPE: position of query row 0"},
                     {"rope.k_offset", OptionKind::Int, "fused RoPE: position of key 0"},
                     {"block_q", OptionKind::Int, "query rows per threadgroup: a multiple of 8, at most 256"},
                     {"block_k", OptionKind::Int, "keys per step: a multiple of 8, at most 128"},
                     {"sized", OptionKind::Bool, "layout: register arrays sized by defines (library per variant)"}});
  for (const auto& s : kSwitches) o.push_back({s[0], OptionKind::Bool, "layout: " + s[2]});
  return o;
}

const Proto kFlashAttention{
    "flash_attention", "flash_attention.metal",
    "Flash attention forward: out = softmax(scale * q k^T + mask) v, and the logsumexp (natural log) into lse; "
    "optionally softcap, ALiBi and RoPE fused on q and k (prototype 7).",
    flash_args(), flash_options(), plan,
    {{"head_dims", {kHeadDims.begin(), kHeadDims.end()}}, {"max_block_q", {kMaxBlockQ}}, {"max_block_k", {kMaxBlockK}},
     {"max_q_regs_dim", {kMaxQRegsDim}}}};
const Proto kFlashDecode{
    "flash_decode", "flash_decode.metal",
    "Flash attention for decode (Nq <= 8): one pass over the keys split across SIMD-groups; a GQA group's query heads "
    "share it. Same arguments and results as flash_attention.",
    kArgs, kOptions, plan_decode, {{"max_rows", {kDecodeMaxRows}}}};
const Registration kRegistered(kFlashAttention), kRegisteredDecode(kFlashDecode);

}  // namespace
}  // namespace aproto::proto
