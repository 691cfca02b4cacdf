#include "host/translate.hpp"

#include <cctype>
#include <cstdlib>
#include <map>
#include <set>
#include <vector>

#include "runtime/errors.hpp"

namespace aproto::host {

namespace {

// ---------------------------------------------------------------------------------------- lexer
enum class Kind { Space, Ident, Number, String, Punct, Directive };

struct Token {
  Kind kind;
  std::string text;  // as written; every structural check reads this
  std::string file;  // logical position (after #line), for messages
  int line;
  std::string out;        // what the translation emits for this token
  bool consumed = false;  // part of a span a rewrite already replaced
};

std::vector<Token> lex(const std::string& src, const std::string& default_file) {
  std::vector<Token> out;
  std::string file = default_file;
  int line = 1;
  size_t i = 0, n = src.size();
  bool line_start = true;
  auto push = [&](Kind k, size_t from, size_t to) { out.push_back({k, src.substr(from, to - from), file, line}); };
  while (i < n) {
    char c = src[i];
    size_t start = i;
    if (c == '\n') {
      i++;
      push(Kind::Space, start, i);
      line++;
      line_start = true;
      continue;
    }
    if (std::isspace((unsigned char)c)) {
      while (i < n && src[i] != '\n' && std::isspace((unsigned char)src[i])) i++;
      push(Kind::Space, start, i);
      continue;
    }
    if (c == '/' && i + 1 < n && src[i + 1] == '/') {  // comment -> spaces
      while (i < n && src[i] != '\n') i++;
      out.push_back({Kind::Space, " ", file, line});
      continue;
    }
    if (c == '/' && i + 1 < n && src[i + 1] == '*') {
      size_t end = src.find("*/", i + 2);
      end = end == std::string::npos ? n : end + 2;
      std::string keep;  // keep the newlines so line numbers survive
      for (size_t k = i; k < end; k++)
        if (src[k] == '\n') keep += '\n';
      out.push_back({Kind::Space, keep.empty() ? " " : keep, file, line});
      for (char k : keep) line += (k == '\n');
      i = end;
      if (!keep.empty()) line_start = true;
      continue;
    }
    if (c == '#' && line_start) {  // a whole preprocessor line, with continuations
      while (i < n && src[i] != '\n') {
        if (src[i] == '\\' && i + 1 < n && src[i + 1] == '\n') { i += 2; line++; continue; }
        i++;
      }
      std::string text = src.substr(start, i - start);
      push(Kind::Directive, start, i);
      // "#line N "file"": the line after it is line N of that file
      size_t p = text.find_first_not_of(" \t", 1);
      if (p != std::string::npos && text.compare(p, 4, "line") == 0) {
        int next = std::atoi(text.c_str() + p + 4);
        size_t q1 = text.find('"'), q2 = text.rfind('"');
        if (q1 != std::string::npos && q2 > q1) file = text.substr(q1 + 1, q2 - q1 - 1);
        if (i < n) {  // consume the newline under the new numbering
          out.push_back({Kind::Space, "\n", file, next - 1});
          i++;
        }
        line = next;
        line_start = true;
      }
      continue;
    }
    line_start = false;
    if (std::isalpha((unsigned char)c) || c == '_') {
      while (i < n && (std::isalnum((unsigned char)src[i]) || src[i] == '_')) i++;
      push(Kind::Ident, start, i);
      continue;
    }
    if (std::isdigit((unsigned char)c) || (c == '.' && i + 1 < n && std::isdigit((unsigned char)src[i + 1]))) {
      while (i < n) {  // pp-number: digits, letters, '.', and a sign right after an exponent letter
        char d = src[i];
        char prev = src[i - 1];
        bool exponent_sign = (d == '+' || d == '-') && (prev == 'e' || prev == 'E' || prev == 'p' || prev == 'P');
        if (exponent_sign || std::isalnum((unsigned char)d) || d == '.' || d == '_' || d == '\'') { i++; continue; }
        break;
      }
      push(Kind::Number, start, i);
      continue;
    }
    if (c == '"' || c == '\'') {
      i++;
      while (i < n && src[i] != c) i += (src[i] == '\\') ? 2 : 1;
      i = std::min(n, i + 1);
      push(Kind::String, start, i);
      continue;
    }
    if ((c == ':' && i + 1 < n && src[i + 1] == ':') || (c == '-' && i + 1 < n && src[i + 1] == '>')) {
      i += 2;
      push(Kind::Punct, start, i);
      continue;
    }
    i++;
    push(Kind::Punct, start, i);
  }
  for (Token& t : out) t.out = t.text;
  return out;
}

// ---------------------------------------------------------------------------------------- helpers
const std::set<std::string>& vector_types() {
  static const std::set<std::string> names = [] {
    std::set<std::string> s;
    for (const char* base : {"float", "half", "bfloat", "int", "uint", "short", "ushort", "char", "uchar", "bool",
                             "long", "ulong"})
      for (int n = 2; n <= 4; n++) s.insert(std::string(base) + std::to_string(n));
    return s;
  }();
  return names;
}

const std::set<std::string>& scalar_types() {
  static const std::set<std::string> names = {"float", "half", "bfloat", "int", "uint", "short", "ushort",
                                              "char", "uchar", "bool", "long", "ulong"};
  return names;
}

// 1.0h, 2h, 1e-3h -> half(...); any other number unchanged.
std::string half_literal(const std::string& w) {
  char last = w.back();
  bool hex = w.size() > 1 && w[0] == '0' && (w[1] == 'x' || w[1] == 'X');
  return (last == 'h' || last == 'H') && !hex ? "half(" + w.substr(0, w.size() - 1) + ")" : w;
}

const std::map<std::string, std::string>& position_attributes() {
  static const std::map<std::string, std::string> m = {
      {"threadgroup_position_in_grid", "threadgroup_position_in_grid"},
      {"thread_position_in_threadgroup", "thread_position_in_threadgroup"},
      {"thread_position_in_grid", "thread_position_in_grid"},
      {"threads_per_threadgroup", "threads_per_threadgroup"},
      {"dispatch_threads_per_threadgroup", "threads_per_threadgroup"},
      {"threadgroups_per_grid", "threadgroups_per_grid"},
      {"threads_per_grid", "threads_per_grid"},
      {"thread_index_in_threadgroup", "thread_index_in_threadgroup"},
      {"thread_index_in_simdgroup", "thread_index_in_simdgroup"},
      {"simdgroup_index_in_threadgroup", "simdgroup_index_in_threadgroup"},
      {"simdgroups_per_threadgroup", "simdgroups_per_threadgroup"},
      {"dispatch_simdgroups_per_threadgroup", "simdgroups_per_threadgroup"},
      {"threads_per_simdgroup", "threads_per_simdgroup"},
      {"thread_execution_width", "threads_per_simdgroup"},
      {"thread_index_in_quadgroup", "thread_index_in_quadgroup"},
      {"quadgroup_index_in_threadgroup", "quadgroup_index_in_threadgroup"},
      {"quadgroups_per_threadgroup", "quadgroups_per_threadgroup"},
  };
  return m;
}

const std::set<std::string>& dropped_qualifiers() {
  static const std::set<std::string> s = {"device", "thread", "threadgroup", "threadgroup_imageblock",
                                          "ray_data", "object_data", "kernel"};
  return s;
}

class Translator {
 public:
  Translator(const std::string& source, const std::string& function, const Constants& constants,
             const std::string& name)
      : t_(lex(source, name)), function_(function), constants_(constants), name_(name) {
    for (size_t i = 0; i < t_.size(); i++)
      if (t_[i].kind != Kind::Space && t_[i].kind != Kind::Directive) sig_.push_back(i);
  }

  std::vector<KernelParameter> parameters() {
    find_kernels();
    parse_kernel_params();
    return params_;
  }

  std::string run() {
    find_kernels();
    parse_kernel_params();
    rewrite_function_constants();
    // The other kernels of the file are never called from this one: leaving them out halves the
    // compile time of a file with a kernel per dtype.
    for (auto [from, to] : other_kernels_) blank(from, to, "");
    rewrite_threadgroup_declarations();
    drop_attributes();
    rewrite_qualifiers_and_conversions();
    std::string out = "#include \"aproto_metal.hpp\"\n";
    for (const auto& tok : t_) out += tok.out;
    return out + entry_point();
  }

 private:
  std::vector<Token> t_;
  std::vector<size_t> sig_;  // indices of significant tokens
  std::string function_;
  const Constants& constants_;
  std::string name_;
  std::vector<KernelParameter> params_;
  std::vector<std::pair<size_t, size_t>> other_kernel_bodies_;  // sig ranges of their { ... }
  std::vector<std::pair<size_t, size_t>> other_kernels_;        // sig ranges, from `kernel` to '}' 
  std::vector<std::string> kernel_names_;
  size_t params_open_ = 0, params_close_ = 0;  // sig positions of the target's ( )
  uint32_t threadgroup_sites_ = 0;
  unsigned long max_threads_ = 0;  // [[max_total_threads_per_threadgroup(n)]], 0 if absent

  const Token& s(size_t k) const { return t_[sig_[k]]; }
  Token& sm(size_t k) { return t_[sig_[k]]; }
  bool is(size_t k, const char* text) const { return k < sig_.size() && s(k).text == text; }

  [[noreturn]] void error(size_t k, const std::string& what) const {
    const Token& tok = s(std::min(k, sig_.size() - 1));
    throw CompileError(tok.file + ":" + std::to_string(tok.line) + ": error: " + what);
  }

  // Matching closer of the bracket at sig position k.
  size_t match(size_t k) const {
    const std::string open = s(k).text;
    const std::string close = open == "(" ? ")" : open == "[" ? "]" : open == "{" ? "}" : ">";
    int depth = 0;
    for (size_t j = k; j < sig_.size(); j++) {
      if (s(j).text == open) depth++;
      else if (s(j).text == close && --depth == 0) return j;
    }
    error(k, "unbalanced '" + open + "'");
  }

  // Replaces the output of tokens [from, to] (sig positions), keeping their newlines. The tokens keep
  // their original text for later structural checks but are marked consumed, so no later rewrite
  // touches them again.
  void blank(size_t from, size_t to, const std::string& replacement) {
    std::string newlines;
    for (size_t i = sig_[from]; i <= sig_[to]; i++) {
      for (char c : t_[i].out)
        if (c == '\n') newlines += '\n';
      t_[i].out.clear();
      t_[i].consumed = true;
    }
    t_[sig_[from]].out = replacement + newlines;
  }
  bool consumed(size_t from, size_t to) const {
    for (size_t k = from; k <= to; k++)
      if (s(k).consumed) return true;
    return false;
  }

  // Is sig position k the `]]` closing an attribute list starting at `[[`? Returns the `[[` position.
  bool attribute_before(size_t k, size_t& start) const {
    if (!(is(k, "]") && k > 0 && is(k - 1, "]"))) return false;
    int depth = 0;
    for (size_t j = k + 1; j-- > 0;) {
      if (s(j).text == "]") depth++;
      else if (s(j).text == "[" && --depth == 0) {
        if (!is(j + 1, "[")) return false;
        start = j;
        return true;
      }
    }
    return false;
  }

  // kernel void NAME ( ... ) { ... }   or   [[kernel]] void NAME ( ... ) { ... }
  void find_kernels() {
    bool found = false;
    for (size_t k = 0; k + 2 < sig_.size(); k++) {
      bool kw = s(k).text == "kernel" && s(k).kind == Kind::Ident;
      bool attr = s(k).text == "kernel" && k >= 2 && is(k - 1, "[") && is(k - 2, "[") && is(k + 1, "]");
      if (!kw && !attr) continue;
      size_t v = attr ? k + 3 : k + 1;
      if (!is(v, "void") || v + 2 >= sig_.size() || s(v + 1).kind != Kind::Ident || !is(v + 2, "(")) continue;
      size_t close = match(v + 2);
      size_t body = close + 1;
      while (body < sig_.size() && !is(body, "{") && !is(body, ";")) body++;
      if (!is(body, "{")) continue;
      kernel_names_.push_back(s(v + 1).text);
      if (s(v + 1).text == function_) {
        found = true;
        params_open_ = v + 2;
        params_close_ = close;
        // [[max_total_threads_per_threadgroup(n)]] before the function
        size_t end = attr ? k - 2 : k, start;
        while (end > 0 && attribute_before(end - 1, start)) {
          for (size_t j = start + 2; j + 2 < end - 1; j++)
            if (s(j).text == "max_total_threads_per_threadgroup" && is(j + 1, "("))
              max_threads_ = std::strtoul(s(j + 2).text.c_str(), nullptr, 0);
          end = start;
        }
      } else {
        other_kernel_bodies_.push_back({body, match(body)});
        other_kernels_.push_back({attr ? k - 2 : k, match(body)});
      }
    }
    if (!found) {
      std::string names;
      for (const auto& k : kernel_names_) names += (names.empty() ? "" : ", ") + k;
      throw CompileError(name_ + ": error: kernel function '" + function_ + "' not found" +
                         (names.empty() ? " (the source declares no kernel)" : " (kernels here: " + names + ")"));
    }
  }

  std::string type_text(size_t from, size_t to) const {  // sig range [from, to)
    std::string out;
    for (size_t k = from; k < to; k++) {
      const std::string& w = s(k).text;
      if (dropped_qualifiers().count(w)) continue;
      std::string piece = w == "constant" ? "const" : w;
      if (piece == "const" && out.size() >= 6 && out.compare(out.size() - 6, 6, "const ") == 0) continue;
      bool glue = piece == "*" || piece == "&" || piece == "," || piece == ">" || piece == "::" ||
                  (!out.empty() && (out.back() == '<' || out.back() == ':'));
      if (!out.empty() && !glue) out += " ";
      out += piece;
      if (piece == ",") out += " ";
    }
    return out;
  }

  void parse_kernel_params() {
    size_t k = params_open_ + 1;
    while (k < params_close_) {
      size_t end = k;
      int depth = 0;
      while (end < params_close_) {
        const std::string& w = s(end).text;
        if (w == "(" || w == "[" || w == "<") depth++;
        else if (w == ")" || w == "]" || w == ">") depth--;
        else if (w == "," && depth == 0) break;
        end++;
      }
      if (end == k) error(k, "empty kernel parameter");
      KernelParameter p;
      p.line = s(k).line;
      for (size_t j = k; j < end; j++)
        if (s(j).text == "device" || s(j).text == "constant" || s(j).text == "threadgroup") p.address_space = s(j).text;
      size_t last = end - 1, decl_end = end;
      size_t attr_start;
      if (attribute_before(last, attr_start)) {
        decl_end = attr_start;
        size_t a = attr_start + 2;
        p.attr = s(a).text;
        if (is(a + 1, "(")) {
          size_t c = match(a + 1);
          for (size_t j = a + 2; j < c; j++) p.arg += s(j).text;
        }
      }
      if (decl_end == k || s(decl_end - 1).kind != Kind::Ident) error(k, "cannot read this kernel parameter");
      p.name = s(decl_end - 1).text;
      p.type = type_text(k, decl_end - 1);
      if (p.attr.empty()) error(k, "kernel parameter '" + p.name + "' has no attribute ([[buffer(n)]], ...)");
      if (p.attr != "buffer" && p.attr != "threadgroup" && !position_attributes().count(p.attr))
        error(k, "kernel parameter '" + p.name + "': [[" + p.attr + "]] is not supported by the host backend");
      if ((p.attr == "buffer" || p.attr == "threadgroup") &&
          (p.type.empty() || (p.type.back() != '*' && p.type.back() != '&')))
        error(k, "kernel parameter '" + p.name + "': a [[" + p.attr + "]] parameter must be a pointer or reference");
      params_.push_back(p);
      k = end + 1;
    }
  }

  bool inside_other_kernel(size_t k) const {
    for (auto& [a, b] : other_kernel_bodies_)
      if (k > a && k < b) return true;
    return false;
  }

  // constant T NAME [[function_constant(i)]];
  void rewrite_function_constants() {
    std::set<std::string> queried;  // names passed to is_function_constant_defined
    for (size_t k = 0; k + 3 < sig_.size(); k++)
      if (s(k).text == "is_function_constant_defined" && is(k + 1, "(")) queried.insert(s(k + 2).text);
    std::set<std::string> used_keys;
    std::vector<std::string> declared;
    for (size_t k = 0; k + 6 < sig_.size(); k++) {
      if (!(s(k).text == "function_constant" && k >= 3 && is(k - 1, "[") && is(k - 2, "["))) continue;
      size_t name_pos = k - 3;
      size_t start = name_pos;
      while (start > 0 && s(start - 1).text != "constant") start--;
      if (start == 0) error(k, "function constant without `constant`");
      start--;
      std::string type = type_text(start + 1, name_pos);
      if (type.rfind("const ", 0) == 0) type = type.substr(6);  // `constant const T` is still T
      std::string name = s(name_pos).text;
      if (!is(k + 1, "(")) error(k, "expected function_constant(index)");
      size_t close = match(k + 1);
      std::string index;
      for (size_t j = k + 2; j < close; j++) index += s(j).text;
      size_t semi = close + 1;
      while (semi < sig_.size() && !is(semi, ";")) semi++;
      declared.push_back(name + " (" + index + ")");
      const ConstantValue* value = nullptr;
      auto by_name = constants_.find(name);
      auto by_index = constants_.find("#" + index);
      if (by_name != constants_.end()) { value = &by_name->second; used_keys.insert(name); }
      else if (by_index != constants_.end()) { value = &by_index->second; used_keys.insert("#" + index); }
      std::string repl;
      const bool real_type = type == "float" || type == "half" || type == "bfloat";
      if (value && value->type == ConstantValue::Type::Float && !real_type && type != "bool")
        error(name_pos, "function constant '" + name + "' is declared '" + type + "' but was given a float");
      // A value, not a constant expression: Metal compiles the library before the values exist, so
      // a function constant (or a constant computed from one) cannot size an array there, and must
      // not here either. The optimiser still folds the value into the code.
      const std::string init = "::aproto_rt::function_constant<" + type + ">(static_cast<" + type + ">(";
      if (value) {
        repl = "static const " + type + " " + name + " = " + init + value->literal() + ")); " +
               "static constexpr bool " + name + "__aproto_defined = true;";
      } else {
        bool used_by_target = false;
        for (size_t j = 0; j < sig_.size() && !used_by_target; j++)
          used_by_target = j != name_pos && s(j).text == name && !inside_other_kernel(j) &&
                           !(j >= 2 && s(j - 2).text == "is_function_constant_defined");
        if (used_by_target && !queried.count(name))
          error(name_pos, "function constant '" + name + "' (index " + index + ") has no value: pass constants={'" +
                              name + "': ...} (kernel '" + function_ + "' uses it)");
        repl = "static const " + type + " " + name + " = " + init + "0)); " + "static constexpr bool " + name +
               "__aproto_defined = false;";
      }
      blank(start, semi, repl);
    }
    for (const auto& [key, value] : constants_) {
      if (used_keys.count(key)) continue;
      std::string list;
      for (const auto& d : declared) list += (list.empty() ? "" : ", ") + d;
      throw CompileError(name_ + ": error: constant '" + key + "' was given but the source declares no such " +
                         "function constant (declared: " + (list.empty() ? "none" : list) + ")");
    }
    for (size_t k = 0; k + 3 < sig_.size(); k++)
      if (s(k).text == "is_function_constant_defined" && is(k + 1, "(") && is(k + 3, ")") && !consumed(k, k + 3))
        blank(k, k + 3, s(k + 2).text + "__aproto_defined");
  }

  // The end (`;`) of the statement starting at sig position k, counting only ()[]{} as brackets
  // (`<` may be a comparison or a shift in an array size).
  size_t statement_end(size_t k) const {
    int depth = 0;
    for (size_t j = k; j < sig_.size(); j++) {
      const std::string& w = s(j).text;
      if (w == "(" || w == "[" || w == "{") depth++;
      else if (w == ")" || w == "]" || w == "}") depth--;
      else if (depth == 0 && w == ";") return j;
      if (depth < 0) break;
    }
    error(k, "cannot find the end of this declaration");
  }

  // threadgroup T a[..], b[..];   a declaration of threadgroup storage (not a pointer to it)
  void rewrite_threadgroup_declarations() {
    for (size_t k = 0; k < sig_.size(); k++) {
      if (s(k).text != "threadgroup" || s(k).kind != Kind::Ident || s(k).consumed) continue;
      size_t first = k;  // `volatile threadgroup T x[..]`: qualifiers before the address space
      while (first > 0 && (is(first - 1, "volatile") || is(first - 1, "const"))) first--;
      const std::string before = first > 0 ? s(first - 1).text : ";";
      // a parameter, cast, template argument, or the [[threadgroup(n)]] attribute
      if (before == "(" || before == "," || before == "<" || before == "[") continue;
      // `threadgroup T* ...` / `threadgroup T& ...` (a return or variable type): only the qualifier goes
      size_t t = k + 1;
      while (t < sig_.size() && (s(t).kind == Kind::Ident || is(t, "::"))) {
        t++;
        if (is(t, "<")) t = match(t) + 1;
      }
      if (is(t, "*") || is(t, "&")) continue;
      const bool statement_start = before == ";" || before == "{" || before == "}" || before == ":" || before == "]";
      size_t semi = statement_end(k);
      bool pointer = false;
      int depth = 0;
      for (size_t j = k + 1; j < semi; j++) {
        const std::string& w = s(j).text;
        if (w == "(" || w == "[" || w == "{") depth++;
        else if (w == ")" || w == "]" || w == "}") depth--;
        else if (depth == 0 && (w == "*" || w == "&")) pointer = true;
      }
      if (pointer) continue;  // `threadgroup float* p = ...`: only the qualifier goes (later)
      if (!statement_start)
        error(k, "the host backend cannot translate this threadgroup declaration; declare threadgroup "
                 "variables as statements of their own (`threadgroup T name[N];`)");
      // split into declarators at top-level commas; the first one carries the type
      std::vector<std::pair<size_t, size_t>> decls;
      size_t from = k + 1;
      depth = 0;
      for (size_t j = k + 1; j <= semi; j++) {
        const std::string& w = s(j).text;
        if (w == "(" || w == "[" || w == "{") depth++;
        else if (w == ")" || w == "]" || w == "}") depth--;
        if (j == semi || (depth == 0 && w == ",")) { decls.push_back({from, j}); from = j + 1; }
      }
      std::string qualifiers = type_text(first, k), type, out;
      for (size_t d = 0; d < decls.size(); d++) {
        auto [a, b] = decls[d];
        size_t dims = a;
        int angle = 0;
        while (dims < b && !(angle == 0 && is(dims, "["))) {
          if (is(dims, "<")) angle++;
          else if (is(dims, ">")) angle--;
          else if (is(dims, "=")) error(dims, "a threadgroup variable cannot have an initializer");
          dims++;
        }
        for (size_t j = dims; j < b; j++)
          if (is(j, "=")) error(j, "a threadgroup variable cannot have an initializer");
        if (dims == a || s(dims - 1).kind != Kind::Ident) error(a, "cannot read this threadgroup declaration");
        std::string name = s(dims - 1).text;
        if (d == 0) type = (qualifiers.empty() ? "" : qualifiers + " ") + type_text(a, dims - 1);
        std::string dim_text;
        for (size_t j = dims; j < b; j++) dim_text += s(j).text;
        out += "auto& " + name + " = ::aproto_rt::threadgroup_variable<" + type + dim_text + ">(" +
               std::to_string(threadgroup_sites_++) + "u, \"" + name + "\");";
      }
      blank(first, semi, out);
      k = semi;
    }
  }

  void drop_attributes() {
    for (size_t k = 0; k + 1 < sig_.size(); k++) {
      if (!(is(k, "[") && is(k + 1, "[")) || s(k).consumed) continue;
      // `a[[`-style lambdas do not occur in MSL; `[[` always opens an attribute list here
      size_t close = match(k + 1);
      if (!is(close + 1, "]")) continue;
      blank(k, close + 1, "");
      k = close + 1;
    }
  }

  bool is_vector_cast(size_t k) const {  // `( float4 )` with the type at sig position k
    return k > 0 && is(k - 1, "(") && is(k + 1, ")") && vector_types().count(s(k).text);
  }

  // End (exclusive, sig position) of the operand of a C-style cast starting at k: prefix operators
  // and nested casts, a primary expression, then postfix operators. 0 when it is no operand.
  size_t cast_operand_end(size_t k) const {
    while (k < sig_.size()) {
      if (is(k, "-") || is(k, "+") || is(k, "!") || is(k, "~") || is(k, "*") || is(k, "&")) k++;
      else if (k + 2 < sig_.size() && is(k, "(") && is(k + 2, ")") && s(k + 1).kind == Kind::Ident &&
               (vector_types().count(s(k + 1).text) || scalar_types().count(s(k + 1).text)) &&
               !is(k + 3, ";") && !is(k + 3, ")") && !is(k + 3, ","))
        k += 3;  // a nested cast
      else break;
    }
    if (k >= sig_.size()) return 0;
    if (is(k, "(")) k = match(k) + 1;
    else if (s(k).kind == Kind::Ident || s(k).kind == Kind::Number) k++;
    else return 0;
    while (k < sig_.size()) {
      if (is(k, "(") || is(k, "[")) k = match(k) + 1;
      else if ((is(k, ".") || is(k, "->")) && k + 1 < sig_.size() && s(k + 1).kind == Kind::Ident) k += 2;
      else if (is(k, "::") && k + 1 < sig_.size() && s(k + 1).kind == Kind::Ident) k += 2;
      else if ((is(k, "+") && is(k + 1, "+")) || (is(k, "-") && is(k + 1, "-"))) k += 2;
      else break;
    }
    return k;
  }

  // MSL converts a `bool4` (a vector comparison) to 1 / 0; clang's vector comparisons give -1 / 0
  // integer vectors. An argument (between open and close) that is a comparison, and not the condition
  // of a ?:, is refused rather than converted to -1.
  void reject_comparison(size_t open, size_t close, const std::string& what) const {
    int depth = 0;
    bool compare = false, ternary = false;
    for (size_t j = open + 1; j <= close; j++) {
      if (j == close || (depth == 0 && s(j).text == ",")) {
        if (compare && !ternary)
          error(open, what + " of a comparison: the host backend's vector comparisons give integer vectors "
                      "(-1 / 0), not MSL's bool vectors (1 / 0); use select(a, b, cond) instead");
        compare = ternary = false;
        continue;
      }
      const std::string& w = s(j).text;
      if (w == "(" || w == "[") depth++;
      else if (w == ")" || w == "]") depth--;
      if (depth != 0) continue;
      if (w == "?") ternary = true;
      const bool shift = (w == "<" && (is(j + 1, "<") || is(j - 1, "<"))) || (w == ">" && (is(j + 1, ">") || is(j - 1, ">")));
      if (((w == "<" || w == ">") && !shift) || (w == "=" && (is(j - 1, "=") || is(j - 1, "!")))) compare = true;
    }
  }

  void rewrite_qualifiers_and_conversions() {
    for (size_t k = 0; k < sig_.size(); k++) {
      Token& tok = sm(k);
      if (tok.consumed) continue;
      if (tok.kind == Kind::Ident && dropped_qualifiers().count(tok.text)) {
        tok.out = "";
      } else if (tok.kind == Kind::Ident && tok.text == "constant") {
        bool beside_const = (k > 0 && s(k - 1).text == "const") || (k + 1 < sig_.size() && s(k + 1).text == "const");
        tok.out = beside_const ? "" : "const";
      } else if (tok.kind == Kind::Number) {
        tok.out = half_literal(tok.text);
      } else if (tok.kind == Kind::Ident && vector_types().count(tok.text)) {
        if (is(k + 1, "(") && !(k > 0 && (is(k - 1, "operator")))) {
          reject_comparison(k + 1, match(k + 1), tok.text + "(...)");
          tok.out = "::metal::vmake<" + tok.text + ">";  // float4(...) constructor
        } else if (is_vector_cast(k) && !consumed(k - 1, k + 1) &&
                   !(k > 1 && (is(k - 2, "sizeof") || is(k - 2, "alignof") || is(k - 2, "decltype")))) {
          // (float4)x converts in MSL but bit-casts clang vectors: -> convert<float4>(x)
          const size_t end = cast_operand_end(k + 2);
          if (end == 0) continue;  // not a cast: e.g. a parameter list `(float4)`
          reject_comparison(k + 1, end, "(" + tok.text + ")");
          blank(k - 1, k + 1, "::metal::convert<" + s(k).text + ">(");
          sm(end - 1).out += ")";
        } else if (k >= 2 && is(k - 1, "<") && s(k - 2).text == "static_cast" && is(k + 1, ">") &&
                   !consumed(k - 2, k + 1)) {
          blank(k - 2, k + 1, "::metal::convert<" + s(k).text + ">");  // static_cast<float4>(x)
        }
      }
    }
    for (Token& tok : t_)
      if (tok.kind == Kind::Directive) tok.out = rewrite_macro(tok);
  }

  // `#define` bodies get the constructor and half-literal rewrites too; a vector C-style cast in a
  // macro cannot be rewritten safely (its operand is only known where the macro is used).
  std::string rewrite_macro(const Token& directive) const {
    const std::string& text = directive.text;
    size_t p = text.find_first_not_of(" \t", 1);
    if (p == std::string::npos || text.compare(p, 6, "define") != 0) return directive.out;
    std::vector<Token> body = lex(" " + text.substr(p + 6), directive.file);
    std::string out = text.substr(0, p + 6);
    for (size_t i = 0; i < body.size(); i++) {
      const Token& t = body[i];
      std::string piece = t.text;
      if (t.kind == Kind::Number) {
        piece = half_literal(t.text);
      } else if (t.kind == Kind::Ident && vector_types().count(t.text)) {
        size_t next = i + 1, prev = i;
        while (next < body.size() && body[next].kind == Kind::Space) next++;
        while (prev > 0 && body[prev - 1].kind == Kind::Space) prev--;
        bool open_after = next < body.size() && body[next].text == "(";
        bool in_parens = prev > 0 && body[prev - 1].text == "(" && next < body.size() && body[next].text == ")";
        if (in_parens)
          throw CompileError(directive.file + ":" + std::to_string(directive.line) + ": error: a (" + t.text +
                             ") cast inside #define cannot be translated by the host backend; write " + t.text +
                             "(x) or convert where the macro is used");
        if (open_after) piece = "::metal::vmake<" + t.text + ">";
      }
      out += piece;
    }
    return out;
  }

  std::string entry_point() const {
    std::string buffers, tg_args, args;
    uint32_t n_buffers = 0, n_tg = 0;
    for (const auto& p : params_) {
      if (!args.empty()) args += ",\n      ";
      if (p.attr == "buffer") {
        std::string base = p.type.substr(0, p.type.size() - 1);
        bool ref = p.type.back() == '&';
        bool readonly = base.find("const") != std::string::npos;
        args += ref ? "*(" + base + "*)aproto_b_[" + p.arg + "]" : "(" + p.type + ")aproto_b_[" + p.arg + "]";
        buffers += "  {" + p.arg + "u, \"" + p.name + "\", \"" + p.type + "\", " +
                   (ref ? "sizeof(" + base + ")" : std::string("0")) + ", ::aproto_rt::align_of<" + base + ">(), " +
                   (readonly ? "1" : "0") + "},\n";
        n_buffers++;
      } else if (p.attr == "threadgroup") {
        args += "(" + p.type + ")::aproto_rt::threadgroup_argument(" + p.arg + ")";
        tg_args += p.arg + "u, ";
        n_tg++;
      } else {
        args += "::aproto_rt::position<" + p.type + ">(aproto_pos_." + position_attributes().at(p.attr) + ")";
      }
    }
    std::string out = "\n// ---- generated by attention_proto's host backend\nnamespace {\n";
    if (n_buffers) out += "const aproto_buffer_desc aproto_buffers_[] = {\n" + buffers + "};\n";
    if (n_tg) out += "const uint32_t aproto_threadgroup_args_[] = {" + tg_args + "};\n";
    out += "void aproto_run_thread_(void* const* aproto_b_) {\n  (void)aproto_b_;\n"
           "  const aproto_thread_pos& aproto_pos_ = ::aproto_rt::pos();\n  (void)aproto_pos_;\n  " + function_ + "(" + args + ");\n}\n";
    out += "void aproto_bind_(const aproto_runtime* rt) { ::aproto_rt::g_rt = rt; }\n}  // namespace\n";
    out += "extern \"C\" __attribute__((visibility(\"default\"))) const aproto_kernel_desc aproto_kernel = {\n"
           "  APROTO_ABI_VERSION, \"" + function_ + "\", " + std::to_string(max_threads_) + "u, " +
           std::to_string(n_buffers) + "u, " +
           (n_buffers ? "aproto_buffers_" : "nullptr") + ", " + std::to_string(n_tg) + "u, " +
           (n_tg ? "aproto_threadgroup_args_" : "nullptr") + ", aproto_bind_, aproto_run_thread_};\n";
    return out;
  }
};

}  // namespace

std::vector<KernelParameter> kernel_parameters(const std::string& source, const std::string& function,
                                               const std::string& source_name) {
  return Translator(source, function, {}, source_name).parameters();
}

std::string translate(const std::string& source, const std::string& function, const Constants& constants,
                      const std::string& source_name) {
  return Translator(source, function, constants, source_name).run();
}

}  // namespace aproto::host
