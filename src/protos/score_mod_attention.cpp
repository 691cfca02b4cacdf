// Prototype 2, attention with a user score modifier (shaders/score_mod_attention.metal) reached in one of
// four ways: compiled inline, linked at pipeline creation, called through a visible function table, or
// stitched from [[stitchable]] functions and linked. The modifier's MSL arrives as text (Python composes
// built-ins and user code); each mode builds its own source and pipeline spec around it.
#include <sstream>

#include "protos/proto.hpp"
#include "score_mod_attention_params.h"

namespace aproto::proto {
namespace {

constexpr int64_t kMaxHeadDim = 128;  // MAX_HEAD_DIM in the shader (register arrays)
constexpr uint32_t kRows = 32, kBlockK = 32;  // ROWS, BLOCK_K in the shader
const std::string kPrelude = "#include <metal_stdlib>\nusing namespace metal;\n",
                  kSignature = "(float score, uint batch, uint head, uint q_idx, uint kv_idx)",
                  kCall = "(score, batch, head, q_idx, kv_idx)";

// "f:0,1,2,3,4;g:n0,1,2,3,4" -> the nodes of a stitching graph (nK = node K's result).
StitchingGraph parse_graph(const Call& c, const std::string& text) {
  StitchingGraph g{"score_mod_linked", {}};
  std::stringstream nodes(text);
  for (std::string node; std::getline(nodes, node, ';');) {
    const size_t colon = node.find(':');
    c.require(colon != std::string::npos, "stitch_graph: expected 'function:arg,arg,...', got '" + node + "'");
    StitchingGraph::Node n{node.substr(0, colon), {}};
    std::stringstream args(node.substr(colon + 1));
    for (std::string a; std::getline(args, a, ',');) {
      c.require(!a.empty() && a.find_first_not_of("n0123456789") == std::string::npos && a.find('n', 1) == std::string::npos,
                "stitch_graph: an argument is an input index or nK (node K), got '" + a + "'");
      n.arguments.push_back(a[0] == 'n' ? -1 - std::stoi(a.substr(1)) : std::stoi(a));
    }
    g.nodes.push_back(n);
  }
  return g;
}

std::vector<Launch> plan(const Call& c) {
  const int64_t B = c.dim("B"), Hq = c.dim("Hq"), Hkv = c.dim("Hkv"), Nq = c.dim("Nq"), Nk = c.dim("Nk");
  const int64_t D = c.dim("D");
  c.require(D >= 1 && D <= kMaxHeadDim, "head_dim must be in 1..128, got " + std::to_string(D));
  c.require(Hq % Hkv == 0, "q heads (" + std::to_string(Hq) + ") must be a multiple of kv heads (" +
                               std::to_string(Hkv) + ")");
  c.require(Nq < (int64_t(1) << 30) && Nk < (int64_t(1) << 30) && B * Hq <= UINT32_MAX, "sizes too large");
  const std::string mode = c.text("mode"), path = c.text("score_mod_path"), graph = c.text("stitch_graph");
  c.require(mode == "inline" || mode == "linked" || mode == "table" || mode == "stitched",
            "mode must be 'inline', 'linked', 'table' or 'stitched', got '" + mode + "'");
  c.require((mode == "stitched") == !graph.empty(), "stitch_graph is given with mode 'stitched' and only then");
  // The user's text keeps its own name and line numbers in compiler messages.
  const std::string user = kPrelude + "#line 1 \"" + path + "\"\n" + c.text("score_mod") + "\n";
  const std::string wrapper = "#line 1 \"<score_mod_attention: " + mode + " wrapper>\"\n";

  Launch l;
  l.pipeline.function = "score_mod_attention_" + c.kernel_suffix("q");
  l.pipeline.constants = {{"HEAD_DIM", ConstantValue::unsigned_integer(uint64_t(D))},
                          {"CAUSAL", ConstantValue::boolean(c.flag("causal"))}};
  l.pipeline.defines = {{"SCORE_MOD_MODE", mode == "inline" ? "0" : mode == "table" ? "2" : "1"}};
  if (mode == "inline") {
    l.source = Source{user + "#include \"score_mod_attention.metal\"\n", path, {}};
  } else if (mode == "stitched") {
    l.pipeline.libraries = {Source{user, path, {}}};
    l.pipeline.stitched = {parse_graph(c, graph)};
    l.pipeline.linked_functions = {"score_mod_linked"};
  } else {
    const std::string name = mode == "table" ? "score_mod_table_0" : "score_mod_linked";
    l.pipeline.libraries = {Source{user + wrapper + "[[visible]] float " + name + kSignature + " { return score_mod" +
                                       kCall + "; }\n", path, {}}};
    (mode == "table" ? l.pipeline.table_functions : l.pipeline.linked_functions) = {name};
    if (mode == "table") l.args.function_tables = {{5, {name}}};
  }
  for (const char* name : {"q", "k", "v", "out"}) l.bind(l.buffers.size(), c.buffer(name));
  l.set_params(4, ScoreModAttentionParams{uint32_t(B), uint32_t(Hq), uint32_t(Hkv), uint32_t(Nq), uint32_t(Nk),
                                          uint32_t(Hq / Hkv), float(c.number("scale")), 0u});
  l.args.grid = {uint32_t((Nq + kRows - 1) / kRows), uint32_t(Hq), uint32_t(B)};
  l.args.threadgroup = {kRows, 1, 1};
  l.args.threadgroup_memory = {{0, 2ull * kBlockK * uint64_t(D) * 4}};  // the K and V tiles, as float
  return {l};
}

const std::vector<std::string> kFloats = {"float32", "float16", "bfloat16"};
const Proto kScoreModAttention{
    "score_mod_attention", "score_mod_attention.metal",
    "Attention with a score modifier: out = softmax(score_mod(scale * q k^T, b, h, i, j) + mask) v.",
    {{"q", "B Hq Nq D", kFloats}, {"k", "B Hkv Nk D", {"=q"}}, {"v", "B Hkv Nk D", {"=q"}},
     {"out", "B Hq Nq D", {"=q"}, true}},
    {{"mode", OptionKind::Text, "'inline', 'linked', 'table' or 'stitched'"},
     {"causal", OptionKind::Bool, "bottom-right aligned causal mask"},
     {"scale", OptionKind::Float, "softmax scale, applied before the modifier"},
     {"score_mod", OptionKind::Text, "MSL defining float score_mod(float, uint, uint, uint, uint) (stitched: the "
                                     "[[stitchable]] functions the graph calls)"},
     {"score_mod_path", OptionKind::Text, "the name compiler messages give that text"},
     {"stitch_graph", OptionKind::Text, "mode 'stitched': nodes 'function:arg,...' joined by ';' (nK = node K)"}},
    plan,
    {{"max_head_dim", {kMaxHeadDim}}, {"rows_per_threadgroup", {kRows}}, {"block_k", {kBlockK}}}};
const Registration kRegistered(kScoreModAttention);

}  // namespace
}  // namespace aproto::proto
