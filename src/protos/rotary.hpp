// The RoPE options shared by the separate pass (attention_variants.cpp, options "style", "rotary_dim",
// "base") and flash attention's fused RoPE (flash_attention.cpp, the same under "rope.").
#pragma once
#include <climits>
#include <cmath>
#include <string>

#include "protos/proto.hpp"

namespace aproto::proto {

struct RotaryOptions {
  bool neox;
  uint32_t dim;    // rotary_dim
  float freq_exp;  // -2 log2(base) / rotary_dim (shaders/rope.h)
};

// Checks `<prefix>style`, `<prefix>rotary_dim` (None: head_dim) and `<prefix>base` against head_dim.
inline RotaryOptions rotary_options(const Call& c, const std::string& prefix, int64_t head_dim) {
  const std::string& style = c.text(prefix + "style");
  c.require(style == "neox" || style == "gptj", prefix + "style must be 'neox' or 'gptj', got '" + style + "'");
  const int64_t dim = c.given(prefix + "rotary_dim") ? c.integer(prefix + "rotary_dim") : head_dim;
  c.require(dim >= 2 && dim <= head_dim && dim % 2 == 0, prefix + "rotary_dim must be even and in 2.." +
                                                             std::to_string(head_dim) + " (the head dim), got " +
                                                             std::to_string(dim));
  const double base = c.number(prefix + "base");
  c.require(base > 0.0, prefix + "base must be > 0, got " + std::to_string(base));
  return {style == "neox", uint32_t(dim), float(-2.0 * std::log2(base) / double(dim))};
}

// `<prefix><name>`, an int whose positions offset .. offset + length - 1 fit int32 (the kernels' positions).
inline int32_t rotary_offset(const Call& c, const std::string& name, int64_t length) {
  const int64_t offset = c.integer(name);
  c.require(offset >= INT32_MIN && offset + length - 1 <= INT32_MAX,
            name + " must keep the positions (offset + 0 .. " + std::to_string(length - 1) + ") in int32, got " +
                std::to_string(offset));
  return int32_t(offset);
}

}  // namespace aproto::proto
