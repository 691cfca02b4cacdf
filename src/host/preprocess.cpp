#include "host/preprocess.hpp"

#include <cctype>
#include <cstdlib>
#include <deque>
#include <map>
#include <set>

#include "runtime/errors.hpp"

namespace aproto::host {

// ---------------------------------------------------------------------------------------- lexer
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

// ---------------------------------------------------------------------------------------- preprocessor
namespace {

// A token on its way through macro expansion, with the names of the macros it came from (a macro
// is not expanded again inside its own expansion: the C++ "hide set").
struct PPToken {
  Token tok;
  std::set<std::string> hide;
};

struct Macro {
  bool function = false;
  bool variadic = false;
  std::vector<std::string> params;  // __VA_ARGS__ last when variadic
  std::vector<Token> body;          // spaces collapsed to one; `##` is one token
};

bool is_space(const Token& t) { return t.kind == Kind::Space; }
int newlines_in(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}
Token space_token(const Token& at, const std::string& text) { return {Kind::Space, text, at.file, at.line, text}; }

[[noreturn]] void fail(const Token& at, const std::string& what) {
  throw CompileError(at.file + ":" + std::to_string(at.line) + ": error: " + what);
}

// The tokens of a directive's text after the `#`, continuations joined; spaces kept (they decide
// `#define F(x)` from `#define F (x)` and which `#` pairs are a `##`).
std::vector<Token> directive_tokens(const Token& d) {
  std::string text;
  for (size_t i = 0; i < d.text.size(); i++) {
    if (d.text[i] == '\\' && i + 1 < d.text.size() && d.text[i + 1] == '\n') { text += ' '; i++; continue; }
    text += d.text[i];
  }
  size_t hash = text.find('#');
  std::vector<Token> out = lex(" " + text.substr(hash + 1), d.file);
  for (Token& t : out) t.line = d.line;
  return out;
}

class Preprocessor {
 public:
  explicit Preprocessor(const std::vector<Token>& in) : in_(in) {
    define_value("__METAL__", "1");
    define_value("__METAL_VERSION__", "320");  // MSL 3.2, what Metal compiles for an M4 by default
    define_value("__METAL_MACOS__", "1");
    define_value("__HAVE_BFLOAT__", "1");
  }

  std::vector<Token> run() {
    std::deque<PPToken> queue;
    std::vector<PPToken> out;
    expand(queue, out, true);
    if (!conds_.empty()) fail(conds_.back().where, "#if without #endif");
    std::vector<Token> result;
    result.reserve(out.size());
    for (auto& p : out) result.push_back(std::move(p.tok));
    return result;
  }

 private:
  struct Cond {
    bool active;        // this branch's lines are compiled
    bool taken;         // some branch of this #if was active
    bool outer_active;  // the enclosing region is active
    bool seen_else;
    Token where;
  };
  const std::vector<Token>& in_;
  size_t pos_ = 0;
  std::map<std::string, Macro> macros_;
  std::vector<Cond> conds_;

  bool active() const { return conds_.empty() || conds_.back().active; }

  void define_value(const std::string& name, const std::string& value) {
    Macro m;
    m.body = lex(value, "<predefined>");
    macros_[name] = m;
  }

  // The next token to expand: the queue first, then (at top level) the source, where directives
  // are carried out and inactive lines kept only as newlines. False at the end.
  bool next(std::deque<PPToken>& queue, bool top, PPToken& t, std::vector<PPToken>& out) {
    if (!queue.empty()) {
      t = std::move(queue.front());
      queue.pop_front();
      return true;
    }
    while (top && pos_ < in_.size()) {
      const Token& raw = in_[pos_++];
      if (raw.kind == Kind::Directive) {
        directive(raw, out);
        continue;
      }
      if (!active()) {
        if (int n = newlines_in(raw.text)) out.push_back({space_token(raw, std::string(n, '\n')), {}});
        continue;
      }
      t = {raw, {}};
      return true;
    }
    return false;
  }

  // Is the next significant token `(`? Looks without consuming (a function-like macro's name
  // without arguments is no invocation).
  bool paren_follows(const std::deque<PPToken>& queue, bool top) const {
    for (const auto& p : queue)
      if (!is_space(p.tok)) return p.tok.text == "(";
    if (!top) return false;
    for (size_t j = pos_; j < in_.size(); j++) {
      if (in_[j].kind == Kind::Directive) return false;
      if (!is_space(in_[j])) return in_[j].text == "(";
    }
    return false;
  }

  void expand(std::deque<PPToken>& queue, std::vector<PPToken>& out, bool top) {
    PPToken t;
    while (next(queue, top, t, out)) {
      if (t.tok.kind != Kind::Ident || t.hide.count(t.tok.text)) {
        out.push_back(std::move(t));
        continue;
      }
      const std::string& name = t.tok.text;
      if (name == "__LINE__" || name == "__FILE__") {
        Token v = t.tok;
        v.kind = name == "__LINE__" ? Kind::Number : Kind::String;
        v.text = v.out = name == "__LINE__" ? std::to_string(t.tok.line) : "\"" + t.tok.file + "\"";
        out.push_back({v, {}});
        continue;
      }
      auto it = macros_.find(name);
      if (it == macros_.end() || (it->second.function && !paren_follows(queue, top))) {
        out.push_back(std::move(t));
        continue;
      }
      const Macro& m = it->second;
      std::vector<std::vector<PPToken>> args;
      int newlines = 0;
      if (m.function) collect_args(queue, top, t.tok, m, args, newlines, out);
      std::vector<PPToken> body = substitute(m, args, t.tok);
      std::set<std::string> hide = t.hide;
      hide.insert(name);
      std::deque<PPToken> expansion;
      for (auto& b : body) {
        b.hide.insert(hide.begin(), hide.end());
        expansion.push_back(std::move(b));
      }
      // spaces around the expansion keep it from gluing onto its neighbours; the invocation's own
      // newlines come after it, so the lines below keep their numbers
      expansion.push_front({space_token(t.tok, " "), {}});
      expansion.push_back({space_token(t.tok, newlines ? std::string(newlines, '\n') : " "), {}});
      queue.insert(queue.begin(), expansion.begin(), expansion.end());
    }
  }

  void collect_args(std::deque<PPToken>& queue, bool top, const Token& at, const Macro& m,
                    std::vector<std::vector<PPToken>>& args, int& newlines, std::vector<PPToken>& out) {
    PPToken t;
    while (next(queue, top, t, out) && t.tok.text != "(") newlines += newlines_in(t.tok.text);
    args.emplace_back();
    int depth = 0;
    size_t before = out.size();
    while (true) {
      if (!next(queue, top, t, out)) fail(at, "unterminated invocation of macro '" + at.text + "'");
      if (out.size() != before) fail(at, "a preprocessor directive inside the arguments of macro '" + at.text + "'");
      newlines += newlines_in(t.tok.text);
      const std::string& w = t.tok.text;
      if (t.tok.kind == Kind::Punct && w == ")" && depth == 0) break;
      if (t.tok.kind == Kind::Punct && (w == "(" || w == "[" || w == "{")) depth++;
      if (t.tok.kind == Kind::Punct && (w == ")" || w == "]" || w == "}")) depth--;
      const bool in_variadic = m.variadic && args.size() == m.params.size();
      if (t.tok.kind == Kind::Punct && w == "," && depth == 0 && !in_variadic) {
        args.emplace_back();
        continue;
      }
      if (is_space(t.tok)) t.tok.text = t.tok.out = " ";
      args.back().push_back(std::move(t));
    }
    if (args.size() == 1 && m.params.empty()) {
      bool blank = true;
      for (auto& a : args[0]) blank = blank && is_space(a.tok);
      if (blank) args.clear();
    }
    if (m.variadic && args.size() + 1 == m.params.size()) args.emplace_back();  // no variadic arguments
    if (args.size() != m.params.size())
      fail(at, "macro '" + at.text + "' takes " + std::to_string(m.params.size()) + " arguments, " +
                   std::to_string(args.size()) + " given");
  }

  int param_index(const Macro& m, const Token& t) const {
    if (t.kind != Kind::Ident) return -1;
    for (size_t i = 0; i < m.params.size(); i++)
      if (m.params[i] == t.text) return (int)i;
    return -1;
  }

  static std::string stringize(const std::vector<PPToken>& arg) {
    std::string s;
    for (const auto& p : arg) {
      if (is_space(p.tok)) {
        if (!s.empty() && s.back() != ' ') s += ' ';
        continue;
      }
      for (char c : p.tok.text) {
        if (p.tok.kind == Kind::String && (c == '"' || c == '\\')) s += '\\';
        s += c;
      }
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return "\"" + s + "\"";
  }

  // The macro's body with its arguments in: `#p` stringized, `a ## b` pasted, any other parameter
  // replaced by its fully expanded argument.
  std::vector<PPToken> substitute(const Macro& m, const std::vector<std::vector<PPToken>>& args, const Token& at) {
    auto located = [&](Token t) {
      t.file = at.file;
      t.line = at.line;
      t.out = t.text;
      return PPToken{t, {}};
    };
    const Token placemarker{Kind::Space, "", at.file, at.line, ""};
    std::vector<PPToken> r;
    const auto& b = m.body;
    for (size_t i = 0; i < b.size(); i++) {
      if (m.function && b[i].text == "#" && b[i].kind == Kind::Punct) {
        size_t j = i + 1;
        while (j < b.size() && is_space(b[j])) j++;
        int p = j < b.size() ? param_index(m, b[j]) : -1;
        if (p < 0) fail(at, "'#' in macro '" + at.text + "' is not followed by a parameter");
        Token s{Kind::String, stringize(args[p]), at.file, at.line, ""};
        r.push_back(located(s));
        i = j;
        continue;
      }
      int p = param_index(m, b[i]);
      if (p < 0) {
        r.push_back(located(b[i]));
        continue;
      }
      auto neighbour_is_paste = [&](int dir) {
        for (long j = (long)i + dir; j >= 0 && j < (long)b.size(); j += dir)
          if (!is_space(b[j])) return b[j].text == "##";
        return false;
      };
      if (neighbour_is_paste(-1) || neighbour_is_paste(+1)) {  // the argument as written
        if (args[p].empty()) r.push_back({placemarker, {}});
        for (const auto& a : args[p]) r.push_back(a);
        continue;
      }
      std::deque<PPToken> q(args[p].begin(), args[p].end());
      std::vector<PPToken> expanded;
      expand(q, expanded, false);
      for (auto& e : expanded) r.push_back(std::move(e));
    }
    return paste(r, at);
  }

  std::vector<PPToken> paste(const std::vector<PPToken>& in, const Token& at) {
    std::vector<PPToken> r;
    for (size_t i = 0; i < in.size(); i++) {
      if (in[i].tok.text != "##") {
        r.push_back(in[i]);
        continue;
      }
      while (!r.empty() && is_space(r.back().tok) && !r.back().tok.text.empty()) r.pop_back();
      size_t j = i + 1;
      while (j < in.size() && is_space(in[j].tok) && !in[j].tok.text.empty()) j++;
      if (r.empty() || j >= in.size()) fail(at, "'##' at the edge of macro '" + at.text + "'");
      std::string left = r.back().tok.text, right = in[j].tok.text;
      PPToken base = r.back().tok.kind == Kind::Space ? in[j] : r.back();
      r.pop_back();
      if (left == "," && right.empty()) {  // GNU `, ## __VA_ARGS__` with no variadic arguments
        i = j;
        continue;
      }
      std::vector<Token> glued = lex(left + right, at.file);
      if (glued.size() > 1) fail(at, "pasting '" + left + "' and '" + right + "' does not give one token");
      if (!glued.empty()) {
        base.tok.kind = glued[0].kind;
        base.tok.text = base.tok.out = glued[0].text;
        r.push_back(base);
      }
      i = j;
    }
    std::vector<PPToken> kept;  // placemarkers go
    for (auto& p : r)
      if (!(is_space(p.tok) && p.tok.text.empty())) kept.push_back(std::move(p));
    return kept;
  }

  // ---- directives
  void directive(const Token& d, std::vector<PPToken>& out) {
    std::vector<Token> t = directive_tokens(d);
    std::vector<size_t> sig;
    for (size_t i = 0; i < t.size(); i++)
      if (!is_space(t[i])) sig.push_back(i);
    const std::string name = sig.empty() ? "" : t[sig[0]].text;
    const bool conditional = name == "if" || name == "ifdef" || name == "ifndef" || name == "elif" ||
                             name == "else" || name == "endif";
    const bool keep = active() && !conditional && name != "define" && name != "undef" && name != "error" &&
                      name != "warning" && !(name == "pragma" && sig.size() > 1 && t[sig[1]].text == "once");
    if (keep) {
      out.push_back({d, {}});
    } else if (int n = newlines_in(d.text)) {
      out.push_back({space_token(d, std::string(n, '\n')), {}});
    }
    auto word = [&](size_t k) { return k < sig.size() ? t[sig[k]].text : std::string(); };
    if (name == "ifdef" || name == "ifndef") {
      bool defined = macros_.count(word(1)) > 0;
      push_cond(d, name == "ifdef" ? defined : !defined);
    } else if (name == "if") {
      push_cond(d, active() && evaluate(t, sig.size() > 1 ? sig[1] : t.size(), d) != 0);
    } else if (name == "elif" || name == "else") {
      if (conds_.empty() || conds_.back().seen_else) fail(d, "#" + name + " without #if");
      Cond& c = conds_.back();
      bool now = false;
      if (!c.taken && c.outer_active)
        now = name == "else" || evaluate(t, sig.size() > 1 ? sig[1] : t.size(), d) != 0;
      c.seen_else = name == "else";
      c.active = now;
      c.taken = c.taken || now;
    } else if (name == "endif") {
      if (conds_.empty()) fail(d, "#endif without #if");
      conds_.pop_back();
    } else if (!active()) {
      return;
    } else if (name == "define") {
      define(t, sig, d);
    } else if (name == "undef") {
      macros_.erase(word(1));
    } else if (name == "error") {
      fail(d, "#error" + d.text.substr(d.text.find("error") + 5));
    }
  }

  void push_cond(const Token& d, bool value) {
    bool outer = active();
    conds_.push_back({outer && value, outer && value, outer, false, d});
  }

  void define(const std::vector<Token>& t, const std::vector<size_t>& sig, const Token& d) {
    if (sig.size() < 2 || t[sig[1]].kind != Kind::Ident) fail(d, "#define without a macro name");
    Macro m;
    size_t k = sig[1] + 1;
    if (k < t.size() && t[k].text == "(") {  // function-like: `(` right after the name
      m.function = true;
      k++;
      for (; k < t.size() && t[k].text != ")"; k++) {
        if (is_space(t[k]) || t[k].text == ",") continue;
        if (t[k].text == "." && k + 2 < t.size() && t[k + 1].text == "." && t[k + 2].text == ".") {
          m.variadic = true;
          m.params.push_back("__VA_ARGS__");
          k += 2;
        } else if (t[k].kind == Kind::Ident) {
          m.params.push_back(t[k].text);
        } else {
          fail(d, "cannot read the parameters of macro '" + t[sig[1]].text + "'");
        }
      }
      if (k >= t.size()) fail(d, "unterminated parameter list of macro '" + t[sig[1]].text + "'");
      k++;
    }
    for (; k < t.size(); k++) {
      Token b = t[k];
      if (is_space(b)) {
        if (m.body.empty() || is_space(m.body.back())) continue;
        b.text = " ";
      } else if (b.text == "#" && k + 1 < t.size() && t[k + 1].text == "#") {
        b.text = "##";
        k++;
      }
      b.out = b.text;
      m.body.push_back(b);
    }
    while (!m.body.empty() && is_space(m.body.back())) m.body.pop_back();
    macros_[t[sig[1]].text] = std::move(m);
  }

  // ---- #if expressions
  long long evaluate(const std::vector<Token>& t, size_t from, const Token& d) {
    std::deque<PPToken> q;
    for (size_t i = from; i < t.size(); i++) {
      if (is_space(t[i])) continue;
      if (t[i].text == "defined") {  // defined NAME / defined(NAME), before any expansion
        size_t j = i + 1;
        while (j < t.size() && is_space(t[j])) j++;
        bool paren = j < t.size() && t[j].text == "(";
        if (paren) do j++; while (j < t.size() && is_space(t[j]));
        if (j >= t.size() || t[j].kind != Kind::Ident) fail(d, "'defined' without a macro name");
        Token v = t[j];
        v.kind = Kind::Number;
        v.text = macros_.count(t[j].text) ? "1" : "0";
        if (paren) {
          do j++; while (j < t.size() && is_space(t[j]));
          if (j >= t.size() || t[j].text != ")") fail(d, "expected ')' after 'defined('");
        }
        q.push_back({v, {}});
        i = j;
        continue;
      }
      q.push_back({t[i], {}});
    }
    std::vector<PPToken> expanded;
    expand(q, expanded, false);
    std::vector<std::string> words;
    for (auto& p : expanded)
      if (!is_space(p.tok)) words.push_back(p.tok.text);
    Expr e{words, 0, d};
    long long v = e.ternary();
    if (e.i != words.size()) fail(d, "cannot evaluate this #" + std::string("if") + " expression");
    return v;
  }

  // Integer constant expressions of #if; identifiers left after expansion are 0, `__has_*(...)` 0.
  struct Expr {
    const std::vector<std::string>& w;
    size_t i;
    const Token& at;
    bool eat(const char* a, const char* b = nullptr) {
      if (i < w.size() && w[i] == a && (!b || (i + 1 < w.size() && w[i + 1] == b))) {
        i += b ? 2 : 1;
        return true;
      }
      return false;
    }
    bool peek(const char* a, const char* b = nullptr) const {
      return i < w.size() && w[i] == a && (!b || (i + 1 < w.size() && w[i + 1] == b));
    }
    long long ternary() {
      long long c = lor();
      if (!eat("?")) return c;
      long long a = ternary();
      if (!eat(":")) fail(at, "expected ':' in #if expression");
      long long b = ternary();
      return c ? a : b;
    }
    long long lor() { long long v = land(); while (eat("|", "|")) { long long r = land(); v = v || r; } return v; }
    long long land() { long long v = bor(); while (eat("&", "&")) { long long r = bor(); v = v && r; } return v; }
    long long bor() { long long v = bxor(); while (!peek("|", "|") && eat("|")) v |= bxor(); return v; }
    long long bxor() { long long v = band(); while (eat("^")) v ^= band(); return v; }
    long long band() { long long v = equality(); while (!peek("&", "&") && eat("&")) v &= equality(); return v; }
    long long equality() {
      long long v = relational();
      while (true) {
        if (eat("=", "=")) v = v == relational();
        else if (eat("!", "=")) v = v != relational();
        else return v;
      }
    }
    long long relational() {
      long long v = shift();
      while (true) {
        if (eat("<", "=")) v = v <= shift();
        else if (eat(">", "=")) v = v >= shift();
        else if (!peek("<", "<") && eat("<")) v = v < shift();
        else if (!peek(">", ">") && eat(">")) v = v > shift();
        else return v;
      }
    }
    long long shift() {
      long long v = additive();
      while (true) {
        if (eat("<", "<")) v = v << additive();
        else if (eat(">", ">")) v = v >> additive();
        else return v;
      }
    }
    long long additive() {
      long long v = multiplicative();
      while (true) {
        if (eat("+")) v += multiplicative();
        else if (eat("-")) v -= multiplicative();
        else return v;
      }
    }
    long long multiplicative() {
      long long v = unary();
      while (true) {
        if (eat("*")) v *= unary();
        else if (eat("/") || eat("%")) {
          bool div = w[i - 1] == "/";
          long long r = unary();
          if (r == 0) fail(at, "division by zero in #if");
          v = div ? v / r : v % r;
        } else {
          return v;
        }
      }
    }
    long long unary() {
      if (eat("!")) return !unary();
      if (eat("~")) return ~unary();
      if (eat("-")) return -unary();
      if (eat("+")) return unary();
      return primary();
    }
    long long primary() {
      if (i >= w.size()) fail(at, "incomplete #if expression");
      if (eat("(")) {
        long long v = ternary();
        if (!eat(")")) fail(at, "expected ')' in #if expression");
        return v;
      }
      const std::string& s = w[i++];
      if (std::isdigit((unsigned char)s[0])) return (long long)std::strtoull(s.c_str(), nullptr, 0);
      if (s.size() >= 3 && s[0] == '\'') return (unsigned char)s[1];
      if (s == "true") return 1;
      if (s.rfind("__has_", 0) == 0 && eat("(")) {  // __has_include(...), __has_builtin(...): not here
        for (int depth = 1; i < w.size() && depth > 0; i++) depth += w[i] == "(" ? 1 : w[i] == ")" ? -1 : 0;
        return 0;
      }
      if (std::isalpha((unsigned char)s[0]) || s[0] == '_') return 0;
      fail(at, "unexpected '" + s + "' in #if expression");
    }
  };
};

}  // namespace

std::vector<Token> preprocess(const std::vector<Token>& tokens) { return Preprocessor(tokens).run(); }

}  // namespace aproto::host
