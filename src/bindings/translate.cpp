// Bindings of the MSL front end: what a source defines, without compiling it.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "host/translate.hpp"
#include "runtime/source.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace aproto::bindings {

void init_translate(nb::module_& m) {
  m.def(
      "kernel_names",
      [](const std::string& text, const std::string& path, const std::vector<std::string>& include_dirs) {
        aproto::Source source{text, path, include_dirs};
        return aproto::host::kernel_names(aproto::resolve_includes(source), path.empty() ? "<source>" : path);
      },
      "source"_a, "path"_a, "include_dirs"_a,
      "The kernel names an MSL source publishes (template instances under their [[host_name]]), in source order.");
  m.def(
      "kernel_parameters",
      [](const std::string& text, const std::string& path, const std::vector<std::string>& include_dirs,
         const std::string& function) {
        aproto::Source source{text, path, include_dirs};
        nb::list out;
        for (const auto& p : aproto::host::kernel_parameters(aproto::resolve_includes(source), function,
                                                             path.empty() ? "<source>" : path)) {
          nb::dict d;
          d["type"] = p.type;
          d["name"] = p.name;
          d["attr"] = p.attr;
          d["arg"] = p.arg;
          d["address_space"] = p.address_space;
          d["condition"] = p.condition;
          d["line"] = p.line;
          out.append(d);
        }
        return out;
      },
      "source"_a, "path"_a, "include_dirs"_a, "function"_a,
      "The parameters of a kernel in declaration order, [[buffer(n)]] indices resolved as Metal numbers them.");
}

}  // namespace aproto::bindings
