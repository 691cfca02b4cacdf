// MSL source handling shared by both backends.
#pragma once
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

}  // namespace aproto
