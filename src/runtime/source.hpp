// MSL source handling shared by both backends.
#pragma once
#include <map>
#include <string>

#include "runtime/backend.hpp"

namespace aproto {

// Returns the source with every `#include "file"` replaced by that file's text (searched next to the
// including file, then in source.include_dirs), recursively, each wrapped in #line directives so
// compiler messages keep pointing at the original file:line. `#include <...>` lines are left alone.
// Metal's run-time compiler cannot see our files, and the host translator must see every line, so
// both backends compile the resolved text. Throws CompileError for a missing file or an include cycle.
std::string resolve_includes(const Source& source);

// 64-bit FNV-1a of a string, printed as 16 hex digits (cache keys).
std::string content_hash(const std::string& text);

// The function constants a (resolved) source declares, `constant T NAME [[function_constant(i)]];`,
// as NAME -> i, comments skipped.
std::map<std::string, uint32_t> declared_function_constants(const std::string& text);

// The rule both backends apply to the values of a spec, so the same call behaves the same everywhere:
// a value whose name (or "#index") no function constant of the source declares is a CompileError (a
// typo, most likely), naming the declared ones. A value for a constant the source declares but the
// function does not use is ignored, as Metal ignores it ("The compiler ignores any values that don't
// correspond to a function constant in the named function": MTLLibrary newFunctionWithName:constantValues:).
// `who` prefixes the message, e.g. "[metal] flash_attention_f16[...]".
void check_constant_names(const std::string& text, const Constants& constants, const std::string& who);

// `text` preceded by one `#define NAME VALUE` line per define and a #line directive that keeps the
// source's own line numbers (the host backend's way of passing preprocessor macros; Metal's is
// MTLCompileOptions.preprocessorMacros). Throws CompileError for a name that is not an identifier.
std::string with_defines(const std::string& text, const std::map<std::string, std::string>& defines,
                         const std::string& path);

}  // namespace aproto
