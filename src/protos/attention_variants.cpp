// Prototype 7, attention variants: the separate RoPE pass (shaders/rope.metal). ALiBi, softcap and the
// fused RoPE are function constants of flash attention (flash_attention.cpp); rotary.hpp is shared.
#include "attention_params.h"
#include "protos/proto.hpp"
#include "protos/rotary.hpp"

namespace aproto::proto {
namespace {

constexpr uint32_t kRows = 8;  // ROWS in the shader: rows per threadgroup

std::vector<Launch> plan(const Call& c) {
  const int64_t B = c.dim("B"), H = c.dim("H"), N = c.dim("N"), D = c.dim("D");
  c.require(B * H <= UINT32_MAX && N <= (1 << 30) && D <= (1 << 30), "sizes too large for one dispatch");
  const RotaryOptions r = rotary_options(c, "", D, {{"offset", N}});
  const bool positions = c.has("positions");
  c.require(!positions || r.offsets[0] == 0, "offset must be 0 when positions are given (they are the positions)");
  Launch l;
  l.pipeline.function = "rope_" + c.kernel_suffix("x");
  const uint64_t mode = positions ? c.array("positions").shape.size() : 0;  // [N]: 1, [B, N]: 2
  l.pipeline.constants = {{"NEOX", ConstantValue::boolean(r.neox)}, {"POSITIONS", ConstantValue::unsigned_integer(mode)}};
  BufferArg pos = c.buffer(positions ? "positions" : "x");  // without positions: a stand-in, never read
  if (!positions) pos.dtype = "";
  for (const BufferArg& b : {c.buffer("x"), pos, c.buffer("out")}) l.bind(l.buffers.size(), b);
  l.set_params(3, RopeParams{uint32_t(B), uint32_t(H), uint32_t(N), uint32_t(D), r.dim, r.offsets[0], r.freq_exp});
  l.args.grid = {uint32_t((N + kRows - 1) / kRows), uint32_t(B * H), 1};
  l.args.threadgroup = {32, kRows, 1};
  return {l};
}

const Proto kRope{
    "rope", "rope.metal",
    "Rotary position embedding: out = x with each pair of its first rotary_dim dims rotated by pos * base^(-2i / "
    "rotary_dim) (neox: halves, gptj: interleaved pairs), the rest copied; float math, rounded once.",
    {{"x", "B H N D", {"float32", "float16", "bfloat16"}}, {"positions", "N | B N", {"int32"}, false, true},
     {"out", "B H N D", {"=x"}, true}},
    {{"offset", OptionKind::Int, "position of row 0 when no positions are given"},
     {"base", OptionKind::Float, "theta_i = pos * base^(-2i / rotary_dim)"},
     {"style", OptionKind::Text, "'neox' (halves) or 'gptj' (interleaved pairs)"},
     {"rotary_dim", OptionKind::Int, "the dims rotated (even, <= D); None: all"}},
    plan, {}};
const Registration kRegistered(kRope);

}  // namespace
}  // namespace aproto::proto
