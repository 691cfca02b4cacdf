// The backend-neutral runtime: one interface, two implementations (host = MSL on the CPU,
// metal = metal-cpp on Apple GPUs). Everything the prototypes and attention_proto.Kernel dispatch
// goes through it.
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
  uint32_t compute_units = 0;        // GPU cores (0 when Metal does not say), or host worker threads
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

// A function built from [[stitchable]] functions (Metal: an MTLFunctionStitchingGraph compiled into a
// stitched library by MTLStitchedLibraryDescriptor). Node i calls `nodes[i].function` with arguments that
// are graph inputs (index >= 0: the new function's parameter of that index) or earlier nodes' results
// (-1 - n: node n). The last node's result is the function's result. Linked by name like any other.
struct StitchingGraph {
  struct Node {
    std::string function;       // a [[stitchable]] function of the spec's libraries
    std::vector<int> arguments;
  };
  std::string function;  // the new function's name
  std::vector<Node> nodes;
};

// Everything that selects one pipeline from a source. Two specs with the same key() build the same
// pipeline; every cache (memory, disk, binary archive) is keyed by it.
struct PipelineSpec {
  std::string function;                        // the kernel's name
  Constants constants;                         // function-constant values (a specialisation)
  std::map<std::string, std::string> defines;  // preprocessor macros: NAME -> value ("" = defined empty)
  std::vector<std::string> linked_functions;   // [[visible]] functions linked at creation, which resolve the
                                               // kernel's `extern` declarations (MTLLinkedFunctions.privateFunctions)
  uint32_t max_threads_per_threadgroup = 0;    // maxTotalThreadsPerThreadgroup hint; 0 = device limit
  std::vector<std::string> table_functions;    // [[visible]] functions callable through a visible_function_table
                                               // (MTLLinkedFunctions.functions); dispatches fill tables with them
  std::vector<Source> libraries;               // other libraries (compiled on their own) holding linked functions
  std::vector<StitchingGraph> stitched;        // functions stitched from the libraries' [[stitchable]] functions

  // e.g. "flash_attention_f16[BLOCK_K=32u,CAUSAL=true]{D=1}<link>@128"; only the non-empty parts
  // (tables, libraries by content hash and stitching graphs follow as |table:...|lib:...|stitch:...).
  std::string key() const;
};

// One parameter of a kernel, as declared in the source (the same parse on every backend).
struct ArgumentInfo {
  std::string kind;        // "buffer", "threadgroup", "function_table" (a visible_function_table) or "position"
  uint32_t index = 0;      // [[buffer(n)]] / [[threadgroup(n)]] index
  std::string name;
  std::string type;        // as declared, address space removed, e.g. "const float*", "const Params&"
  std::string element;     // pointee type without cv, e.g. "float", "Params"
  std::string dtype;       // numpy dtype name of the element ("float32", ...), "" when it has none
  bool writable = false;   // a pointer or reference to non-const device memory
  bool reference = false;  // `constant T&` / `device T&`: exactly one T
};

struct PipelineInfo {
  std::string function;
  std::string key;                           // PipelineSpec::key()
  uint32_t max_total_threads_per_threadgroup = 0;
  uint32_t thread_execution_width = 32;
  uint64_t static_threadgroup_memory = 0;    // bytes declared in the kernel body (host: measured by runs)
  // Where it came from: "memory" (this process built it before; no stage ran), "disk" (host: a compiled
  // variant from the disk cache), "archive" (Metal: the binary archive), "compiled".
  std::string cache;
  // Where the library came from: "source" (compiled now), "metallib" (prebuilt file), "memory" (this
  // process compiled it before), "disk" (host JIT cache).
  std::string library_origin;
  // Seconds per stage of this build; 0 for stages that did not run. Host: one library per
  // specialisation (constants and defines are compiled in), so `function` is 0 and `pipeline` is
  // loading the shared object.
  double library_seconds = 0.0;
  double function_seconds = 0.0;
  double pipeline_seconds = 0.0;
  std::vector<ArgumentInfo> arguments;       // the kernel's parameters, in declaration order

  double compile_seconds() const { return library_seconds + function_seconds + pipeline_seconds; }
};

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  virtual PipelineInfo info() const = 0;
};

// One [[buffer(i)]] argument: a view of caller-owned memory (a numpy array), never copied by the
// host backend. A null `data` leaves the slot unbound.
struct BufferArg {
  void* data = nullptr;
  size_t nbytes = 0;
  bool writable = true;
  std::string dtype;  // numpy dtype name of the array ("" = raw bytes: not checked against the kernel)
};

struct DispatchArgs {
  std::array<uint32_t, 3> grid{1, 1, 1};         // threadgroups per grid
  std::array<uint32_t, 3> threadgroup{1, 1, 1};  // threads per threadgroup
  std::map<uint32_t, uint64_t> threadgroup_memory;  // [[threadgroup(n)]] index -> bytes
  bool checked = false;                          // bounds-check device-buffer accesses (host backend)
  // visible_function_table parameters: [[buffer(n)]] -> the pipeline's table functions, in table order
  std::map<uint32_t, std::vector<std::string>> function_tables;
};

// One kernel launch of a sequence.
struct Dispatch {
  std::shared_ptr<Pipeline> pipeline;
  std::vector<BufferArg> buffers;  // indexed by [[buffer(i)]]
  DispatchArgs args;
};

struct DispatchResult {
  double seconds = 0.0;       // per repetition: GPU time on Metal (GPUEndTime - GPUStartTime), wall on host
  double wall_seconds = 0.0;  // per repetition, wall clock from submission to completion (both backends)
  std::string timer;          // "gpu" or "wall": what `seconds` is
  uint32_t repeat = 1;        // repetitions of the whole sequence measured together
  uint64_t bytes_copied = 0;  // bytes copied in and out because memory could not be wrapped
  uint64_t buffers_copied = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const DeviceInfo& info() const = 0;
  // Looks up or builds the pipeline of `spec` from `source`. Throws CompileError.
  virtual std::shared_ptr<Pipeline> pipeline(const Source& source, const PipelineSpec& spec) = 0;
  // Runs `steps` in order, `repeat` times (Metal: one command buffer, dispatches in one serial encoder),
  // and waits. Timings are per repetition. Thread-safe to call without the GIL. Throws DispatchError.
  virtual DispatchResult dispatch(const std::vector<Dispatch>& steps, uint32_t repeat) = 0;
};

// Names of the backends usable on this machine, best first (e.g. {"metal", "host"} on a Mac).
// On Apple Silicon a missing Metal device throws BackendUnavailable saying why, unless the environment
// sets APROTO_REQUIRE_METAL=0 (then only "host" is listed).
std::vector<std::string> available_backends();
// The backend called `name`, or the best one for "". Throws BackendUnavailable.
Backend& get_backend(const std::string& name);

// Checks what every backend checks before a dispatch, with the same messages on every backend:
// sizes non-zero, thread count and threadgroup memory within limits (LimitError), and every buffer
// against the kernel's declared parameters: bound, large enough, writable where the kernel writes,
// element type matching the array's dtype (ArgumentError / ArgumentTypeError).
void validate_dispatch(const DeviceInfo& device, const PipelineInfo& pipeline, const std::vector<BufferArg>& buffers,
                       const DispatchArgs& args);

}  // namespace aproto
