// Conversions between Python values and runtime types, shared by the binding files.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "runtime/backend.hpp"

namespace aproto::bindings {

namespace nb = nanobind;

// One function-constant value: bool, int, float, or a numpy scalar (which keeps its signedness).
inline ConstantValue to_constant(const std::string& name, nb::handle v) {
  if (nb::isinstance<nb::bool_>(v)) return ConstantValue::boolean(nb::cast<bool>(v));
  std::string type = nb::cast<std::string>(nb::str(nb::handle(v.type()).attr("__name__")));
  if (type == "bool_") return ConstantValue::boolean(nb::cast<bool>(v.attr("item")()));
  if (nb::isinstance<nb::int_>(v)) return ConstantValue::integer(nb::cast<int64_t>(v));
  if (nb::isinstance<nb::float_>(v)) return ConstantValue::floating(nb::cast<double>(v));
  if (nb::hasattr(v, "dtype")) {
    std::string kind = nb::cast<std::string>(v.attr("dtype").attr("kind"));
    nb::object item = v.attr("item")();
    if (kind == "u") return ConstantValue::unsigned_integer(nb::cast<uint64_t>(item));
    if (kind == "i") return ConstantValue::integer(nb::cast<int64_t>(item));
    if (kind == "f") return ConstantValue::floating(nb::cast<double>(item));
  }
  throw nb::type_error(("constant '" + name + "' must be a bool, int or float, not " + type).c_str());
}

// {name or [[function_constant(i)]] index: value} -> Constants ("#i" keys for indices).
inline Constants to_constants(const nb::dict& constants) {
  Constants values;
  for (auto [k, v] : constants) {
    std::string key =
        nb::isinstance<nb::int_>(k) ? "#" + std::to_string(nb::cast<int64_t>(k)) : nb::cast<std::string>(k);
    values[key] = to_constant(key, v);
  }
  return values;
}

// The facts of a pipeline as a Python dict.
inline nb::dict to_dict(const PipelineInfo& i) {
  nb::dict out;
  out["function"] = i.function;
  out["key"] = i.key;
  out["max_total_threads_per_threadgroup"] = i.max_total_threads_per_threadgroup;
  out["thread_execution_width"] = i.thread_execution_width;
  out["static_threadgroup_memory"] = i.static_threadgroup_memory;
  out["compile_seconds"] = i.compile_seconds;
  out["cache"] = i.cache;
  return out;
}

}  // namespace aproto::bindings
