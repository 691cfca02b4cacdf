// Bindings of the backend-neutral runtime: backends, device info, pipelines and dispatch.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings/convert.hpp"
#include "host/compiler.hpp"
#include "runtime/backend.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// A pipeline together with the backend that built it.
struct BoundPipeline {
  std::string backend;
  std::shared_ptr<aproto::Pipeline> pipeline;
};

nb::dict device_dict(const aproto::DeviceInfo& d) {
  nb::dict out;
  out["backend"] = d.backend;
  out["name"] = d.name;
  out["family"] = d.family;
  out["max_threadgroup_memory"] = d.max_threadgroup_memory;
  out["simd_width"] = d.simd_width;
  out["max_threads_per_threadgroup"] = d.max_threads_per_threadgroup;
  out["compute_units"] = d.compute_units;
  out["unified_memory"] = d.unified_memory;
  nb::dict extra;
  for (const auto& [k, v] : d.extra) extra[k.c_str()] = v;
  if (d.backend == "host") {
    try {
      extra["compiler"] = aproto::host::compiler_description();
    } catch (const aproto::Error& e) {
      extra["compiler"] = std::string("none: ") + e.what();
    }
  }
  out["extra"] = extra;
  return out;
}

nb::dict pipeline_dict(const BoundPipeline& p) {
  nb::dict out = aproto::bindings::to_dict(p.pipeline->info());
  out["backend"] = p.backend;
  return out;
}

using ByteView = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

}  // namespace

void init_runtime(nb::module_& m) {
  auto base = nb::exception<aproto::Error>(m, "AttentionProtoError", PyExc_RuntimeError);
  auto compile_error = nb::exception<aproto::CompileError>(m, "ShaderCompileError", base);
  nb::exception<aproto::ArchiveMissError>(m, "ArchiveMissError", compile_error);
  nb::exception<aproto::BackendUnavailable>(m, "BackendUnavailableError", base);
  auto dispatch_error = nb::exception<aproto::DispatchError>(m, "DispatchError", base);
  nb::exception<aproto::DeadlockError>(m, "DeadlockError", dispatch_error);
  nb::exception<aproto::LimitError>(m, "ResourceLimitError", dispatch_error);
  nb::exception<aproto::OutOfBoundsError>(m, "OutOfBoundsError", dispatch_error);

  m.def("backends", &aproto::available_backends, "Names of the backends usable here, best first.");

  m.def(
      "device_info", [](const std::string& backend) { return device_dict(aproto::get_backend(backend).info()); },
      "backend"_a = "", "Device facts of a backend ('' = the best one) as a dict.");

  m.def(
      "configure_host",
      [](const std::string& include_dir, const std::string& zig) { aproto::host::configure_compiler({include_dir, zig}); },
      "include_dir"_a, "zig"_a = "",
      "Tells the host backend where its metal_stdlib emulation headers and the ziglang compiler live.");

  nb::class_<BoundPipeline>(m, "Pipeline", "A compiled kernel specialisation on one backend.")
      .def_prop_ro("info", &pipeline_dict, "Facts of the pipeline (function, key, limits, compile time, cache).")
      .def_prop_ro("backend", [](const BoundPipeline& p) { return p.backend; });

  m.def(
      "pipeline",
      [](const std::string& text, const std::string& path, const std::vector<std::string>& include_dirs,
         const std::string& function, const nb::dict& constants, const std::string& backend) {
        aproto::Constants values = aproto::bindings::to_constants(constants);
        aproto::Backend& b = aproto::get_backend(backend);
        aproto::Source source{text, path, include_dirs};
        nb::gil_scoped_release release;  // compiling takes seconds
        return BoundPipeline{b.info().backend, b.pipeline(source, function, values)};
      },
      "source"_a, "path"_a, "include_dirs"_a, "function"_a, "constants"_a, "backend"_a = "",
      "Builds (or fetches from the caches) the pipeline of `function` specialised by `constants`\n"
      "(keys: constant names, or ints for [[function_constant(i)]] indices).");

  m.def(
      "dispatch",
      [](BoundPipeline& p, const nb::list& buffers, const std::vector<bool>& writable, std::array<uint32_t, 3> grid,
         std::array<uint32_t, 3> threadgroup, const std::map<uint32_t, uint64_t>& threadgroup_memory, bool checked) {
        if (writable.size() != buffers.size()) throw nb::value_error("writable must have one flag per buffer");
        std::vector<aproto::BufferArg> args(buffers.size());
        std::vector<ByteView> keep;  // the views hold the arrays alive across the dispatch
        keep.reserve(buffers.size());
        for (size_t i = 0; i < buffers.size(); i++) {
          if (buffers[i].is_none()) continue;
          keep.push_back(nb::cast<ByteView>(buffers[i]));
          args[i].data = const_cast<uint8_t*>(keep.back().data());
          args[i].nbytes = keep.back().nbytes();
          args[i].writable = writable[i];
        }
        aproto::DispatchArgs d;
        d.grid = grid;
        d.threadgroup = threadgroup;
        d.threadgroup_memory = threadgroup_memory;
        d.checked = checked;
        aproto::Backend& b = aproto::get_backend(p.backend);
        aproto::DispatchResult r;
        {
          nb::gil_scoped_release release;
          r = b.dispatch(*p.pipeline, args, d);
        }
        nb::dict out;
        out["seconds"] = r.seconds;
        out["timer"] = r.timer;
        out["bytes_copied"] = r.bytes_copied;
        out["buffers_copied"] = r.buffers_copied;
        return out;
      },
      "pipeline"_a, "buffers"_a, "writable"_a, "grid"_a, "threadgroup"_a, "threadgroup_memory"_a, "checked"_a = false,
      "Runs one dispatch and waits for it. `buffers` are 1-D uint8 views (or None) indexed by [[buffer(n)]];\n"
      "`grid` counts threadgroups. Returns the timing.");
}
