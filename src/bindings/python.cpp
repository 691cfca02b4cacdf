#include "bindings/python.hpp"

#include <nanobind/stl/vector.h>

namespace aproto::bindings {

namespace {

std::string py_type_name(nb::handle obj) { return nb::cast<std::string>(nb::handle(obj.type()).attr("__name__")); }

nb::object numpy_type(const char* name) {
  // Kept for the life of the process and never released: a static nb::object would be released after
  // the interpreter is gone, at exit.
  static nb::handle np = nb::module_::import_("numpy").release();
  return np.attr(name);
}

}  // namespace

bool is_ndarray(nb::handle obj) { return nb::isinstance(obj, numpy_type("ndarray")); }

void set_links(PipelineSpec& spec, const std::vector<std::string>& table_functions, const Libraries& libraries,
               const Graphs& stitched, const std::vector<std::string>& include_dirs) {
  spec.table_functions = table_functions;
  for (const auto& [text, path] : libraries) spec.libraries.push_back({text, path, include_dirs});
  for (const auto& [name, nodes] : stitched) {
    StitchingGraph g{name, {}};
    for (const auto& [fn, args] : nodes) g.nodes.push_back({fn, args});
    spec.stitched.push_back(g);
  }
}

Constants to_constants(const nb::dict& constants) {
  Constants values;
  for (auto [k, v] : constants) {
    std::string key =
        nb::isinstance<nb::int_>(k) ? "#" + std::to_string(nb::cast<int64_t>(k)) : nb::cast<std::string>(k);
    if (nb::isinstance<nb::bool_>(v) || nb::isinstance(v, numpy_type("bool_"))) {
      values[key] = ConstantValue::boolean(nb::cast<bool>(v.attr("__bool__")()));
    } else if (nb::isinstance<nb::int_>(v)) {
      values[key] = ConstantValue::integer(nb::cast<int64_t>(v));
    } else if (nb::isinstance<nb::float_>(v)) {
      values[key] = ConstantValue::floating(nb::cast<double>(v));
    } else if (nb::isinstance(v, numpy_type("generic"))) {
      const std::string kind = nb::cast<std::string>(v.attr("dtype").attr("kind"));
      nb::object item = v.attr("item")();
      if (kind == "u") values[key] = ConstantValue::unsigned_integer(nb::cast<uint64_t>(item));
      else if (kind == "i") values[key] = ConstantValue::integer(nb::cast<int64_t>(item));
      else if (kind == "f") values[key] = ConstantValue::floating(nb::cast<double>(item));
      else throw ArgumentTypeError("constant '" + key + "' must be a bool, int or float, not " + py_type_name(v));
    } else {
      throw ArgumentTypeError("constant '" + key + "' must be a bool, int or float, not " + py_type_name(v));
    }
  }
  return values;
}

proto::Array to_array(nb::handle obj, const std::string& who) {
  if (!is_ndarray(obj)) throw ArgumentTypeError(who + " must be a numpy array, got " + py_type_name(obj));
  nb::dict iface = nb::cast<nb::dict>(obj.attr("__array_interface__"));
  nb::tuple data = nb::cast<nb::tuple>(iface["data"]);
  proto::Array a;
  a.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(data[0]));
  a.writable = !nb::cast<bool>(data[1]);
  a.shape = nb::cast<std::vector<int64_t>>(iface["shape"]);
  nb::object dtype = obj.attr("dtype");
  a.dtype = nb::cast<std::string>(dtype.attr("name"));
  a.itemsize = nb::cast<uint32_t>(dtype.attr("itemsize"));
  nb::object strides = iface["strides"];
  if (strides.is_none()) {  // C-contiguous
    a.strides.assign(a.shape.size(), 0);
    int64_t s = a.itemsize;
    for (size_t d = a.shape.size(); d-- > 0;) { a.strides[d] = s; s *= a.shape[d]; }
  } else {
    a.strides = nb::cast<std::vector<int64_t>>(strides);
  }
  return a;
}

proto::Array to_planned_array(nb::handle obj, const std::string& who) {
  if (!nb::isinstance<nb::tuple>(obj) || nb::len(obj) != 2)
    throw ArgumentTypeError(who + ": a plan takes (shape, dtype) pairs, got " + py_type_name(obj));
  nb::tuple pair = nb::cast<nb::tuple>(obj);
  proto::Array a;
  a.planned = true;
  a.shape = nb::cast<std::vector<int64_t>>(pair[0]);
  nb::object dtype = numpy_type("dtype")(pair[1]);
  a.dtype = nb::cast<std::string>(dtype.attr("name"));
  a.itemsize = nb::cast<uint32_t>(dtype.attr("itemsize"));
  return a;
}

proto::OptionValue to_option(nb::handle obj, const std::string& who) {
  if (obj.is_none()) return std::monostate{};
  if (nb::isinstance<nb::bool_>(obj) || nb::isinstance(obj, numpy_type("bool_")))
    return nb::cast<bool>(obj.attr("__bool__")());
  if (nb::isinstance<nb::int_>(obj) || nb::isinstance(obj, numpy_type("integer"))) return nb::cast<int64_t>(nb::int_(obj));
  if (nb::isinstance<nb::float_>(obj) || nb::isinstance(obj, numpy_type("floating")))
    return nb::cast<double>(nb::float_(obj));
  if (nb::isinstance<nb::str>(obj)) return nb::cast<std::string>(obj);
  throw ArgumentTypeError(who + " must be a bool, int, float or str, got " + py_type_name(obj));
}

}  // namespace aproto::bindings
