// The Metal backend: the runtime interface (runtime/backend.hpp) on Apple GPUs through metal-cpp.
// Built on macOS only (cmake/metal.cmake defines APROTO_WITH_METAL); elsewhere the test suite
// compile-checks it for macOS against Apple's metal-cpp headers. This header does not include
// metal-cpp, so the registry and the bindings can include it cheaply.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend.hpp"

namespace aproto {

class MetalBackend final : public Backend {
 public:
  ~MetalBackend() override;

  const DeviceInfo& info() const override;
  // Cached by (hash of the include-resolved source with its defines, spec.key()). PipelineInfo::cache is
  // "memory" (this process built it before), "archive" (built from the binary archive) or "compiled".
  // Throws CompileError (or ArchiveMissError, see set_archive).
  std::shared_ptr<Pipeline> pipeline(const Source& source, const PipelineSpec& spec) override;
  // All steps, `repeat` times, in one command buffer and one serial compute encoder; waits. Thread-safe.
  // DispatchArgs::checked is ignored (bounds checking is a host-backend feature).
  DispatchResult dispatch(const std::vector<Dispatch>& steps, uint32_t repeat) override;

  // --- Binary archives (Metal only; prototype 4) ---
  // Opens (or starts, if the file does not exist) the archive at `path`. From then on every pipeline not
  // in the memory cache is first looked up in the archive only; a miss then either compiles as usual
  // (fail_on_miss false; counted in stats()["archive_misses"]) or throws ArchiveMissError.
  void set_archive(const std::string& path, bool fail_on_miss = false);
  // Stops using the archive (pipelines compile as usual again).
  void clear_archive();
  // Path of the current archive, or "" when none is set.
  std::string archive_path() const;
  // Compiles the pipeline of `spec` into the current archive (with the descriptor pipeline() looks it up
  // by); returns the seconds it took. Throws Error when no archive is set, CompileError when compiling fails.
  double archive_add(const Source& source, const PipelineSpec& spec);
  // Writes the current archive to its path. Throws Error.
  void archive_serialize();

  // Forgets every cached library and pipeline (the next pipeline() call compiles, or reads the archive).
  void clear_caches();
  // Counters since start: libraries_compiled, libraries_prebuilt, pipelines_compiled, archive_hits,
  // archive_misses, dispatches (dispatch() calls), buffers_wrapped, buffers_copied, bytes_copied.
  std::map<std::string, uint64_t> stats() const;

 private:
  struct State;  // metal-cpp objects and caches (metal_backend.cpp)
  explicit MetalBackend(std::unique_ptr<State> state);
  friend std::unique_ptr<Backend> make_metal_backend(std::string& why);
  std::unique_ptr<State> s_;
};

// The Metal device as a backend, or nullptr with the reason in `why` when this machine has none.
std::unique_ptr<Backend> make_metal_backend(std::string& why);

}  // namespace aproto
