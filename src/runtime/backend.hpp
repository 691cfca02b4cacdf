// The backend-neutral runtime: one interface, two implementations (host = MSL on the CPU,
// metal = metal-cpp on Apple GPUs). Everything the prototypes dispatch goes through it.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/constants.hpp"
#include "runtime/errors.hpp"

namespace aproto {

struct DeviceInfo {
  std::string backend;               // "host" or "metal"
  std::string name;                  // e.g. "Apple M4" or the CPU model
  std::string family;                // e.g. "apple9", or "cpu"
  uint64_t max_threadgroup_memory = 0;   // bytes usable by one threadgroup (32 KB on Apple GPUs)
  uint32_t simd_width = 32;
  uint32_t max_threads_per_threadgroup = 1024;
  uint32_t compute_units = 0;        // GPU cores, or CPU worker threads on the host backend
  bool unified_memory = true;
  std::map<std::string, std::string> extra;  // backend-specific facts (compiler, OS, ...)
};

// MSL source of one library: its text, the path it came from (for messages and relative includes),
// and extra include directories.
struct Source {
  std::string text;
  std::string path;
  std::vector<std::string> include_dirs;
};

struct PipelineInfo {
  std::string function;
  std::string key;                           // pipeline_key(function, constants)
  uint32_t max_total_threads_per_threadgroup = 0;
  uint32_t thread_execution_width = 32;
  uint64_t static_threadgroup_memory = 0;    // bytes declared in the kernel body (0 if unknown before a run)
  double compile_seconds = 0.0;              // 0 when it came from a cache
  std::string cache;                         // "memory", "disk", "archive" or "compiled"
};

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  virtual const PipelineInfo& info() const = 0;
};

// One [[buffer(i)]] argument: a view of caller-owned memory (a numpy array), never copied by the
// host backend. A null `data` leaves the slot unbound.
struct BufferArg {
  void* data = nullptr;
  size_t nbytes = 0;
  bool writable = true;
};

struct DispatchArgs {
  std::array<uint32_t, 3> grid{1, 1, 1};         // threadgroups per grid
  std::array<uint32_t, 3> threadgroup{1, 1, 1};  // threads per threadgroup
  std::map<uint32_t, uint64_t> threadgroup_memory;  // [[threadgroup(n)]] index -> bytes
  bool checked = false;                          // bounds-check device-buffer accesses
};

struct DispatchResult {
  double seconds = 0.0;       // GPU time on Metal (GPUEndTime - GPUStartTime), wall time on host
  std::string timer;          // "gpu" or "wall"
  uint64_t bytes_copied = 0;  // bytes copied in and out because memory could not be wrapped
  uint64_t buffers_copied = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const DeviceInfo& info() const = 0;
  // Looks up or builds the pipeline for (source, function, constants). Throws CompileError.
  virtual std::shared_ptr<Pipeline> pipeline(const Source& source, const std::string& function,
                                             const Constants& constants) = 0;
  // Runs one dispatch and waits for it. Thread-safe to call without the GIL. Throws DispatchError.
  virtual DispatchResult dispatch(Pipeline& pipeline, const std::vector<BufferArg>& buffers,
                                  const DispatchArgs& args) = 0;
};

// Names of the backends usable on this machine, best first (e.g. {"metal", "host"} on a Mac).
std::vector<std::string> available_backends();
// The backend called `name`, or the best one for "". Throws BackendUnavailable.
Backend& get_backend(const std::string& name);

// Checks what every backend checks before a dispatch (sizes non-zero, thread count within limits,
// threadgroup memory within limits); throws LimitError / DispatchError with a clear message.
void validate_dispatch(const DeviceInfo& device, const PipelineInfo& pipeline, const DispatchArgs& args);

}  // namespace aproto
