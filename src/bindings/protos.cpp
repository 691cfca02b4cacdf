// Bindings of the prototypes: one function per registered prototype, declared from its spec (no code
// per prototype here), and plan() for what a call would launch.
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings/python.hpp"
#include "protos/proto.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace aproto::bindings {

const proto::Proto& find_proto(const std::string& name) {
  std::string names;
  for (const proto::Proto* p : proto::registry()) {
    if (p->name == name) return *p;
    names += (names.empty() ? "" : ", ") + p->name;
  }
  throw ArgumentError("[runtime] no prototype '" + name + "' (prototypes: " + names + ")");
}

// Python dicts -> a Call. `planned`: arrays are (shape, dtype) pairs.
proto::Call make_call(const proto::Proto& p, const nb::dict& arrays, const nb::dict& options, const DeviceInfo& device,
                      bool planned) {
  std::map<std::string, proto::Array> a;
  for (auto [k, v] : arrays) {
    const std::string name = nb::cast<std::string>(k);
    if (v.is_none()) continue;
    const std::string who = "[" + p.name + "] " + name;
    a[name] = planned ? to_planned_array(v, who) : to_array(v, who);
  }
  std::map<std::string, proto::OptionValue> o;
  for (auto [k, v] : options) {
    const std::string name = nb::cast<std::string>(k);
    o[name] = to_option(v, "[" + p.name + "] " + name);
  }
  return proto::Call(p, std::move(a), std::move(o), device);
}

namespace {

// The binding's docstring, generated from the spec so it never drifts from what the entry checks.
std::string docstring(const proto::Proto& p) {
  std::string doc = p.doc + "\n\nArrays (numpy, C-contiguous, used in place; None for an absent optional one):\n";
  for (const auto& a : p.args) {
    std::string dtypes;
    for (const auto& d : a.dtypes) dtypes += (dtypes.empty() ? "" : "|") + (d[0] == '=' ? "dtype of " + d.substr(1) : d);
    doc += "  " + a.name + " [" + a.shape + "] " + dtypes + (a.output ? ", written" : "") +
           (a.optional ? ", optional" : "") + "\n";
  }
  doc += "Options:\n";
  for (const auto& o : p.options) doc += "  " + o.name + ": " + o.doc + "\n";
  doc += "Returns a DispatchTiming. Bad input raises ValueError / TypeError naming the argument, before any "
         "dispatch. Use the attention_proto function of the same name: it fills in defaults.";
  return doc;
}

}  // namespace

void init_protos(nb::module_& m) {
  static std::vector<std::string> docs;  // nanobind keeps the pointer: the strings must outlive the module
  docs.reserve(proto::registry().size());
  for (const proto::Proto* p : proto::registry()) {
    docs.push_back(docstring(*p));
    m.def(
        p->name.c_str(),
        [p](const nb::dict& arrays, const nb::dict& options, const std::string& backend, uint32_t repeat) {
          Backend& b = get_backend(backend);
          proto::Call call = make_call(*p, arrays, options, b.info(), false);
          if (repeat < 1) call.fail("repeat must be >= 1");
          nb::gil_scoped_release release;  // compiling (first use) and the dispatch take a while
          return proto::run(call, b.info().backend, repeat);
        },
        "arrays"_a, "options"_a, "backend"_a = "", "repeat"_a = 1, docs.back().c_str());
  }
  m.def(
      "plan",
      [](const std::string& name, const nb::dict& shapes, const nb::dict& options, const std::string& backend,
         bool build) {
        const proto::Proto& p = find_proto(name);
        Backend& b = get_backend(backend);
        proto::Call call = make_call(p, shapes, options, b.info(), true);
        nb::gil_scoped_release release;
        return proto::plan(call, b.info().backend, build);
      },
      "proto"_a, "shapes"_a, "options"_a, "backend"_a = "", "build"_a = false,
      "The launches a prototype call would make (pipeline keys, geometry, threadgroup memory) from "
      "{argument: (shape, dtype)} alone, without dispatching; `build` also builds their pipelines (PipelineInfo).");
  m.def("set_shader_note", &proto::set_shader_note, "note"_a,
        "Appends the comment `note` to every prototype shader's text from now on ('' = none), so Metal's own "
        "shader cache has never seen it: cold compiles (prototype 4, in a process of its own).");
  m.def(
      "proto_facts", [](const std::string& name) { return find_proto(name).facts; }, "proto"_a,
      "Limits and supported values a prototype's entry point checks against (e.g. 'head_dims').");
  m.def(
      "protos",
      [] {
        std::vector<std::string> names;
        for (const proto::Proto* p : proto::registry()) names.push_back(p->name);
        return names;
      },
      "Names of the prototypes in this build.");
}

}  // namespace aproto::bindings
