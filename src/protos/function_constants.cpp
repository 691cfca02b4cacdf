// Prototype 4, function constants: prototype 1's flash kernel (shaders/flash_attention.metal) specialised
// three ways. "constants": prototype 1's launch as it is (one library, a pipeline per constant set);
// "defines": the same values as preprocessor defines (a library per variant, register arrays sized
// exactly); "runtime": no specialisation (one pipeline per dtype, the values in the params buffer,
// register arrays at the maxima below).
#include "attention_params.h"
#include "protos/proto.hpp"

namespace aproto::proto {
namespace {

// The runtime kernel's register arrays hold this many head-dim and key fragments (the largest of the 72
// variants: attention_proto.function_constants.VARIANTS); the shader gets them as defines.
constexpr uint32_t kRuntimeMaxHeadDim = 128, kRuntimeMaxBlockK = 64;

const Proto& flash() {
  for (const Proto* p : registry())
    if (p->name == "flash_attention") return *p;
  throw Error("[function_constants] prototype 1 (flash_attention) is not in this build");
}

std::vector<Launch> plan(const Call& c) {
  const std::string& strategy = c.text("strategy");
  c.require(strategy == "constants" || strategy == "defines" || strategy == "runtime",
            "strategy must be 'constants', 'defines' or 'runtime', got '" + strategy + "'");
  std::vector<Launch> launches = flash().plan(c);  // prototype 1's checks and launch
  if (strategy == "constants") return launches;
  Launch& l = launches.at(0);
  Constants values;  // the specialisation this prototype moves; prototype 7's variant switches stay constants
  for (const char* name : {"BLOCK_Q", "BLOCK_K", "HEAD_DIM", "CAUSAL", "WRITE_LSE"}) {
    values[name] = l.pipeline.constants.at(name);
    l.pipeline.constants.erase(name);
  }
  if (strategy == "defines") {
    l.pipeline.defines["APROTO_SPECIALISE_BY_DEFINES"] = "1";
    for (const auto& [name, value] : values) l.pipeline.defines["APROTO_" + name] = value.literal();
    return launches;
  }
  const uint32_t head_dim = uint32_t(values.at("HEAD_DIM").i), block_k = uint32_t(values.at("BLOCK_K").i);
  c.require(head_dim <= kRuntimeMaxHeadDim,
            "strategy 'runtime': head_dim " + std::to_string(head_dim) + " is over the runtime kernel's maximum " +
                std::to_string(kRuntimeMaxHeadDim) + " (its register arrays are sized for the maxima)");
  c.require(block_k <= kRuntimeMaxBlockK,
            "strategy 'runtime': block_k " + std::to_string(block_k) + " is over the runtime kernel's maximum " +
                std::to_string(kRuntimeMaxBlockK) + " (its register arrays are sized for the maxima)");
  l.pipeline.defines = {{"APROTO_RUNTIME_ARGS", "1"},
                        {"APROTO_MAX_HEAD_DIM", std::to_string(kRuntimeMaxHeadDim) + "u"},
                        {"APROTO_MAX_BLOCK_K", std::to_string(kRuntimeMaxBlockK) + "u"}};
  auto* p = static_cast<FlashAttentionParams*>(l.buffers.at(5).data);  // prototype 1's params, in the launch
  p->block_q = uint32_t(values.at("BLOCK_Q").i);
  p->block_k = block_k;
  p->head_dim = head_dim;
  p->causal = uint32_t(values.at("CAUSAL").i);
  p->write_lse = uint32_t(values.at("WRITE_LSE").i);
  return launches;
}

const std::vector<std::string> kFloats = {"float32", "float16", "bfloat16"};

const Proto kFunctionConstants{
    "function_constants",
    "flash_attention.metal",
    "Prototype 1's flash attention specialised by `strategy`: 'constants' (function constants, prototype 1 as it "
    "is), 'defines' (a library per variant) or 'runtime' (one pipeline per dtype, values in the params buffer).",
    {{"q", "B Hq Nq D", kFloats, false, false, 4},
     {"k", "B Hkv Nk D", {"=q"}, false, false, 4},
     {"v", "B Hkv Nk D", {"=q"}, false, false, 4},
     {"out", "B Hq Nq D", {"=q"}, true},
     {"lse", "B Hq Nq", {"float32"}, true, true}},
    {{"strategy", OptionKind::Text, "'constants', 'defines' or 'runtime'"},
     {"causal", OptionKind::Bool, "bottom-right aligned causal mask"},
     {"scale", OptionKind::Float, "softmax scale"},
     {"block_q", OptionKind::Int, "query rows per threadgroup: a multiple of 8, at most 256"},
     {"block_k", OptionKind::Int, "keys per step: a multiple of 8, at most 128 (runtime: 64)"}},
    plan,
    {{"runtime_max_head_dim", {kRuntimeMaxHeadDim}}, {"runtime_max_block_k", {kRuntimeMaxBlockK}}}};
const Registration kRegistered(kFunctionConstants);

}  // namespace
}  // namespace aproto::proto
