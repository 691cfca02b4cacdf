// The lexer and the preprocessor of the host backend's MSL front end (src/host/translate.cpp).
//
// The translator reads a kernel source as tokens. Real MSL hides much of its structure in macros:
// MLX publishes its template instances through `instantiate_kernel(...)`, llama.cpp names function
// constants through `#define FC_OP ...`, headers pick code paths with `#if __METAL_VERSION__ >= 320`.
// So the translator first runs the preprocessor's macro and conditional parts itself, with Metal's
// predefined macros, and then sees what Metal's compiler sees. `#include <...>` and `#pragma` lines
// stay for clang; quoted includes are already resolved (runtime/source.hpp).
#pragma once
#include <string>
#include <vector>

namespace aproto::host {

enum class Kind { Space, Ident, Number, String, Punct, Directive };

struct Token {
  Kind kind;
  std::string text;  // as written; every structural check reads this
  std::string file;  // logical position (after #line), for messages; a macro's tokens take its use's
  int line;
  std::string out;        // what the translation emits for this token
  bool consumed = false;  // part of a span a rewrite already replaced
};

// Tokens of `src`; comments become spaces (keeping their newlines), a preprocessor line is one
// Directive token, and `#line N "file"` renumbers what follows.
std::vector<Token> lex(const std::string& src, const std::string& default_file);

// The macro language of the C++ preprocessor run over lexed tokens: #define / #undef, function-like
// macros with #, ## and __VA_ARGS__, #if / #ifdef / #elif / #else / #endif, #error, and Metal's
// predefined macros (__METAL_VERSION__ 320, __METAL__, __METAL_MACOS__, __HAVE_BFLOAT__). Directives it handles
// and inactive lines become newlines, so lines keep their numbers. Throws CompileError.
std::vector<Token> preprocess(const std::vector<Token>& tokens);

}  // namespace aproto::host
