// Bindings of the Metal-only API: binary archives, cache reset and counters (prototype 4 measures
// cold / warm / archive pipeline creation with them). Compiled everywhere; the functions exist only
// where the Metal backend is built in (macOS), and `has_metal_backend` says which.
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings/convert.hpp"
#include "runtime/backend.hpp"
#ifdef APROTO_WITH_METAL
#include "metal/metal_backend.hpp"
#endif

namespace nb = nanobind;
using namespace nb::literals;

#ifdef APROTO_WITH_METAL
namespace {
// The Metal backend, or BackendUnavailable when this Mac has no Metal device.
aproto::MetalBackend& metal() { return dynamic_cast<aproto::MetalBackend&>(aproto::get_backend("metal")); }
}  // namespace
#endif

void init_metal(nb::module_& m) {
#ifdef APROTO_WITH_METAL
  m.attr("has_metal_backend") = true;
  m.def(
      "metal_set_archive",
      [](const std::string& path, bool fail_on_miss) {
        nb::gil_scoped_release release;
        metal().set_archive(path, fail_on_miss);
      },
      "path"_a, "fail_on_miss"_a = false,
      "Opens (or starts) the binary archive at `path`; pipelines are looked up in it first. With\n"
      "`fail_on_miss` a pipeline missing from the archive raises ArchiveMissError instead of compiling.");
  m.def("metal_clear_archive", [] { metal().clear_archive(); }, "Stops using the binary archive.");
  m.def("metal_archive_path", [] { return metal().archive_path(); }, "Path of the current archive ('' if none).");
  m.def(
      "metal_archive_add",
      [](const std::string& text, const std::string& path, const std::vector<std::string>& include_dirs,
         const std::string& function, const nb::dict& constants) {
        aproto::Constants values = aproto::bindings::to_constants(constants);
        aproto::Source source{text, path, include_dirs};
        nb::gil_scoped_release release;
        return metal().archive_add(source, function, values);
      },
      "source"_a, "path"_a, "include_dirs"_a, "function"_a, "constants"_a,
      "Compiles one pipeline into the current archive; returns the seconds it took.");
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
#else
  m.attr("has_metal_backend") = false;
#endif
}
