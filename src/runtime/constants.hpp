// Function-constant values: the specialisation of one pipeline.
#pragma once
#include <cstdint>
#include <map>
#include <string>

namespace aproto {

struct ConstantValue {
  enum class Type { Bool, Int, UInt, Float } type = Type::Int;
  int64_t i = 0;   // Bool, Int, UInt
  double f = 0.0;  // Float
  // The value as an MSL/C++ literal, e.g. "true", "-3", "7u", "0.125f".
  std::string literal() const;
  static ConstantValue boolean(bool v) { ConstantValue c; c.type = Type::Bool; c.i = v; return c; }
  static ConstantValue integer(int64_t v) { ConstantValue c; c.type = Type::Int; c.i = v; return c; }
  static ConstantValue unsigned_integer(uint64_t v) { ConstantValue c; c.type = Type::UInt; c.i = (int64_t)v; return c; }
  static ConstantValue floating(double v) { ConstantValue c; c.type = Type::Float; c.f = v; return c; }
};

// Keyed by the constant's name, or by "#<index>" for the [[function_constant(index)]] slot.
using Constants = std::map<std::string, ConstantValue>;

// A stable spelling of a set of values, e.g. "BLOCK_K=64u,CAUSAL=true" (sorted by key); part of
// PipelineSpec::key().
std::string constants_key(const Constants& constants);

}  // namespace aproto
