#include "host/link.hpp"

#include <map>
#include <set>

#include "host/translate.hpp"
#include "runtime/source.hpp"

namespace aproto::host {

namespace {

std::string signature(const LinkFunction& f) {
  std::string s = f.result + " " + f.name + "(";
  for (size_t i = 0; i < f.params.size(); i++) s += (i ? ", " : "") + f.params[i];
  return s + ")";
}

// Where a linkable name lives: the kernel's own source (namespace ""), a library's namespace, or a
// stitched function generated here.
struct Found {
  LinkFunction f;
  std::string scope;  // "::" for the kernel's source or a stitched function, else "::aproto_lib_N::"
};

}  // namespace

std::string link_pipeline(const std::string& kernel_cpp, const std::string& kernel_source, const std::string& name,
                          const PipelineSpec& spec) {
  const std::string who = "[host] " + spec.key().substr(0, spec.key().find('|')) + ": ";
  std::map<std::string, Found> published;  // [[visible]] / [[stitchable]] functions by name
  std::vector<LinkFunction> externs;
  for (const LinkFunction& f : link_functions(kernel_source, name)) {
    if (f.attribute == "extern") externs.push_back(f);
    else published[f.name] = {f, "::"};
  }
  const bool calls_extern = [&] {
    for (const LinkFunction& e : externs)
      if (kernel_source.find(e.name + "(") != kernel_source.rfind(e.name + "(")) return true;
    return false;
  }();
  if (!calls_extern && spec.linked_functions.empty() && spec.table_functions.empty() && spec.libraries.empty() &&
      spec.stitched.empty())
    return kernel_cpp;
  std::string glue = "\n// ---- functions linked by the pipeline (attention_proto host backend)\nusing namespace metal;\n";
  for (size_t i = 0; i < spec.libraries.size(); i++) {
    const Source& lib = spec.libraries[i];
    const std::string lib_name = lib.path.empty() ? "<library " + std::to_string(i) + ">" : lib.path;
    const std::string text = resolve_includes({lib.text, lib_name, lib.include_dirs});
    const std::string scope = "aproto_lib_" + std::to_string(i);
    for (const LinkFunction& f : link_functions(text, lib_name))
      if (f.attribute != "extern" && !published.count(f.name)) published[f.name] = {f, "::" + scope + "::"};
    glue += "namespace " + scope + " {\n" + translate_library(text, lib_name) + "\n}  // namespace " + scope + "\n";
  }
  for (const StitchingGraph& g : spec.stitched) {
    const std::string what = who + "stitching graph '" + g.function + "': ";
    if (g.nodes.empty()) throw CompileError(what + "has no nodes (the last node is its output)");
    std::map<int, std::string> inputs;  // input index -> type, from the parameters it feeds
    std::vector<const LinkFunction*> calls;
    std::string body;
    for (size_t n = 0; n < g.nodes.size(); n++) {
      const auto& node = g.nodes[n];
      auto it = published.find(node.function);
      if (it == published.end() || it->second.f.attribute != "stitchable")
        throw CompileError(what + "node " + std::to_string(n) + " calls '" + node.function + "', which is " +
                           (it == published.end() ? "no function of the libraries" : "[[visible]], not [[stitchable]]") +
                           ": a stitching graph calls only [[stitchable]] functions");
      const LinkFunction& f = it->second.f;
      if (node.arguments.size() != f.params.size())
        throw CompileError(what + "node " + std::to_string(n) + " passes " + std::to_string(node.arguments.size()) +
                           " arguments to " + signature(f) + " (" + f.where + ")");
      std::string args;
      for (size_t a = 0; a < f.params.size(); a++) {
        const int arg = node.arguments[a];
        if (arg < 0 && size_t(-1 - arg) >= n)
          throw CompileError(what + "node " + std::to_string(n) + " takes the result of node " +
                             std::to_string(-1 - arg) + ", which does not come before it");
        const std::string type = arg >= 0 ? (inputs.count(arg) ? inputs[arg] : f.params[a]) : calls[-1 - arg]->result;
        if (type != f.params[a])
          throw CompileError(what + "node " + std::to_string(n) + " argument " + std::to_string(a) + " is " + type +
                             ", but " + signature(f) + " takes " + f.params[a]);
        if (arg >= 0) inputs[arg] = type;
        args += std::string(a ? ", " : "") + (arg >= 0 ? "in" + std::to_string(arg) : "n" + std::to_string(-1 - arg));
      }
      body += "  const " + f.result + " n" + std::to_string(n) + " = " + it->second.scope + f.name + "(" + args + ");\n";
      calls.push_back(&f);
    }
    LinkFunction made{g.function, "visible", calls.back()->result, {}, "stitching graph '" + g.function + "'"};
    std::string params;
    for (int i = 0; i < int(inputs.size()); i++) {
      if (!inputs.count(i))
        throw CompileError(what + "input " + std::to_string(i) + " is never used (inputs are numbered 0..n-1)");
      made.params.push_back(inputs[i]);
      params += (i ? ", " : "") + inputs[i] + " in" + std::to_string(i);
    }
    glue += made.result + " " + g.function + "(" + params + ") {\n" + body + "  return n" +
            std::to_string(g.nodes.size() - 1) + ";\n}\n";
    published[g.function] = {made, "::"};
  }
  std::set<std::string> linked;
  for (const auto* list : {&spec.linked_functions, &spec.table_functions})
    for (const std::string& f : *list) {
      auto it = published.find(f);
      if (it == published.end()) {
        std::string names;
        for (const auto& [n, found] : published) names += (names.empty() ? "" : ", ") + n;
        throw CompileError(who + "linked function '" + f + "' is not a [[visible]] or [[stitchable]] function of "
                           "the kernel's source, its libraries or its stitching graphs (Metal publishes only those; " +
                           (names.empty() ? std::string("there are none") : "there are: " + names) + ")");
      }
      linked.insert(f);
      if (it->second.scope == "::" || it->second.scope.empty()) continue;  // defined at global scope already
      const LinkFunction& d = it->second.f;
      std::string params, args;
      for (size_t i = 0; i < d.params.size(); i++) {
        params += (i ? ", " : "") + d.params[i] + " a" + std::to_string(i);
        args += (i ? ", " : "") + std::string("a") + std::to_string(i);
      }
      glue += d.result + " " + d.name + "(" + params + ") { return " + it->second.scope + d.name + "(" + args + "); }\n";
      it->second.scope = "::";
    }
  for (const LinkFunction& e : externs) {
    if (kernel_source.find(e.name + "(") == kernel_source.rfind(e.name + "(")) continue;  // declared, never called
    auto it = published.find(e.name);
    if (!linked.count(e.name))
      throw CompileError(e.where + ": error: the kernel calls `extern` " + signature(e) + ", which no linked "
                         "function resolves (Metal fails the pipeline: name a [[visible]] function of that name in "
                         "linked_functions)");
    if (signature(it->second.f) != signature(e))
      throw CompileError(e.where + ": error: `extern` " + signature(e) + " does not match the linked " +
                         signature(it->second.f) + " (" + it->second.f.where + ")");
  }
  const std::string marker = "\n// ---- generated by attention_proto's host backend\n";
  const size_t at = kernel_cpp.rfind(marker);
  return kernel_cpp.substr(0, at) + glue + kernel_cpp.substr(at);
}

}  // namespace aproto::host
