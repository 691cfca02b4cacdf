// Bindings of the Metal-only API: binary archives, cache reset and counters (prototype 4 measures cold /
// warm / archive pipeline creation with them). Declared on every platform, so the stubs list them
// everywhere; without the Metal backend (or device) each raises BackendUnavailableError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings/python.hpp"
#include "runtime/backend.hpp"
#ifdef APROTO_WITH_METAL
#include "metal/metal_backend.hpp"
#endif

namespace nb = nanobind;
using namespace nb::literals;

namespace aproto::bindings {

namespace {

#ifdef APROTO_WITH_METAL
constexpr bool kBuiltWithMetal = true;
// The Metal backend, or BackendUnavailable when this Mac has no Metal device.
MetalBackend& metal() { return dynamic_cast<MetalBackend&>(get_backend("metal")); }
#else
constexpr bool kBuiltWithMetal = false;
struct NoMetal {
  [[noreturn]] void fail() const {
    throw BackendUnavailable("[metal] this build has no Metal backend (it is built on macOS only); binary "
                             "archives and Metal counters need a Mac with an Apple GPU");
  }
  void set_archive(const std::string&, bool) { fail(); }
  void clear_archive() { fail(); }
  std::string archive_path() const { fail(); }
  const DeviceInfo& info() const { fail(); }
  double archive_add(const Source&, const PipelineSpec&) { fail(); }
  void archive_serialize() { fail(); }
  void clear_caches() { fail(); }
  std::map<std::string, uint64_t> stats() const { fail(); }
};
NoMetal metal() { return {}; }
#endif

}  // namespace

void init_metal(nb::module_& m) {
  m.attr("has_metal_backend") = kBuiltWithMetal;
  m.def(
      "metal_set_archive",
      [](const std::string& path, bool fail_on_miss) {
        nb::gil_scoped_release release;
        metal().set_archive(path, fail_on_miss);
      },
      "path"_a, "fail_on_miss"_a = false,
      "Opens (or starts) the binary archive at `path`; pipelines are looked up in it first. With `fail_on_miss` a "
      "pipeline missing from the archive raises ArchiveMissError instead of compiling.");
  m.def("metal_clear_archive", [] { metal().clear_archive(); }, "Stops using the binary archive.");
  m.def("metal_archive_path", [] { return metal().archive_path(); }, "Path of the current archive ('' if none).");
  m.def(
      "metal_archive_add",
      [](const std::string& text, const std::string& path, const std::vector<std::string>& include_dirs,
         const std::string& function, const nb::dict& constants, const std::map<std::string, std::string>& defines,
         const std::vector<std::string>& linked_functions, uint32_t max_threads,
         const std::vector<std::string>& table_functions, const Libraries& libraries, const Graphs& stitched) {
        PipelineSpec spec{function, to_constants(constants), defines, linked_functions, max_threads};
        set_links(spec, table_functions, libraries, stitched, include_dirs);
        Source source{text, path, include_dirs};
        nb::gil_scoped_release release;
        return metal().archive_add(source, spec);
      },
      "source"_a, "path"_a, "include_dirs"_a, "function"_a, "constants"_a, "defines"_a, "linked_functions"_a,
      "max_threads_per_threadgroup"_a, "table_functions"_a = std::vector<std::string>{},
      "libraries"_a = Libraries{}, "stitched"_a = Graphs{},
      "Compiles one pipeline into the current archive (with the same descriptor lookups use); returns the seconds.");
  m.def(
      "metal_archive_add_call",
      [](const std::string& name, const nb::dict& shapes, const nb::dict& options) {
        auto&& backend = metal();
        const proto::Proto& p = find_proto(name);
        proto::Call call = make_call(p, shapes, options, backend.info(), true);
        nb::gil_scoped_release release;
        double seconds = 0.0;
        for (const proto::LaunchInfo& l : proto::plan(call, "metal", false))
          seconds += backend.archive_add(proto::shader_source(p), l.spec);
        return seconds;
      },
      "proto"_a, "shapes"_a, "options"_a,
      "Compiles every pipeline a prototype call would launch ({argument: (shape, dtype)} and its options, as for "
      "plan()) into the current archive; returns the seconds.");
  m.def(
      "metal_archive_serialize",
      [] {
        nb::gil_scoped_release release;
        metal().archive_serialize();
      },
      "Writes the current archive to its path.");
  m.def("metal_clear_caches", [] { metal().clear_caches(); },
        "Forgets every cached library and pipeline, so the next pipeline() compiles (or reads the archive).");
  m.def("metal_stats", [] { return metal().stats(); }, "Counters: compiles, archive hits/misses, copies, ...");
}

}  // namespace aproto::bindings
