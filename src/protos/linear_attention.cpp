// Prototype 6, linear attention (shaders/linear_attention.metal), FLA's chunk_h / chunk_o and the recurrence:
// linear_attention (mode "chunk" = chunk_h then chunk_o in one sequence, or "recurrent") and each stage alone.
#include <cmath>

#include "linear_attention_params.h"
#include "protos/proto.hpp"

namespace aproto::proto {
namespace {

constexpr uint32_t kMaxDim = 128, kMaxBlock = 128, kPad = 16;  // MAX_DIM, MAX_BLOCK, PAD_BYTES in the shader
uint32_t blocks(uint32_t n, uint32_t block) { return (n + block - 1) / block; }
struct Sizes { uint32_t B, T, H, K, V, item, chunk = 0, chunks = 0, bk = 0, bv = 0; };

// The checks every entry shares; `chunked` adds chunk size and blocks (capped at K, V rounded up to 8).
Sizes sizes(const Call& c, bool chunked) {
  Sizes s{uint32_t(c.dim("B")), uint32_t(c.dim("T")), uint32_t(c.dim("H")), uint32_t(c.dim("K")),
          uint32_t(c.dim("V")), c.array("k").itemsize};
  for (const char* d : {"K", "V"})
    c.require(c.dim(d) >= 8 && c.dim(d) <= kMaxDim, d + (" must be in 8..128, got " + std::to_string(c.dim(d))));
  c.require(c.dim("B") * c.dim("H") <= UINT32_MAX && c.dim("T") <= (1 << 30), "sizes too large for one dispatch");
  for (uint64_t i = 0; c.has("g") && !c.planning() && i < c.array("g").elements(); i++) {
    const float x = static_cast<const float*>(c.array("g").data)[i];  // a log decay: exp(g) in (0, 1]
    c.require(x <= 0.0f && std::isfinite(x), "g must be finite and <= 0 (a log decay), got " + std::to_string(x) +
                                                 " at flat index " + std::to_string(i));
  }
  if (!chunked) return s;
  c.require_one_of("chunk_size", c.integer("chunk_size"), {16, 32, 64});  // MAX_CHUNK = 64
  s.chunk = uint32_t(c.integer("chunk_size"));
  s.chunks = blocks(s.T, s.chunk);
  s.bk = std::min(c.count("block_k", 8, kMaxBlock, 8), blocks(s.K, 8) * 8);
  s.bv = std::min(c.count("block_v", 8, kMaxBlock, 8), blocks(s.V, 8) * 8);
  c.require(!c.has("h") || c.dim("N") == s.chunks, "h must hold one state per chunk: N = " + std::to_string(s.chunks));
  return s;
}

// One launch: every constant (the host backend wants one for each constant any helper of the file reads), the
// arrays in buffer order (an absent optional one bound to a stand-in as raw bytes, never touched), the params,
// the geometry and the threadgroup bytes of the layouts in the shader's header comment.
Launch launch(const Call& c, const Sizes& s, const std::string& kernel) {
  Launch l;
  l.pipeline.function = "linear_attention_" + kernel + "_" + c.kernel_suffix("k");
  auto u = ConstantValue::unsigned_integer;
  auto b = [&c](const char* arg) { return ConstantValue::boolean(c.has(arg)); };
  l.pipeline.constants = {{"CHUNK", u(s.chunk)}, {"K_DIM", u(s.K)}, {"V_DIM", u(s.V)}, {"BLOCK_K", u(s.bk)},
                          {"BLOCK_V", u(s.bv)}, {"USE_G", b("g")}, {"USE_INITIAL_STATE", b("initial_state")},
                          {"STORE_FINAL_STATE", b("final_state")}};
  const uint64_t rows = (s.bk * s.item + kPad) + (s.bv * s.item + kPad) + 8;  // k (or q) and v tile rows, G
  std::vector<std::string> names = {"q", "k", "v", "g", "initial_state", "o", "final_state"};
  std::string stand_in = "o";
  l.args = {{blocks(s.V, 32), s.H, s.B}, {128, 1, 1}, {{0, (8 * blocks(s.K, 4) + 128) * 4}}};  // recurrent
  if (kernel == "chunk_h") {
    names = {"k", "v", "g", "initial_state", "h", "final_state"}, stand_in = "h";
    l.args = {{blocks(s.K, s.bk), blocks(s.V, s.bv), s.B * s.H}, {s.bk / 8 * 32, 1, 1}, {{0, s.chunk * rows}}};
  } else if (kernel == "chunk_o") {
    names = {"q", "k", "v", "h", "g", "o"}, stand_in = "q";
    l.args = {{blocks(s.V, s.bv), s.chunks, s.B * s.H}, {s.chunk / 8 * 32, 1, 1},
              {{0, s.chunk * (rows + s.bk * s.item + kPad) + s.bk * (s.bv * 4 + kPad)}}};
  }
  for (const auto& n : names) {
    BufferArg buffer = c.buffer(c.has(n) ? n : stand_in);
    if (!c.has(n)) buffer.dtype = "";
    l.bind(l.buffers.size(), buffer);
  }
  const float scale = kernel == "chunk_h" ? 0.0f : float(c.number("scale"));
  l.set_params(l.buffers.size(), LinearAttentionParams{s.B, s.T, s.H, s.chunks, scale});
  return l;
}

std::vector<Launch> plan(const Call& c) {
  const std::string mode = c.text("mode");
  c.require(mode == "chunk" || mode == "recurrent", "mode must be 'chunk' or 'recurrent', got '" + mode + "'");
  const Sizes s = sizes(c, mode == "chunk");
  c.require(c.has("h") == (mode == "chunk"), mode == "chunk" ? "mode 'chunk' needs the state buffer h"
                                                             : "h (chunk states) is not used with mode 'recurrent'");
  if (mode == "chunk") return {launch(c, s, "chunk_h"), launch(c, s, "chunk_o")};
  return {launch(c, s, "recurrent")};
}

const std::vector<std::string> kFloats = {"float32", "float16", "bfloat16"}, kF32 = {"float32"};
const ArgSpec kQ{"q", "B T H K", kFloats}, kK{"k", "B T H K", {"=q"}}, kV{"v", "B T H V", {"=q"}},
    kG{"g", "B T H", kF32, false, true}, kH0{"initial_state", "B H K V", kF32, false, true},
    kHt{"final_state", "B H K V", kF32, true, true}, kO{"o", "B T H V", {"=q"}, true};
const OptionSpec kChunk{"chunk_size", OptionKind::Int, "steps per chunk: 16, 32 or 64"},
    kScale{"scale", OptionKind::Float, "multiplies q k^T and q S"},
    kBlockK{"block_k", OptionKind::Int, "state rows per chunk_h threadgroup, K step of chunk_o: 8..128, multiple of 8"},
    kBlockV{"block_v", OptionKind::Int, "state / output columns per threadgroup: 8..128, multiple of 8"};
const std::map<std::string, std::vector<int64_t>> kFacts = {
    {"chunk_sizes", {16, 32, 64}}, {"dim_range", {8, kMaxDim}}, {"max_block", {kMaxBlock}}};
auto alone(const char* kernel) {  // the plan of one chunk stage called on its own
  return [kernel](const Call& c) { return std::vector{launch(c, sizes(c, true), kernel)}; };
}

const Proto kLinearAttention{"linear_attention", "linear_attention.metal",
    "Linear attention: S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = scale q_t S_t, by chunks (states in h) or steps.",
    {kQ, kK, kV, kG, kH0, {"h", "B N H K V", kF32, true, true}, kO, kHt},
    {{"mode", OptionKind::Text, "'chunk' or 'recurrent'"}, kChunk, kScale, kBlockK, kBlockV}, plan, kFacts};
const Proto kChunkH{"linear_attention_chunk_h", "linear_attention.metal",
    "FLA's chunk_h: the state entering each chunk into h, and optionally the final state.",
    {{"k", "B T H K", kFloats}, {"v", "B T H V", {"=k"}}, kG, kH0, {"h", "B N H K V", kF32, true}, kHt},
    {kChunk, kBlockK, kBlockV}, alone("chunk_h"), kFacts};
const Proto kChunkO{"linear_attention_chunk_o", "linear_attention.metal",
    "FLA's chunk_o: o = scale (exp(G) q h[n] + causal(q k^T exp(G_i - G_j)) v) per chunk, from the states h.",
    {kQ, kK, kV, {"h", "B N H K V", kF32}, kG, kO}, {kChunk, kScale, kBlockK, kBlockV}, alone("chunk_o"), kFacts};
const Registration kRegistered[] = {Registration(kLinearAttention), Registration(kChunkH), Registration(kChunkO)};

}  // namespace
}  // namespace aproto::proto
