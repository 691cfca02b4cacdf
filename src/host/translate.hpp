// MSL -> C++ translation for the host backend.
//
// A kernel source stays unchanged on disk; this turns its text into a C++ translation unit that clang
// compiles against include/aproto_metal.hpp. The rewrites are the few places where MSL is not C++:
//  - `constant T NAME [[function_constant(i)]];` becomes a constexpr with the pipeline's value (one
//    compiled variant per constant set; usable as an array size), is_function_constant_defined() a bool;
//  - `threadgroup T name[...];` in a function body becomes a reference to memory shared by the group;
//  - address-space qualifiers go (`constant` becomes `const`); attributes are dropped;
//  - `1.0h` half literals, `float4(...)` constructors and `(float4)x` / static_cast<float4> conversions,
//    which on clang vectors would be bit casts, become calls with MSL semantics;
//  - a generated entry point binds [[buffer(n)]], [[threadgroup(n)]] and thread-position parameters.
// Lines are preserved, so compiler messages point at the shader's own file:line.
#pragma once
#include <string>
#include <vector>

#include "runtime/constants.hpp"

namespace aproto::host {

// The C++ translation unit of `function`. `source` is the include-resolved text (runtime/source.hpp);
// `source_name` names it in messages until its first #line. Throws CompileError ("file:line: ...").
std::string translate(const std::string& source, const std::string& function, const Constants& constants,
                      const std::string& source_name);

// One parameter of a kernel as declared. `type` is the C++ type text with address spaces removed (e.g.
// "const float*", "const Params&"), `attr` the attribute ("buffer", "threadgroup", a position
// attribute), `arg` its argument ("0"), `address_space` the declared one ("device", "constant", ...).
struct KernelParameter {
  std::string type;
  std::string name;
  std::string attr;
  std::string arg;
  std::string address_space;
  int line = 0;
};

// The parameters of kernel `function` in declaration order (parse only, no translation); the runtime
// checks call arguments against them on every backend. Throws CompileError.
std::vector<KernelParameter> kernel_parameters(const std::string& source, const std::string& function,
                                               const std::string& source_name);

}  // namespace aproto::host
