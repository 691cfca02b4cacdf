// The shared helper every prototype's C++ entry point is declared with.
//
// A prototype is data plus one function: its array arguments (name, allowed dtypes, a symbolic shape
// such as "B Hq Nq D" whose names bind sizes across arguments), its options (typed scalars), and
// plan(), which turns one validated Call into the kernel launches it needs (pipeline spec, buffers,
// params struct, grid, threadgroup memory). Everything else lives here once: reading numpy arrays
// without copying them, checking shapes, dtypes, contiguity, writability and overlaps (ValueError /
// TypeError naming the argument), aligning what the kernels read as vectors, checking device limits
// before any dispatch, building the pipelines and dispatching them as one sequence.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "runtime/backend.hpp"

namespace aproto::proto {

// An array a call received: numpy's memory and geometry, used in place. With `planned`, only shape
// and dtype are known (a plan without data: threadgroup bytes, pipeline keys).
struct Array {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // bytes
  std::string dtype;             // numpy dtype name, e.g. "float16", "bfloat16", "int32"
  uint32_t itemsize = 0;
  bool writable = false;
  bool planned = false;
  uint64_t elements() const;
  uint64_t nbytes() const { return elements() * itemsize; }
};

// How one array argument must look.
struct ArgSpec {
  std::string name;
  std::string shape;                // symbolic dims separated by spaces; a number fixes that size;
                                    // alternatives of other ranks after " | " (e.g. "N | B N")
  std::vector<std::string> dtypes;  // allowed numpy dtype names, or {"=q"}: the same dtype as argument q
  bool output = false;              // written by the kernel: writable, overlapping no other argument
  bool optional = false;            // may be None
  uint32_t vector_width = 1;        // the kernel reads vec<T, n>: data must be n * itemsize aligned
  uint32_t align_bytes = 0;         // and (if larger) aligned to this many bytes, e.g. 16-byte loads
};

enum class OptionKind { Bool, Int, Float, Text };

struct OptionSpec {
  std::string name;
  OptionKind kind;
  std::string doc;
};

using OptionValue = std::variant<std::monostate, bool, int64_t, double, std::string>;

struct Proto;

// One validated call of a prototype: its arrays, the sizes their shapes bind, its options.
class Call {
 public:
  Call(const Proto& proto, std::map<std::string, Array> arrays, std::map<std::string, OptionValue> options,
       const DeviceInfo& device);

  const Proto& proto() const { return proto_; }
  const DeviceInfo& device() const { return device_; }
  bool planning() const { return planning_; }

  int64_t dim(const std::string& name) const;         // a size bound by the shapes, e.g. dim("D")
  bool has(const std::string& arg) const;             // an optional array was given
  const Array& array(const std::string& arg) const;
  const std::string& dtype(const std::string& arg) const;
  // "f32" / "f16" / "bf16" for the float dtypes: the suffix of the shaders' per-type kernels.
  std::string kernel_suffix(const std::string& arg) const;

  bool flag(const std::string& option) const;
  int64_t integer(const std::string& option) const;
  double number(const std::string& option) const;
  const std::string& text(const std::string& option) const;
  bool given(const std::string& option) const;        // not None
  // integer(option), checked to be in [lo, hi] and a multiple of `multiple` (ArgumentError otherwise).
  uint32_t count(const std::string& option, uint32_t lo, uint32_t hi, uint32_t multiple = 1) const;

  // Errors start with "[<proto>] ".
  [[noreturn]] void fail(const std::string& message) const;            // ValueError
  [[noreturn]] void fail_type(const std::string& message) const;       // TypeError
  void require(bool ok, const std::string& message) const { if (!ok) fail(message); }
  // `value` must be one of `allowed` (a message listing them otherwise).
  void require_one_of(const std::string& what, int64_t value, const std::vector<uint32_t>& allowed,
                      const std::string& hint = "") const;

  // The buffer of an array argument (unbound when absent or planning). Arrays whose data is not
  // aligned for the kernel's vector reads run from an aligned copy, counted in bytes_copied.
  BufferArg buffer(const std::string& arg) const;

  struct Staged;  // an aligned copy of a misaligned array (defined in proto.cpp)
  const std::map<std::string, std::shared_ptr<Staged>>& staged() const { return staged_; }

 private:
  const OptionValue& option(const std::string& name, OptionKind kind) const;
  void check_array(const ArgSpec& spec, const Array& a);

  const Proto& proto_;
  const DeviceInfo& device_;
  std::map<std::string, Array> arrays_;
  std::map<std::string, OptionValue> options_;
  std::map<std::string, int64_t> dims_;
  std::map<std::string, std::string> dim_source_;  // which argument bound each size
  bool planning_ = false;
  mutable std::map<std::string, std::shared_ptr<Staged>> staged_;
};

// One kernel launch a plan asks for.
struct Launch {
  PipelineSpec pipeline;
  std::optional<Source> source;  // instead of the prototype's shader file (e.g. with a user's code before it);
                                 // the shader directory is added to its include directories
  std::vector<BufferArg> buffers;  // by [[buffer(i)]]
  DispatchArgs args;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> owned;  // params structs the buffers point into

  // Binds a copy of `params` (a params struct shared with the shader) at [[buffer(index)]].
  template <class T>
  void set_params(uint32_t index, const T& params) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(sizeof(T));
    std::memcpy(bytes->data(), &params, sizeof(T));
    owned.push_back(bytes);
    bind(index, {bytes->data(), sizeof(T), false, ""});
  }
  void bind(uint32_t index, const BufferArg& buffer);
  uint64_t threadgroup_bytes() const;  // total of args.threadgroup_memory
};

struct Proto {
  std::string name;    // the Python name, e.g. "flash_attention"
  std::string shader;  // file in the shader directory, e.g. "flash_attention.metal"
  std::string doc;     // first lines of the binding's docstring
  std::vector<ArgSpec> args;
  std::vector<OptionSpec> options;
  std::function<std::vector<Launch>(const Call&)> plan;
  // Limits and supported values Python reads instead of repeating them (e.g. "head_dims").
  std::map<std::string, std::vector<int64_t>> facts;
};

// What one launch was, for results and plans.
struct LaunchInfo {
  std::string function;
  std::string key;
  std::array<uint32_t, 3> grid{1, 1, 1};
  std::array<uint32_t, 3> threadgroup{1, 1, 1};
  std::map<uint32_t, uint64_t> threadgroup_memory;
  std::optional<PipelineInfo> pipeline;  // set when the pipeline was built
  PipelineSpec spec;                     // what selects the pipeline (e.g. to add it to a binary archive)
};

struct CallResult {
  DispatchResult timing;
  std::string backend;
  std::vector<LaunchInfo> launches;
};

// Every prototype in this build (registered by a static Registration in its file).
const std::vector<const Proto*>& registry();
struct Registration {
  explicit Registration(const Proto& proto);
};

// Where the installed shaders live (set once by the Python package at import).
void set_shader_dir(const std::string& dir);
// A comment appended to every prototype shader's text from now on ("" = none): a text Metal's own shader
// cache has never seen, so a compile is cold (prototype 4's measurements, in a process of their own).
void set_shader_note(const std::string& note);
// The source a prototype's pipelines are built from: its shader (and the note), with the shader folder
// for includes.
Source shader_source(const Proto& proto);

// Plans, checks the device's limits, builds the pipelines and dispatches the sequence `repeat` times.
// Call without the GIL.
CallResult run(const Call& call, const std::string& backend, uint32_t repeat);
// The launches a call would make, without dispatching; with `build` their pipelines are built too.
std::vector<LaunchInfo> plan(const Call& call, const std::string& backend, bool build);

}  // namespace aproto::proto
