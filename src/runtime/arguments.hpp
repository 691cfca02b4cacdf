// A kernel's declared parameters (ArgumentInfo), read from its source the same way on every backend,
// and the checks of a dispatch's buffers against them.
#pragma once
#include <string>
#include <vector>

#include "runtime/backend.hpp"

namespace aproto {

// The parameters of `function` in the resolved source `text` (parsed by the host translator's front
// end, which the Metal backend shares so both backends see one signature). A parameter declared under
// `[[function_constant(c)]]` exists only when `constants` make c true, as in Metal. Throws CompileError.
std::vector<ArgumentInfo> kernel_arguments(const std::string& text, const std::string& function,
                                           const std::string& path, const Constants& constants);

// The numpy dtype name of an MSL element type ("float" -> "float32", "half4" -> "float16",
// "atomic_uint" -> "uint32"), or "" for types without one (structs, void, templates).
std::string numpy_dtype_of(const std::string& element);

// Is a kernel parameter of this type (as ArgumentInfo::type spells it) a visible_function_table?
bool is_function_table_type(const std::string& type);

// Checks `buffers` against the kernel's buffer parameters (see validate_dispatch). `who` starts
// messages, e.g. "[host] kernel 'gemm'".
void validate_buffers(const std::string& who, const std::vector<ArgumentInfo>& arguments,
                      const std::vector<BufferArg>& buffers);

}  // namespace aproto
