#include "host/translate.hpp"

#include <cctype>
#include <cstdlib>
#include <map>
#include <set>
#include <vector>

#include "host/preprocess.hpp"
#include "runtime/errors.hpp"

namespace aproto::host {

namespace {

// ---------------------------------------------------------------------------------------- helpers
const std::set<std::string>& vector_types() {
  static const std::set<std::string> names = [] {
    std::set<std::string> s;
    for (const char* base : {"float", "half", "bfloat", "int", "uint", "short", "ushort", "char", "uchar", "bool",
                             "long", "ulong"})
      for (int n = 2; n <= 4; n++) {
        s.insert(std::string(base) + std::to_string(n));
        if (n != 3) s.insert("packed_" + std::string(base) + std::to_string(n));  // packed_T3 is a struct
      }
    return s;
  }();
  return names;
}

const std::set<std::string>& scalar_types() {
  static const std::set<std::string> names = {"float", "half", "bfloat", "int", "uint", "short", "ushort",
                                              "char", "uchar", "bool", "long", "ulong"};
  return names;
}

// A number as MSL reads it: 1.0h, 2h, 1e-3h -> half(...); 0.5 and 1e3 -> 0.5f, 1e3f (MSL has no
// double: an unsuffixed floating literal is a float); anything else unchanged.
std::string msl_literal(const std::string& w) {
  char last = w.back();
  bool hex = w.size() > 1 && w[0] == '0' && (w[1] == 'x' || w[1] == 'X');
  if (hex) return w;
  if (last == 'h' || last == 'H') return "half(" + w.substr(0, w.size() - 1) + ")";
  const bool floating = w.find_first_of(".eE") != std::string::npos;
  return floating && (std::isdigit((unsigned char)last) || last == '.') ? w + "f" : w;
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
// Address spaces a member function can be qualified by (`complex_t() threadgroup`): MSL overloads on
// them, the host has one address space.
bool is_address_space(const std::string& w) {
  return w == "thread" || w == "threadgroup" || w == "device" || w == "constant" || w == "threadgroup_imageblock" ||
         w == "ray_data" || w == "object_data";
}

// A kernel function definition: `kernel void f(...) {...}`, `[[kernel]] void f(...) {...}`, or a
// template of one (`template <typename T> kernel void f(...) {...}`).
struct KernelDef {
  std::string name;       // the C++ name
  std::string published;  // [[host_name("...")]], else the name; empty for a template
  size_t start = 0;       // sig positions: first token (template, attributes), ( ), { }
  size_t params_open = 0, params_close = 0, body_open = 0, body_close = 0;
  bool is_template = false;
  std::vector<std::string> template_params;  // names, "" for an unnamed one
  unsigned long max_threads = 0;             // [[max_total_threads_per_threadgroup(n)]], 0 if absent
};

// An instance published by name: `template [[host_name("n")]] [[kernel]] decltype(f<A>) f<A>;`,
// `template [[host_name("n")]] kernel f_t f<A>;` or `template [[host_name("n")]] kernel void f<A>(...);`.
struct Instance {
  std::string published, name;
  size_t start = 0, end = 0;             // the statement, `template` to `;`
  size_t args_open = 0, args_close = 0;  // the < > of f<A>
};

class Translator {
 public:
  Translator(const std::string& source, const std::string& function, const Constants& constants,
             const std::string& name, const std::vector<std::string>& table_functions = {})
      : t_(preprocess(lex(source, name))), function_(function), constants_(constants), name_(name),
        table_functions_(table_functions) {
    for (size_t i = 0; i < t_.size(); i++)
      if (t_[i].kind != Kind::Space && t_[i].kind != Kind::Directive) sig_.push_back(i);
    discover();
  }

  std::string run(bool entry = true) {
    select_target();
    parse_kernel_params();
    rewrite_function_constants();
    // The other kernels of the file are never called from this one: their bodies go (their
    // declarations stay, for `decltype(f<T>)` typedefs), and so do the other instances. That
    // halves the compile time of a file with a kernel per dtype.
    for (const auto& [from, to] : unused_) blank(from, to, sm(from).text == "{" ? ";" : "");
    rewrite_address_space_overloads();
    rewrite_threadgroup_declarations();
    drop_attributes();
    rewrite_template_casts();
    rewrite_qualifiers_and_conversions();
    std::string out = entry ? "#include \"aproto_metal.hpp\"\n" : "";
    for (const auto& tok : t_) out += tok.out;
    return entry ? out + entry_point() : out;
  }

  // [[visible]] / [[stitchable]] functions and extern declarations (see LinkFunction).
  std::vector<LinkFunction> linkables() const {
    std::vector<LinkFunction> out;
    for (size_t k = 0; k + 5 < sig_.size(); k++) {
      size_t head;
      std::string attribute;
      if (is(k, "[") && is(k + 1, "[") && (is(k + 2, "visible") || is(k + 2, "stitchable")) && is(k + 3, "]") &&
          is(k + 4, "]")) {
        attribute = s(k + 2).text;
        head = k + 5;
        if (k > 0 && is(k - 1, ">") && match_back(k - 1) != k - 1 && is(match_back(k - 1) - 1, "template"))
          error(k + 2, "a [[" + attribute + "]] function cannot be a template: Metal publishes it under one name "
                       "with one signature, like a kernel");
      } else if (is(k, "extern") && s(k + 1).kind == Kind::Ident) {
        attribute = "extern";
        head = k + 1;
      } else {
        continue;
      }
      size_t open = head;
      while (open < sig_.size() && !is(open, "(") && !is(open, ";") && !is(open, "{") && !is(open, "=")) open++;
      if (!is(open, "(") || open < head + 2 || s(open - 1).kind != Kind::Ident) {
        if (attribute == "extern") continue;  // an extern variable
        error(k + 2, "[[" + attribute + "]] applies to a function definition here");
      }
      LinkFunction f;
      f.name = s(open - 1).text;
      f.attribute = attribute;
      f.result = type_text(head, open - 1);
      f.where = s(open - 1).file + ":" + std::to_string(s(open - 1).line);
      const size_t close = match(open);
      for (auto [a, b] : split_top_level(open + 1, close)) {
        size_t end = b;
        for (size_t j = a; j < b; j++)
          if (is(j, "=")) { end = j; break; }
        const bool named = end > a + 1 && s(end - 1).kind == Kind::Ident && !scalar_types().count(s(end - 1).text) &&
                           !is_vector_name(s(end - 1).text);
        std::string type = type_text(a, named ? end - 1 : end);
        if (type != "void") f.params.push_back(type);
      }
      if (attribute != "extern" && !is(close + 1, "{") && !is(close + 1, "const")) f.attribute = "extern";
      if (f.attribute == "extern" && !is(close + 1, ";")) continue;  // `extern` on a definition: not a link request
      out.push_back(f);
      k = close;
    }
    return out;
  }

  std::vector<KernelParameter> parameters() {
    select_target();
    parse_kernel_params();
    return params_;
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [pos, published] : published_) out.push_back(published);
    return out;
  }

 private:
  std::vector<Token> t_;
  std::vector<size_t> sig_;  // indices of significant tokens
  std::string function_;
  const Constants& constants_;
  std::string name_;
  std::vector<std::string> table_functions_;
  std::vector<KernelDef> defs_;
  std::vector<Instance> instances_;
  std::vector<std::pair<size_t, std::string>> published_;  // (sig position, name), in source order
  const KernelDef* target_ = nullptr;
  const Instance* instance_ = nullptr;  // the target's instance, for a template
  std::string call_;                                  // `f` or `f<A...>`: how the entry point calls it
  std::map<std::string, std::string> template_args_;  // template parameter -> argument text
  std::vector<KernelParameter> params_;
  std::map<std::string, bool> constant_truth_;  // function constants with a value: is it true (nonzero)?
  std::vector<std::pair<size_t, size_t>> unused_;  // sig ranges of other kernels' bodies and instances
  uint32_t threadgroup_sites_ = 0;
  std::vector<std::pair<size_t, std::string>> prefixes_, suffixes_;  // text around tokens, added last
  mutable std::set<std::string> vector_aliases_;  // typedef / using names of vector types
  mutable bool aliases_known_ = false;

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
  // The opener matching the `)` or `>` at sig position k, or k itself when there is none (a `>` may
  // be a comparison, so angles stop at a statement's edge).
  size_t match_back(size_t k) const {
    const char* open = is(k, ")") ? "(" : "<";
    const char* close = is(k, ")") ? ")" : ">";
    int depth = 0;
    for (size_t j = k + 1; j-- > 0;) {
      if (is(j, close)) depth++;
      else if (is(j, open) && --depth == 0) return j;
      else if (*open == '<' && (is(j, ";") || is(j, "{") || is(j, "}"))) break;
    }
    return k;
  }

  // The string of `host_name("...")` in the attribute lists [from, to), adjacent literals joined.
  std::string host_name_in(size_t from, size_t to) const {
    for (size_t j = from; j + 1 < to; j++) {
      if (s(j).text != "host_name" || !is(j + 1, "(")) continue;
      std::string name;
      for (size_t q = j + 2; q < to && s(q).kind == Kind::String; q++) name += s(q).text.substr(1, s(q).text.size() - 2);
      if (name.empty()) error(j, "host_name needs a string literal");
      return name;
    }
    return "";
  }

  // The `[[` of the attribute list in which the `kernel` at sig position k is an attribute of its own,
  // or k when it is the keyword.
  size_t attribute_list_around(size_t k) const {
    if (!(is(k - 1, "[") || is(k - 1, ",")) || !(is(k + 1, "]") || is(k + 1, ","))) return k;
    int depth = 0;
    for (size_t j = k; j-- > 1;) {
      if (is(j, ")")) depth++;
      else if (is(j, "(")) depth--;
      else if (depth == 0 && is(j, "[") && is(j - 1, "[")) return j - 1;
      else if (depth == 0 && (is(j, ";") || is(j, "{") || is(j, "}") || is(j, "]"))) break;
    }
    return k;
  }

  // Every kernel, kernel template and published instance of the source.
  void discover() {
    for (size_t k = 0; k + 2 < sig_.size(); k++) {
      if (s(k).text != "kernel" || s(k).kind != Kind::Ident) continue;
      // `kernel`, or the attribute in `[[kernel]]` / `[[kernel, max_total_threads_per_threadgroup(n)]]`
      const size_t list = attribute_list_around(k);
      const bool attr = list != k;
      size_t list_end = attr ? match(list) : k;
      // back over attribute lists and `template` / `template <...>`
      size_t start = attr ? list : k, a;
      while (start > 0 && attribute_before(start - 1, a)) start = a;
      size_t attrs_from = start;
      bool templ = false, instance = false;
      if (start > 0 && is(start - 1, "template")) {
        instance = true;
        start--;
      } else if (start > 0 && is(start - 1, ">")) {
        size_t open = match_back(start - 1);
        if (open > 0 && open != start - 1 && is(open - 1, "template")) {
          templ = true;
          start = open - 1;
        }
      }
      size_t after = attr ? list_end + 1 : k + 1;
      if (instance) {
        add_instance(start, attrs_from, after);
        continue;
      }
      if (!is(after, "void") || s(after + 1).kind != Kind::Ident || !is(after + 2, "(")) continue;
      KernelDef d;
      d.name = s(after + 1).text;
      d.start = start;
      d.params_open = after + 2;
      d.params_close = match(after + 2);
      size_t body = d.params_close + 1;
      while (body < sig_.size() && !is(body, "{") && !is(body, ";")) body++;
      if (!is(body, "{")) continue;  // a declaration
      d.body_open = body;
      d.body_close = match(body);
      d.is_template = templ;
      if (templ)
        for (const auto& [name, type] : template_parameters(start + 1)) d.template_params.push_back(name);
      for (size_t j = attrs_from; j + 2 < after; j++)
        if (s(j).text == "max_total_threads_per_threadgroup" && is(j + 1, "(") && is(j + 3, ")"))
          d.max_threads = std::strtoul(s(j + 2).text.c_str(), nullptr, 0);
      if (!templ) {
        std::string host = host_name_in(attrs_from, k);
        d.published = host.empty() ? d.name : host;
        published_.push_back({start, d.published});
      }
      defs_.push_back(d);
      k = d.body_close;
    }
  }

  // template [[host_name("n")]] kernel ... f<A> ... ;   (`after` is just past the kernel marker)
  void add_instance(size_t start, size_t attrs_from, size_t after) {
    Instance in;
    in.start = start;
    in.end = statement_end(after);
    in.published = host_name_in(attrs_from, after);
    // the template-id f<A> at parenthesis depth 0 that is followed by `;` or `(`
    int depth = 0;
    for (size_t j = after; j < in.end; j++) {
      if (is(j, "(")) depth++;
      else if (is(j, ")")) depth--;
      else if (depth == 0 && is(j, ">") && (is(j + 1, ";") || is(j + 1, "("))) {
        size_t open = match_back(j);
        if (open == j || open == 0 || s(open - 1).kind != Kind::Ident) continue;
        in.name = s(open - 1).text;
        in.args_open = open;
        in.args_close = j;
      }
    }
    if (in.name.empty()) error(start, "cannot read this kernel instantiation (expected `... f<T...>;`)");
    instances_.push_back(in);
    if (!in.published.empty()) published_.push_back({start, in.published});
  }

  // The parameters of `template < ... >` with `<` at sig position open: their names ("" for an
  // unnamed one) and whether each is a type parameter (`typename T`, `class T`).
  std::vector<std::pair<std::string, bool>> template_parameters(size_t open) const {
    std::vector<std::pair<std::string, bool>> params;
    for (auto [a, b] : split_top_level(open + 1, match(open))) {
      size_t end = a;
      while (end < b && !is(end, "=")) end++;
      std::string name = end > a + 1 && s(end - 1).kind == Kind::Ident ? s(end - 1).text : "";
      if (name == "typename" || name == "class") name.clear();
      params.push_back({name, is(a, "typename") || is(a, "class")});
    }
    return params;
  }

  // Finds the kernel `function_` names (a published name, or a plain kernel's C++ name).
  void select_target() {
    if (target_) return;
    for (const auto& d : defs_)
      if (!d.is_template && d.published == function_) target_ = &d;
    for (const auto& in : instances_) {
      if (target_ || in.published != function_) continue;
      for (const auto& d : defs_)
        if (d.is_template && d.name == in.name && d.start < in.start) target_ = &d;
      if (!target_) error(in.start, "'" + function_ + "' instantiates '" + in.name + "', which is no kernel template defined before it");
      instance_ = &in;
    }
    if (!target_) {
      std::string names;
      for (const auto& [pos, n] : published_) names += (names.empty() ? "" : ", ") + n;
      std::string why = names.empty() ? " (the source declares no kernel)" : " (kernels here: " + names + ")";
      for (const auto& d : defs_)
        if (d.is_template && d.name == function_)
          why = ": it is a kernel template; name one of its instances published with [[host_name(\"...\")]]" +
                (names.empty() ? std::string() : " (kernels here: " + names + ")");
      throw CompileError(name_ + ": error: kernel function '" + function_ + "' not found" + why);
    }
    call_ = target_->name;
    if (instance_) call_ += "<" + type_text(instance_->args_open + 1, instance_->args_close) + ">";
    if (instance_) {  // template parameter -> argument, for the parameters' type texts
      auto args = split_top_level(instance_->args_open + 1, instance_->args_close);
      for (size_t i = 0; i < args.size() && i < target_->template_params.size(); i++)
        if (!target_->template_params[i].empty())
          template_args_[target_->template_params[i]] = type_text(args[i].first, args[i].second);
    }
    for (const auto& d : defs_)
      if (&d != target_) unused_.push_back({d.body_open, d.body_close});
    for (const auto& in : instances_) unused_.push_back({in.start, in.end});
  }

  // [from, to) split at commas outside brackets (<> included).
  std::vector<std::pair<size_t, size_t>> split_top_level(size_t from, size_t to) const {
    std::vector<std::pair<size_t, size_t>> parts;
    int depth = 0;
    size_t begin = from;
    for (size_t j = from; j < to; j++) {
      if (is(j, "(") || is(j, "[") || is(j, "<") || is(j, "{")) depth++;
      else if (is(j, ")") || is(j, "]") || is(j, ">") || is(j, "}")) depth--;
      else if (depth == 0 && is(j, ",")) { parts.push_back({begin, j}); begin = j + 1; }
    }
    if (to > begin) parts.push_back({begin, to});
    return parts;
  }

  std::string type_text(size_t from, size_t to) const {  // sig range [from, to)
    std::string out;
    for (size_t k = from; k < to; k++) {
      const std::string& w = s(k).text;
      if (dropped_qualifiers().count(w)) continue;
      if (w == "__restrict" || w == "__restrict__") continue;  // `device float* __restrict A` (TileLang)
      std::string piece = w == "constant" ? "const" : w;
      if (auto a = template_args_.find(piece); a != template_args_.end() && s(k).kind == Kind::Ident) piece = a->second;
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
    if (!params_.empty() || target_->params_close == target_->params_open + 1) return;
    std::vector<bool> implicit;
    for (auto [k, end] : split_top_level(target_->params_open + 1, target_->params_close)) {
      if (end == k) error(k, "empty kernel parameter");
      KernelParameter p;
      std::string& condition = p.condition;
      p.line = s(k).line;
      size_t last = end - 1, decl_end = end;
      size_t attr_start;
      if (attribute_before(last, attr_start)) {
        decl_end = attr_start;
        // [[buffer(1), function_constant(c)]]: the parameter exists only when c is true; it is bound
        // (and numbered) like any other, so only the location attribute counts here
        for (auto [a, b] : split_top_level(attr_start + 2, last - 1)) {
          if (s(a).text == "function_constant") {
            if (!(is(a + 1, "(") && s(a + 2).kind == Kind::Ident && is(a + 3, ")") && a + 4 == b))
              error(a, "kernel parameter condition: the host backend reads function_constant(NAME) only");
            condition = s(a + 2).text;
            continue;
          }
          if (!p.attr.empty()) continue;
          p.attr = s(a).text;
          for (size_t j = a + 2; is(a + 1, "(") && j + 1 < b; j++) p.arg += s(j).text;
        }
      }
      if (decl_end == k || s(decl_end - 1).kind != Kind::Ident) error(k, "cannot read this kernel parameter");
      p.name = s(decl_end - 1).text;
      p.type = type_text(k, decl_end - 1);
      // `device float* const v`: a const pointer parameter (CubeCL writes every buffer so); the top-level
      // const is the parameter's own, not the pointee's, so the binding is the same as without it
      if (p.type.size() > 7 && p.type.compare(p.type.size() - 7, 7, "* const") == 0) p.type.resize(p.type.size() - 6);
      std::string& space = p.address_space;
      for (size_t j = k; j < decl_end - 1; j++)
        if (s(j).text == "device" || s(j).text == "constant" || s(j).text == "threadgroup") space = s(j).text;
      const bool indirect = !p.type.empty() && (p.type.back() == '*' || p.type.back() == '&');
      implicit.push_back(p.attr.empty());
      if (p.attr.empty()) {
        // Metal gives a device, constant or threadgroup argument without an index the first free one
        // (MSL specification, 5.2.1)
        if (space.empty() || !indirect)
          error(k, "kernel parameter '" + p.name + "' has no attribute: Metal requires [[buffer(n)]], "
                   "[[threadgroup(n)]] or a thread-position attribute for a parameter that is not a pointer or "
                   "reference to device, constant or threadgroup memory");
        p.attr = space == "threadgroup" ? "threadgroup" : "buffer";
      }
      if (p.attr != "buffer" && p.attr != "threadgroup" && !position_attributes().count(p.attr))
        error(k, "kernel parameter '" + p.name + "': [[" + p.attr + "]] is not supported by the host backend");
      const bool table = p.attr == "buffer" && (p.type.rfind("visible_function_table", 0) == 0 ||
                                                p.type.rfind("metal::visible_function_table", 0) == 0);
      if ((p.attr == "buffer" || p.attr == "threadgroup") && !indirect && !table)
        error(k, "kernel parameter '" + p.name + "': a [[" + p.attr + "]] parameter must be a pointer or reference");
      params_.push_back(p);
    }
    for (const char* kind : {"buffer", "threadgroup"}) {
      std::set<unsigned long> taken;
      for (size_t i = 0; i < params_.size(); i++)
        if (params_[i].attr == kind && !implicit[i]) taken.insert(std::strtoul(params_[i].arg.c_str(), nullptr, 0));
      unsigned long next = 0;
      for (size_t i = 0; i < params_.size(); i++) {
        if (params_[i].attr != kind || !implicit[i]) continue;
        while (taken.count(next)) next++;
        params_[i].arg = std::to_string(next++);
      }
    }
  }

  // ---- what the target kernel uses
  // A namespace-scope declaration (namespace bodies are looked into) and the names it declares.
  struct Decl {
    size_t from, to;
    std::vector<std::string> names;  // empty: unknown, so always counted as used
  };

  // The last sig position of the declaration starting at k (before `limit`).
  size_t declaration_end(size_t k, size_t limit) const {
    size_t head = k;
    while (is(head, "template") && is(head + 1, "<")) head = match(head + 1) + 1;
    const bool type_decl = is(head, "struct") || is(head, "class") || is(head, "union") || is(head, "enum");
    int depth = 0;
    for (size_t j = k; j < limit; j++) {
      if (is(j, "(") || is(j, "[") || is(j, "{")) depth++;
      else if (is(j, ")") || is(j, "]")) depth--;
      else if (is(j, "}") && --depth == 0) {
        if (is(j + 1, ";")) return j + 1;
        if (!(type_decl && j + 1 < limit && s(j + 1).kind == Kind::Ident)) return j;
      } else if (depth == 0 && is(j, ";")) {
        return j;
      }
      if (depth < 0) return j - 1;
    }
    return limit - 1;
  }

  std::vector<std::string> declared_names(size_t from, size_t to) const {
    size_t h = from;
    while (h < to && (is(h, "template") || (is(h, "[") && is(h + 1, "[")))) h = is(h, "[") ? match(h) + 1 : is(h + 1, "<") ? match(h + 1) + 1 : h + 1;
    if (is(h, "using")) return is(h + 1, "namespace") ? std::vector<std::string>{} : std::vector<std::string>{s(h + 1).text};
    if (is(h, "typedef")) {
      std::string last;
      for (size_t j = h; j < to; j++)
        if (s(j).kind == Kind::Ident) last = s(j).text;
      return {last};
    }
    if (is(h, "struct") || is(h, "class") || is(h, "union") || is(h, "enum")) {
      std::vector<std::string> names;
      size_t j = h + 1;
      while (j < to && (is(j, "class") || is(j, "struct") || (is(j, "[") && is(j + 1, "[")))) j = is(j, "[") ? match(j) + 1 : j + 1;
      if (j < to && s(j).kind == Kind::Ident) names.push_back(s(j).text);
      if (is(h, "enum"))  // its enumerators too
        for (size_t q = j; q < to; q++)
          if (s(q).kind == Kind::Ident && (is(q - 1, "{") || is(q - 1, ","))) names.push_back(s(q).text);
      return names;
    }
    for (size_t j = h; j < to; j++) {
      if (is(j, "operator")) return {};  // operators are used without their name
      if (!(is(j, "(") || is(j, "=") || is(j, "[") || is(j, "{") || is(j, ";"))) continue;
      size_t n = j - 1;
      if (is(n, ">")) n = match_back(n) - 1;  // an explicit specialization f<float>(...)
      if (n >= h && n < j && s(n).kind == Kind::Ident) return {s(n).text};
      return {};
    }
    return {};
  }

  std::vector<Decl> declarations() const {
    std::vector<Decl> out;
    std::vector<size_t> namespace_ends;
    for (size_t k = 0; k < sig_.size();) {
      if (!namespace_ends.empty() && k == namespace_ends.back()) {
        namespace_ends.pop_back();
        k++;
        continue;
      }
      if (is(k, ";")) { k++; continue; }
      if (is(k, "namespace")) {
        size_t j = k + 1;
        while (j < sig_.size() && !is(j, "{") && !is(j, ";") && !is(j, "=")) j++;
        if (is(j, "{")) {
          namespace_ends.push_back(match(j));
          k = j + 1;
          continue;
        }
      }
      size_t limit = namespace_ends.empty() ? sig_.size() : namespace_ends.back();
      size_t end = declaration_end(k, limit);
      out.push_back({k, end, declared_names(k, end + 1)});
      k = end + 1;
    }
    return out;
  }

  // Every identifier the target kernel reaches: its own, then those of each declaration a reached
  // name declares, transitively (the bodies of the other kernels excepted: they go).
  std::set<std::string> reached_names() const {
    std::vector<bool> unused(sig_.size(), false);
    for (auto [from, to] : unused_)
      for (size_t j = from; j <= to; j++) unused[j] = true;
    std::set<std::string> reached;
    std::vector<std::string> work;
    auto visit = [&](size_t from, size_t to, bool all) {
      for (size_t j = from; j <= to && j < sig_.size(); j++)
        if (s(j).kind == Kind::Ident && (all || !unused[j]) && reached.insert(s(j).text).second) work.push_back(s(j).text);
    };
    visit(target_->start, target_->body_close, true);
    if (instance_) visit(instance_->args_open, instance_->args_close, true);
    std::vector<Decl> decls = declarations();
    std::multimap<std::string, size_t> by_name;
    for (size_t i = 0; i < decls.size(); i++) {
      if (decls[i].names.empty()) visit(decls[i].from, decls[i].to, false);
      for (const auto& n : decls[i].names) by_name.insert({n, i});
    }
    std::vector<bool> done(decls.size(), false);
    while (!work.empty()) {
      std::string name = work.back();
      work.pop_back();
      auto [lo, hi] = by_name.equal_range(name);
      for (auto it = lo; it != hi; ++it)
        if (!done[it->second]) {
          done[it->second] = true;
          visit(decls[it->second].from, decls[it->second].to, false);
        }
    }
    return reached;
  }

  // constant T NAME [[function_constant(i)]];
  void rewrite_function_constants() {
    std::set<std::string> queried;  // names passed to is_function_constant_defined
    for (size_t k = 0; k + 3 < sig_.size(); k++)
      if (s(k).text == "is_function_constant_defined" && is(k + 1, "(")) queried.insert(s(k + 2).text);
    std::set<std::string> used_keys;
    std::vector<std::string> declared;
    std::set<std::string> reached;
    bool reached_known = false;
    for (size_t k = 0; k + 6 < sig_.size(); k++) {
      if (!(s(k).text == "function_constant" && k >= 3 && is(k - 1, "[") && is(k - 2, "["))) continue;
      if (is(k + 1, "(") && !is(match(k + 1) + 3, ";")) continue;  // a parameter's condition, not a declaration
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
        constant_truth_[name] = value->type == ConstantValue::Type::Float ? value->f != 0 : value->i != 0;
        repl = "static const " + type + " " + name + " = " + init + value->literal() + ")); " +
               "static constexpr bool " + name + "__aproto_defined = true;";
      } else {
        if (!reached_known) {
          reached = reached_names();
          reached_known = true;
        }
        if (reached.count(name) && !queried.count(name))
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
      // `alignas(4) threadgroup char buf[N];` (CubeCL's shared memory): the alignment goes to the storage
      std::string align;
      if (first > 1 && is(first - 1, ")") && match_back(first - 1) > 0 && is(match_back(first - 1) - 1, "alignas")) {
        const size_t open = match_back(first - 1);
        for (size_t j = open + 1; j + 1 < first; j++) align += s(j).text;
        first = open - 1;
      }
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
      int angles = 0;  // `threadgroup array<float, 8> a;`: a comma inside template arguments splits nothing
      for (size_t j = k + 1; j <= semi; j++) {
        const std::string& w = s(j).text;
        if (w == "(" || w == "[" || w == "{") depth++;
        else if (w == ")" || w == "]" || w == "}") depth--;
        else if (depth == 0 && w == "<") angles++;
        else if (depth == 0 && w == ">") angles--;
        if (j == semi || (depth == 0 && angles == 0 && w == ",")) { decls.push_back({from, j}); from = j + 1; }
      }
      std::string qualifiers = type_text(align.empty() ? first : match(first + 1) + 1, k), type, out;
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
        out += "auto& " + name + " = ::aproto_rt::threadgroup_variable<" + type + dim_text +
               (align.empty() ? "" : ", (" + align + ")") + ">(" +
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

  // Functions overloaded on address spaces: `complex_t() threadgroup` beside `complex_t() thread`,
  // `operator+=(thread T& a, ...)` beside `operator+=(device T& a, ...)`. The host has one address
  // space, where such overloads are one function defined twice: the thread (or unqualified) one
  // stays, else the first; the others go. The address space of `this` goes from every member.
  struct FunctionDef {
    size_t from, to, qualifier;  // whole definition; address space after `)` (0: none)
    std::string key;             // scope, cv, and the head to `)` without address spaces
    bool thread;                 // the overload for thread memory (or for no address space)
  };

  // The function definition whose parameter list closes at sig position k (`)`), or false.
  bool function_definition_at(size_t k, FunctionDef& f) const {
    size_t q = k + 1;
    std::string cv;
    while (is(q, "const") || is(q, "volatile")) cv += s(q++).text + " ";
    f.qualifier = is_address_space(s(q).text) ? q : 0;
    const size_t after = f.qualifier ? q + 1 : q;
    const size_t open = match_back(k);
    if (open == 0 || open == k) return false;
    size_t name = open - 1;  // `f`, `S<T>` (a constructor), `operator+=`
    if (is(name, ">")) name = match_back(name) - 1;
    for (size_t b = open - 1, n = 0; n < 3 && b > 0 && s(b).kind == Kind::Punct; n++, b--)
      if (is(b - 1, "operator")) name = b - 1;
    static const std::set<std::string> statements = {"if", "for", "while", "switch", "return", "sizeof", "catch"};
    if (s(name).kind != Kind::Ident || statements.count(s(name).text)) return false;
    // a definition: a body, `= default` / `= delete`, or a constructor's initializer list
    const std::string& before = name > 0 ? s(name - 1).text : ";";
    const bool head_start = before == ";" || before == "{" || before == "}" || before == ">" || before == ":" ||
                            s(name - 1).kind == Kind::Ident || before == "&" || before == "*";
    const bool body = is(after, "{") || (is(after, "=") && (is(after + 1, "default") || is(after + 1, "delete"))) ||
                      (is(after, ":") && head_start && !is(after + 1, ":"));
    if (!body || !head_start) return false;
    f.from = name;
    while (f.from > 0 && !is(f.from - 1, ";") && !is(f.from - 1, "{") && !is(f.from - 1, "}") &&
           !(is(f.from - 1, ":") && (is(f.from - 2, "public") || is(f.from - 2, "private") || is(f.from - 2, "protected"))))
      f.from--;
    f.to = after;
    for (int depth = 0; f.to < sig_.size(); f.to++) {  // past an initializer list to the body's end or `;`
      if (is(f.to, "(") || is(f.to, "[")) depth++;
      else if (is(f.to, ")") || is(f.to, "]")) depth--;
      else if (depth == 0 && is(f.to, ";")) break;
      else if (depth == 0 && is(f.to, "{")) {
        if (is(f.to - 1, "=") || !(s(f.to - 1).kind == Kind::Ident || is(f.to - 1, ">")) || f.to == after) {
          f.to = match(f.to);
          break;
        }
        f.to = match(f.to);  // a member's brace initializer `a{0}`
      }
    }
    size_t scope = f.from;  // the `{` of the enclosing class or namespace (sig_.size(): file scope)
    for (int depth = 0; scope-- > 0;) {
      if (is(scope, "}")) depth++;
      else if (is(scope, "{") && depth-- == 0) break;
    }
    if (scope > f.from) scope = sig_.size();
    bool spaces = f.qualifier != 0, other_space = f.qualifier && !is(f.qualifier, "thread");
    f.key = std::to_string(scope) + " " + cv + overload_key(f.from, k + 1, spaces, other_space);
    f.thread = !other_space;
    return spaces;  // only definitions that name an address space can collapse onto another
  }

  // The text of [from, to) as the host compiles it: address spaces gone, `constant` read as const.
  std::string overload_key(size_t from, size_t to, bool& spaces, bool& other_space) const {
    std::string key;
    for (size_t j = from; j < to; j++) {
      if (is_address_space(s(j).text)) {
        spaces = true;
        other_space = other_space || s(j).text != "thread";
        if (s(j).text == "constant") key += "const ";
        continue;
      }
      key += s(j).text + " ";
    }
    return key;
  }

  // `template <class T> struct pointer_element<device T*> {...}`: a partial specialization on an
  // address space, the same thing on the host as the thread one.
  bool specialization_at(size_t k, FunctionDef& f) const {
    if (!is(k, "template") || !is(k + 1, "<")) return false;
    size_t head = match(k + 1) + 1;
    if (!(is(head, "struct") || is(head, "class")) || s(head + 1).kind != Kind::Ident || !is(head + 2, "<")) return false;
    size_t args_close = match(head + 2);
    if (!is(args_close + 1, "{") && !is(args_close + 1, ":")) return false;
    bool spaces = false, other_space = false;
    f.from = k;
    f.to = declaration_end(k, sig_.size());
    f.qualifier = 0;
    f.key = "struct " + overload_key(k, args_close + 1, spaces, other_space);
    f.thread = !other_space;
    return spaces;
  }

  void rewrite_address_space_overloads() {
    std::vector<FunctionDef> defs;
    std::set<std::string> keys;
    for (size_t k = 1; k + 1 < sig_.size(); k++) {
      FunctionDef f;
      if (s(k).consumed) continue;
      if ((is(k, ")") && function_definition_at(k, f)) || specialization_at(k, f)) {
        defs.push_back(f);
        keys.insert(f.key);
      }
    }
    // unqualified twins (`f(T& a)` beside `f(device T& a)`) count as the thread overload
    std::set<std::string> thread_keys;
    for (const auto& f : defs)
      if (f.thread) thread_keys.insert(f.key);
    for (size_t k = 1; k + 1 < sig_.size() && thread_keys.size() < keys.size(); k++) {
      if (!is(k, ")") || s(k).consumed) continue;
      FunctionDef f;
      if (!function_definition_at(k, f) && !f.key.empty() && keys.count(f.key)) thread_keys.insert(f.key);
    }
    std::set<std::string> kept;
    for (const auto& f : defs) {
      if (s(f.from).consumed) continue;
      const bool keep = f.thread ? !kept.count(f.key) : !thread_keys.count(f.key) && !kept.count(f.key);
      if (!keep) {
        blank(f.from, f.to, "");
        continue;
      }
      kept.insert(f.key);
      if (f.qualifier) blank(f.qualifier, f.qualifier, "");
    }
  }

  // A vector type's name: float4, packed_half2, or a source's own alias of one (`typedef half4 h4;`,
  // `using f4 = float4;`), whose constructors and casts convert the same way.
  bool is_vector_name(const std::string& w) const {
    if (vector_types().count(w)) return true;
    if (!aliases_known_) {
      for (size_t k = 0; k + 3 < sig_.size(); k++) {
        if (is(k, "typedef") && vector_types().count(s(k + 1).text) && s(k + 2).kind == Kind::Ident && is(k + 3, ";"))
          vector_aliases_.insert(s(k + 2).text);
        if (is(k, "using") && s(k + 1).kind == Kind::Ident && is(k + 2, "=") && vector_types().count(s(k + 3).text) &&
            is(k + 4, ";"))
          vector_aliases_.insert(s(k + 1).text);
      }
      aliases_known_ = true;
    }
    return vector_aliases_.count(w) > 0;
  }

  bool is_vector_cast(size_t k) const {  // `( float4 )` with the type at sig position k
    return k > 0 && is(k - 1, "(") && is(k + 1, ")") && is_vector_name(s(k).text);
  }

  // End (exclusive, sig position) of the operand of a C-style cast starting at k: prefix operators
  // and nested casts, a primary expression, then postfix operators. 0 when it is no operand.
  size_t cast_operand_end(size_t k) const {
    while (k < sig_.size()) {
      if (is(k, "-") || is(k, "+") || is(k, "!") || is(k, "~") || is(k, "*") || is(k, "&")) k++;
      else if (k + 2 < sig_.size() && is(k, "(") && is(k + 2, ")") && s(k + 1).kind == Kind::Ident &&
               (is_vector_name(s(k + 1).text) || scalar_types().count(s(k + 1).text)) &&
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

  // The `>` closing a template argument list opened at sig position k (`f<T>(`, `reinterpret_cast<T*>(`,
  // `S<T>::`), or 0 when this `<` is no such list.
  size_t template_args_end(size_t k, size_t limit) const {
    if (k == 0 || s(k - 1).kind != Kind::Ident) return 0;
    int depth = 0;
    for (size_t j = k; j < limit; j++) {
      if (is(j, "<")) depth++;
      else if (is(j, ">") && --depth == 0) return (is(j + 1, "(") || is(j + 1, "::") || is(j + 1, "{")) ? j : 0;
      else if (is(j, ";") || is(j, "{") || is(j, "}")) return 0;
    }
    return 0;
  }

  // MSL converts a comparison (a bool, or a bool vector) to 1 / 0; clang's vector comparisons give
  // -1 / 0 integer masks. An argument between open and close that is a comparison (and not the
  // condition of a ?:) is wrapped in msl_bool(), which gives MSL's values.
  void wrap_comparisons(size_t open, size_t close) {
    int depth = 0;
    bool compare = false, ternary = false;
    size_t first = open + 1;
    for (size_t j = open + 1; j <= close; j++) {
      if (j == close || (depth == 0 && s(j).text == ",")) {
        if (compare && !ternary && j > first) {
          prefixes_.push_back({first, "::metal::msl_bool("});
          suffixes_.push_back({j - 1, ")"});
        }
        compare = ternary = false;
        first = j + 1;
        continue;
      }
      const std::string& w = s(j).text;
      if (w == "<") {
        if (size_t end = template_args_end(j, close)) {
          j = end;
          continue;
        }
      }
      if (w == "(" || w == "[") depth++;
      else if (w == ")" || w == "]") depth--;
      if (depth != 0) continue;
      if (w == "?") ternary = true;
      const bool shift = (w == "<" && (is(j + 1, "<") || is(j - 1, "<"))) || (w == ">" && (is(j + 1, ">") || is(j - 1, ">")));
      if (((w == "<" || w == ">") && !shift) || (w == "=" && (is(j - 1, "=") || is(j - 1, "!")))) compare = true;
    }
  }

  // A cast's operand [from, end) that is a comparison, or one in parentheses, gets MSL's values.
  void wrap_cast_operand(size_t from, size_t end) {
    if (is(from, "(") && match(from) == end - 1) wrap_comparisons(from, end - 1);
    else wrap_comparisons(from - 1, end);
  }

  // Inside a template, `T(x)`, `(T)x` and static_cast<T>(x) with T a type parameter convert with MSL's
  // rules whatever T turns out to be (on clang vectors they would be bit casts): msl_make / msl_convert.
  void rewrite_template_casts() {
    for (size_t k = 0; k + 1 < sig_.size(); k++) {
      if (!is(k, "template") || !is(k + 1, "<") || s(k).consumed) continue;
      const size_t close = match(k + 1);
      std::set<std::string> types;
      for (const auto& [name, type] : template_parameters(k + 1))
        if (type && !name.empty()) types.insert(name);
      if (types.empty()) continue;
      const size_t end = declaration_end(k, sig_.size());
      for (size_t j = close + 1; j <= end && j < sig_.size(); j++) {
        if (s(j).consumed || s(j).kind != Kind::Ident || !types.count(s(j).text)) continue;
        const std::string& name = s(j).text;
        const bool member = is(j - 1, ".") || is(j - 1, "->") || is(j - 1, "::") || is(j - 1, "operator");
        if (is(j + 1, "(") && !member && !is(j + 2, "*") && !is(j + 2, "&")) {
          wrap_comparisons(j + 1, match(j + 1));
          sm(j).out = "::metal::msl_make<" + name + ">";
          sm(j).consumed = true;
        } else if (is(j - 1, "(") && is(j + 1, ")") && !is(j - 2, "sizeof") && !is(j - 2, "alignof") &&
                   !is(j - 2, "decltype") && !consumed(j - 1, j + 1)) {
          const size_t operand_end = cast_operand_end(j + 2);
          if (operand_end == 0) continue;
          wrap_cast_operand(j + 2, operand_end);
          blank(j - 1, j + 1, "::metal::msl_convert<" + name + ">(");
          suffixes_.push_back({operand_end - 1, ")"});
        } else if (is(j - 1, "<") && is(j - 2, "static_cast") && is(j + 1, ">") && !consumed(j - 2, j + 1)) {
          blank(j - 2, j + 1, "::metal::msl_convert<" + name + ">");
        }
      }
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
        tok.out = msl_literal(tok.text);
      } else if (tok.kind == Kind::Ident && is_vector_name(tok.text)) {
        if (is(k + 1, "(") && !(k > 0 && (is(k - 1, "operator")))) {
          wrap_comparisons(k + 1, match(k + 1));
          tok.out = "::metal::vmake<" + tok.text + ">";  // float4(...) constructor
        } else if (is_vector_cast(k) && !consumed(k - 1, k + 1) &&
                   !(k > 1 && (is(k - 2, "sizeof") || is(k - 2, "alignof") || is(k - 2, "decltype")))) {
          // (float4)x converts in MSL but bit-casts clang vectors: -> convert<float4>(x)
          const size_t end = cast_operand_end(k + 2);
          if (end == 0) continue;  // not a cast: e.g. a parameter list `(float4)`
          wrap_cast_operand(k + 2, end);
          blank(k - 1, k + 1, "::metal::convert<" + s(k).text + ">(");
          suffixes_.push_back({end - 1, ")"});
        } else if (k >= 2 && is(k - 1, "<") && s(k - 2).text == "static_cast" && is(k + 1, ">") &&
                   !consumed(k - 2, k + 1)) {
          blank(k - 2, k + 1, "::metal::convert<" + s(k).text + ">");  // static_cast<float4>(x)
        }
      }
    }
    // static_cast to a scalar or class type: C++'s, but half <-> bfloat goes through float as in MSL
    for (size_t k = 0; k + 1 < sig_.size(); k++)
      if (is(k, "static_cast") && is(k + 1, "<") && !s(k).consumed) sm(k).out = "::metal::msl_static_cast";
    // wrappers last: the loop above rewrites the tokens they wrap
    for (const auto& [k, text] : prefixes_) sm(k).out = text + sm(k).out;
    for (const auto& [k, text] : suffixes_) sm(k).out += text;
  }

  // Does parameter i exist in this pipeline (no condition, or its function constant is true)?
  bool present(size_t i) const {
    if (params_[i].condition.empty()) return true;
    auto it = constant_truth_.find(params_[i].condition);
    return it != constant_truth_.end() && it->second;
  }

  // The kernel's entry point. Parameter types come from the function's own type (through
  // aproto_rt::kernel_fn), so a template instance binds like a plain kernel.
  std::string entry_point() const {
    std::string buffers, tg_args, args, fits;
    uint32_t n_buffers = 0, n_tg = 0;
    for (size_t i = 0; i < params_.size(); i++) {
      const KernelParameter& p = params_[i];
      const std::string type = "aproto_arg_<" + std::to_string(i) + ">";
      if (!args.empty()) args += ",\n      ";
      if (!present(i)) {  // its function constant is false: Metal leaves it out, and so does the binding
        args += "::aproto_rt::absent_arg<" + type + ">()";
      } else if (p.attr == "buffer") {
        args += "::aproto_rt::buffer_arg<" + type + ">(aproto_b_[" + p.arg + "])";
        buffers += "  {" + p.arg + "u, \"" + p.name + "\", \"" + p.type + "\", ::aproto_rt::buffer_min_bytes<" + type +
                   ">(), ::aproto_rt::buffer_align<" + type + ">(), ::aproto_rt::buffer_readonly<" + type + ">()},\n";
        for (const auto& f : table_functions_)
          fits += "::aproto_rt::table_fits<" + type + ", decltype(&::" + f + ")>(), ";
        n_buffers++;
      } else if (p.attr == "threadgroup") {
        args += "(" + type + ")::aproto_rt::threadgroup_argument(" + p.arg + ")";
        tg_args += p.arg + "u, ";
        n_tg++;
      } else {
        args += "::aproto_rt::position<" + type + ">(aproto_pos_." + position_attributes().at(p.attr) + ")";
      }
    }
    std::string out = "\n// ---- generated by attention_proto's host backend\nnamespace {\n";
    out += "using aproto_fn_ = ::aproto_rt::kernel_fn<decltype(&" + call_ + ")>;\n";
    out += "template <unsigned I> using aproto_arg_ = typename aproto_fn_::template arg<I>;\n";
    if (n_buffers) out += "const aproto_buffer_desc aproto_buffers_[] = {\n" + buffers + "};\n";
    if (n_tg) out += "const uint32_t aproto_threadgroup_args_[] = {" + tg_args + "};\n";
    std::string names, pointers;
    for (const auto& f : table_functions_) {
      names += "\"" + f + "\", ";
      pointers += "reinterpret_cast<void*>(&::" + f + "), ";
    }
    if (!table_functions_.empty())
      out += "const char* const aproto_function_names_[] = {" + names + "};\nvoid* const aproto_functions_[] = {" +
             pointers + "};\nconst unsigned char aproto_function_fits_[] = {" + fits + "0};\n";
    out += "void aproto_run_thread_(void* const* aproto_b_) {\n  (void)aproto_b_;\n"
           "  const aproto_thread_pos& aproto_pos_ = ::aproto_rt::pos();\n  (void)aproto_pos_;\n  " + call_ + "(" + args + ");\n}\n";
    out += "void aproto_bind_(const aproto_runtime* rt) { ::aproto_rt::g_rt = rt; }\n}  // namespace\n";
    out += "extern \"C\" __attribute__((visibility(\"default\"))) const aproto_kernel_desc aproto_kernel = {\n"
           "  APROTO_ABI_VERSION, \"" + function_ + "\", " + std::to_string(target_->max_threads) + "u, " +
           std::to_string(n_buffers) + "u, " +
           (n_buffers ? "aproto_buffers_" : "nullptr") + ", " + std::to_string(n_tg) + "u, " +
           (n_tg ? "aproto_threadgroup_args_" : "nullptr") + ", aproto_bind_, aproto_run_thread_, " +
           std::to_string(table_functions_.size()) + "u, " +
           (table_functions_.empty() ? "nullptr, nullptr, nullptr" : "aproto_function_names_, aproto_functions_, aproto_function_fits_") +
           "};\n";
    return out;
  }
};

}  // namespace

std::string translate(const std::string& source, const std::string& function, const Constants& constants,
                      const std::string& source_name, const std::vector<std::string>& table_functions) {
  return Translator(source, function, constants, source_name, table_functions).run();
}

std::string translate_library(const std::string& source, const std::string& source_name) {
  // An empty kernel to translate against: it reaches nothing, so the library's own code is all kept.
  const Constants none;
  return Translator(source + "\nkernel void aproto_library_anchor_() {}\n", "aproto_library_anchor_", none, source_name)
      .run(false);
}

std::vector<LinkFunction> link_functions(const std::string& source, const std::string& source_name) {
  const Constants none;
  return Translator(source, "", none, source_name).linkables();
}

std::vector<KernelParameter> kernel_parameters(const std::string& source, const std::string& function,
                                               const std::string& source_name) {
  const Constants none;
  return Translator(source, function, none, source_name).parameters();
}

std::vector<std::string> kernel_names(const std::string& source, const std::string& source_name) {
  const Constants none;
  return Translator(source, "", none, source_name).names();
}

}  // namespace aproto::host
