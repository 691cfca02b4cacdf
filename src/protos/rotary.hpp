// The RoPE options both entry points check: the separate pass (attention_variants.cpp: "style",
// "rotary_dim", "base", "offset") and flash attention's fused RoPE (the same under "rope.", two offsets).
#pragma once
#include <climits>
#include <cmath>

#include "protos/proto.hpp"

namespace aproto::proto {

struct RotaryOptions {
  bool neox;
  uint32_t dim;                  // rotary_dim (None: the head dim)
  float freq_exp;                // -2 log2(base) / rotary_dim (shaders/rope.h)
  std::vector<int32_t> offsets;  // per (name, length): positions offset .. offset + length - 1 fit int32
};

inline RotaryOptions rotary_options(const Call& c, const std::string& pre, int64_t head_dim,
                                    const std::vector<std::pair<std::string, int64_t>>& offsets) {
  const std::string& style = c.text(pre + "style");
  c.require(style == "neox" || style == "gptj", pre + "style must be 'neox' or 'gptj', got '" + style + "'");
  const int64_t dim = c.given(pre + "rotary_dim") ? c.integer(pre + "rotary_dim") : head_dim;
  c.require(dim >= 2 && dim <= head_dim && dim % 2 == 0, pre + "rotary_dim must be even and in 2.." +
            std::to_string(head_dim) + " (the head dim), got " + std::to_string(dim));
  const double base = c.number(pre + "base");
  c.require(base > 0.0, pre + "base must be > 0, got " + std::to_string(base));
  RotaryOptions r{style == "neox", uint32_t(dim), float(-2.0 * std::log2(base) / double(dim)), {}};
  for (const auto& [name, length] : offsets) {
    const int64_t o = c.integer(pre + name);
    c.require(o >= INT32_MIN && o + length - 1 <= INT32_MAX, pre + name + " must keep the positions (offset + 0 .. " +
              std::to_string(length - 1) + ") in int32, got " + std::to_string(o));
    r.offsets.push_back(int32_t(o));
  }
  return r;
}

}  // namespace aproto::proto
