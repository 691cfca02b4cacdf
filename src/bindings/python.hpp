// Conversions between Python values and the core's types, shared by the binding files.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>
#include <utility>
#include <vector>

#include "protos/proto.hpp"
#include "runtime/backend.hpp"

namespace aproto::bindings {

namespace nb = nanobind;

// {name or [[function_constant(i)]] index: value} -> Constants ("#i" keys for indices). Values are bool,
// int, float or numpy scalars (which keep their signedness). TypeError otherwise.
Constants to_constants(const nb::dict& constants);

// What attention_proto.Kernel links beyond linked_functions, as it passes it: libraries as (text, path)
// pairs (searched with the kernel's include directories) and stitching graphs as (name, [(function,
// arguments)]) with PipelineSpec's argument encoding. Sets them on `spec`.
using Libraries = std::vector<std::pair<std::string, std::string>>;
using Graphs = std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::vector<int>>>>>;
void set_links(PipelineSpec& spec, const std::vector<std::string>& table_functions, const Libraries& libraries,
               const Graphs& stitched, const std::vector<std::string>& include_dirs);

// A numpy array as the core sees it: data pointer, shape, byte strides, dtype name, read-only flag,
// read through __array_interface__ (so ml_dtypes.bfloat16 arrives as "bfloat16", which DLPack lacks).
// `who` prefixes the TypeError for anything that is not a numpy array, e.g. "[flash_attention] q".
proto::Array to_array(nb::handle obj, const std::string& who);
bool is_ndarray(nb::handle obj);

// A (shape, dtype) pair standing for an array in a plan.
proto::Array to_planned_array(nb::handle obj, const std::string& who);

// A Python option value: None, bool (numpy bool too), int, float, str. TypeError otherwise.
proto::OptionValue to_option(nb::handle obj, const std::string& who);

// The registered prototype `name` (ValueError listing them otherwise).
const proto::Proto& find_proto(const std::string& name);
// Python dicts of arrays and options -> a Call. `planned`: arrays are (shape, dtype) pairs.
proto::Call make_call(const proto::Proto& p, const nb::dict& arrays, const nb::dict& options, const DeviceInfo& device,
                      bool planned);

}  // namespace aproto::bindings
