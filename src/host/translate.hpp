// MSL -> C++ translation for the host backend.
//
// A kernel source stays unchanged on disk; this turns its text into a C++ translation unit that clang
// compiles against include/aproto_metal.hpp. First the preprocessor's macros and conditionals run
// (preprocess.hpp), so the translator sees what Metal's compiler sees. Then the rewrites are the few
// places where MSL is not C++:
//  - kernels are found as Metal publishes them: `kernel void f(...)`, and template instances under
//    their `[[host_name("...")]]`; the other kernels' bodies and instances go;
//  - `constant T NAME [[function_constant(i)]];` becomes a value of the pipeline (one compiled variant
//    per constant set), is_function_constant_defined() a bool; a constant the kernel reaches must have one;
//  - `threadgroup T name[...];` in a function body becomes a reference to memory shared by the group;
//  - address-space qualifiers go (`constant` becomes `const`), and so do member-function overloads on
//    the address space of `this` that duplicate another; attributes are dropped;
//  - `1.0h` half literals, `float4(...)` constructors and `(float4)x` / static_cast<float4> conversions,
//    which on clang vectors would be bit casts, become calls with MSL semantics;
//  - a generated entry point binds [[buffer(n)]], [[threadgroup(n)]] and thread-position parameters,
//    numbering the ones without an index as Metal does.
// Lines are preserved, so compiler messages point at the shader's own file:line.
#pragma once
#include <string>
#include <vector>

#include "runtime/constants.hpp"

namespace aproto::host {

// The C++ translation unit of `function`. `source` is the include-resolved text (runtime/source.hpp);
// `source_name` names it in messages until its first #line. Throws CompileError ("file:line: ...").
// `table_functions` are the functions a visible_function_table may hold (PipelineSpec::table_functions):
// the entry point exports their addresses, declared by then (host/link.cpp puts its glue before it).
std::string translate(const std::string& source, const std::string& function, const Constants& constants,
                      const std::string& source_name, const std::vector<std::string>& table_functions = {});

// The C++ of a library linked into another kernel's pipeline (no entry point, no #include of the
// emulation header): its functions, every kernel body dropped.
std::string translate_library(const std::string& source, const std::string& source_name);

// A function declared for linking: a [[visible]] or [[stitchable]] definition a library publishes, or an
// `extern` declaration (or a [[visible]] one without a body) that pipeline creation must resolve.
struct LinkFunction {
  std::string name;
  std::string attribute;            // "visible", "stitchable" or "extern"
  std::string result;               // return type, address spaces removed ("float")
  std::vector<std::string> params;  // parameter types, the same way ("float", "uint", "const float*")
  std::string where;                // "file:line" of its name
};
// Every such function of an include-resolved source, in source order. Throws CompileError.
std::vector<LinkFunction> link_functions(const std::string& source, const std::string& source_name);

// One parameter of a kernel as the entry point binds it.
struct KernelParameter {
  std::string type;           // C++ type text, address spaces removed, template arguments in ("const float*")
  std::string name;
  std::string attr;           // "buffer", "threadgroup", or a thread-position attribute
  std::string arg;            // the attribute's argument ("0"); implicit indices numbered as Metal numbers them
  std::string address_space;  // as declared: "device", "constant", "threadgroup", or "" (a position)
  std::string condition;      // [[function_constant(c)]]: the parameter exists only when c is true, else ""
  int line = 0;
};

// The parameters of kernel `function` (a published host_name or a plain kernel name) in declaration
// order (parse only, no translation); the runtime checks call arguments against them on every backend.
// `source` is include-resolved, as for translate(). Throws CompileError.
std::vector<KernelParameter> kernel_parameters(const std::string& source, const std::string& function,
                                               const std::string& source_name);

// Every kernel name the source publishes, template instances under their host names, in source order.
std::vector<std::string> kernel_names(const std::string& source, const std::string& source_name);

}  // namespace aproto::host
