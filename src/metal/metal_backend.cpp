#include "metal/metal_backend.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>

#include <Foundation/Foundation.hpp>
#include <Metal/Metal.hpp>

#include "metal/binary_archive.hpp"
#include "metal/metal_util.hpp"
#include "runtime/arguments.hpp"
#include "runtime/memory.hpp"
#include "runtime/source.hpp"

namespace aproto {

using metal::AutoreleasePoolScope;
using metal::error_text;
using metal::ns_string;

namespace {

// Set by cmake/metal.cmake when `xcrun metal` built shaders/*.metal into .metallib files at build time.
#ifdef APROTO_HAVE_METALLIB
constexpr bool kPrebuiltMetallibs = true;
#else
constexpr bool kPrebuiltMetallibs = false;
#endif

constexpr size_t kMaxInlineBytes = 4096;  // setBytes limit Apple recommends for one argument

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t round_up(uint64_t n, uint64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Off by default: fast math lets the compiler assume no NaN/Inf, and attention kernels mask with -INFINITY.
// APROTO_METAL_FAST_MATH=1 turns it on (the value is recorded in DeviceInfo::extra["fast_math"]).
bool fast_math_from_env() {
  const char* v = std::getenv("APROTO_METAL_FAST_MATH");
  return v && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0);
}

// --- Device --------------------------------------------------------------------------------------------

// MLX's order: the first device of MTLCopyAllDevices(), then MTLCreateSystemDefaultDevice() (which returns
// nil in a command-line process without CoreGraphics; cmake/metal.cmake links it). `how` receives the call
// that found the device.
NS::SharedPtr<MTL::Device> find_device(std::string& how) {
  auto all = NS::TransferPtr(MTL::CopyAllDevices());  // owned: a Copy function
  if (all && all->count() > 0) {
    how = "MTLCopyAllDevices";
    return NS::RetainPtr(all->object<MTL::Device>(0));  // the array owns its elements
  }
  how = "MTLCreateSystemDefaultDevice";
  return NS::TransferPtr(MTL::CreateSystemDefaultDevice());  // owned: a Create function
}

std::string gpu_family(MTL::Device* device) {
  const std::pair<MTL::GPUFamily, const char*> families[] = {
      {MTL::GPUFamilyApple10, "apple10"}, {MTL::GPUFamilyApple9, "apple9"},
      {MTL::GPUFamilyApple8, "apple8"},   {MTL::GPUFamilyApple7, "apple7"}};
  for (const auto& [family, name] : families)
    if (device->supportsFamily(family)) return name;
  return device->supportsFamily(MTL::GPUFamilyMac2) ? "mac2" : "unknown";
}

// --- Libraries -----------------------------------------------------------------------------------------

// What pipeline() and archive_add() derive from their arguments before taking the lock.
struct Prepared {
  std::string name;          // source.path, or "<source>"
  std::string text;          // include-resolved source: what Metal compiles (defines go in as preprocessorMacros)
  std::string parsed;        // `text` after one `#define` line per define (with_defines): the host backend's
                             // input, so the parses both backends share (constants, arguments) read one text
  std::string library_key;   // hash of `parsed`, which spells out the defines: text and defines together
  std::string pipeline_key;  // library_key + ":" + spec.key()
};

Prepared prepare(const Source& source, const PipelineSpec& spec) {
  Prepared p;
  p.name = source.path.empty() ? "<source>" : source.path;
  try {
    p.text = resolve_includes(source);
  } catch (const CompileError& e) {
    throw CompileError(std::string("[metal] ") + e.what());
  }
  p.parsed = with_defines(p.text, spec.defines, p.name);
  p.library_key = content_hash(p.parsed);
  p.pipeline_key = p.library_key + ":" + spec.key();
  return p;
}

// The .metallib that cmake/metal.cmake installed next to `source.path`, or "" when it cannot stand in for
// the source: not built, fast math on (metallibs are built with -fno-fast-math), or the text is not the
// file's own (callers may pass generated or edited source under a shader's path).
std::string prebuilt_metallib(const Source& source, bool fast_math) {
  const std::string ext = ".metal";
  const std::string& path = source.path;
  if (!kPrebuiltMetallibs || fast_math || path.size() <= ext.size() ||
      path.compare(path.size() - ext.size(), ext.size(), ext) != 0)
    return "";
  std::string lib = path.substr(0, path.size() - ext.size()) + ".metallib";
  std::ifstream lib_file(lib), src_file(path, std::ios::binary);
  if (!lib_file || !src_file) return "";
  std::stringstream text;
  text << src_file.rdbuf();
  return text.str() == source.text ? lib : "";
}

// MTLCompileOptions.preprocessorMacros: NAME -> value, both NSString ("" = defined empty). Autoreleased.
NS::Dictionary* macro_dictionary(const std::map<std::string, std::string>& defines) {
  std::vector<const NS::Object*> names, values;
  for (const auto& [name, value] : defines) {
    names.push_back(ns_string(name));
    values.push_back(ns_string(value));
  }
  return NS::Dictionary::dictionary(values.data(), names.data(), names.size());
}

std::string function_names(MTL::Library* library) {
  std::string names;
  NS::Array* all = library->functionNames();
  for (NS::UInteger i = 0; all && i < all->count(); i++)
    names += (i ? ", " : "") + std::string(all->object<NS::String>(i)->utf8String());
  return names.empty() ? "none" : names;
}

// A function of `library` by name (owned), or a CompileError naming what the library has.
NS::SharedPtr<MTL::Function> library_function(MTL::Library* library, const std::string& name, const std::string& what) {
  auto fn = NS::TransferPtr(library->newFunction(ns_string(name)));
  if (!fn)
    throw CompileError("[metal] " + what + " '" + name + "' not found in the library (it has: " +
                       function_names(library) + ")");
  return fn;
}

// --- Function constants --------------------------------------------------------------------------------

// Declared type of every function constant `fn` uses, keyed by name and by "#<index>".
std::map<std::string, MTL::DataType> declared_constants(MTL::Function* fn) {
  std::map<std::string, MTL::DataType> out;
  NS::Dictionary* dict = fn->functionConstantsDictionary();
  if (!dict) return out;
  NS::Enumerator<NS::String>* keys = dict->keyEnumerator<NS::String>();
  while (NS::String* name = keys->nextObject()) {
    MTL::FunctionConstant* c = dict->object<MTL::FunctionConstant>(name);
    out[name->utf8String()] = c->type();
    out["#" + std::to_string(c->index())] = c->type();
  }
  return out;
}

// float -> bfloat bits, rounding to nearest even (NaN stays NaN).
uint16_t bfloat_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Applies one function constant, converted to the type the shader declares (Metal requires the exact
// type; the host backend converts the same way). Keys are names, or "#<index>".
void set_constant(MTL::FunctionConstantValues* values, const std::string& key, const ConstantValue& value,
                  MTL::DataType type, const std::string& pipeline) {
  const bool is_float = value.type == ConstantValue::Type::Float;
  auto integer = [&](int64_t lo, int64_t hi) {
    if (is_float)
      throw CompileError("[metal] " + pipeline + ": constant '" + key + "' is declared as an integer, got a float");
    if (value.i < lo || value.i > hi)
      throw CompileError("[metal] " + pipeline + ": constant '" + key + "' = " + std::to_string(value.i) +
                         " does not fit its declared type");
    return value.i;
  };
  union {
    bool b;
    int8_t i8;
    uint8_t u8;
    int16_t i16;
    uint16_t u16;
    int32_t i32;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    float f32;
    _Float16 f16;
  } v;
  std::memset(&v, 0, sizeof v);
  const double real = is_float ? value.f : static_cast<double>(value.i);
  switch (type) {
    case MTL::DataTypeBool: v.b = is_float ? value.f != 0.0 : value.i != 0; break;
    case MTL::DataTypeChar: v.i8 = static_cast<int8_t>(integer(INT8_MIN, INT8_MAX)); break;
    case MTL::DataTypeUChar: v.u8 = static_cast<uint8_t>(integer(0, UINT8_MAX)); break;
    case MTL::DataTypeShort: v.i16 = static_cast<int16_t>(integer(INT16_MIN, INT16_MAX)); break;
    case MTL::DataTypeUShort: v.u16 = static_cast<uint16_t>(integer(0, UINT16_MAX)); break;
    case MTL::DataTypeInt: v.i32 = static_cast<int32_t>(integer(INT32_MIN, INT32_MAX)); break;
    case MTL::DataTypeUInt: v.u32 = static_cast<uint32_t>(integer(0, UINT32_MAX)); break;
    case MTL::DataTypeLong: v.i64 = integer(INT64_MIN, INT64_MAX); break;
    case MTL::DataTypeULong: v.u64 = static_cast<uint64_t>(integer(0, INT64_MAX)); break;
    case MTL::DataTypeFloat: v.f32 = static_cast<float>(real); break;
    case MTL::DataTypeHalf: v.f16 = static_cast<_Float16>(real); break;
    case MTL::DataTypeBFloat: v.u16 = bfloat_bits(static_cast<float>(real)); break;
    default:
      throw CompileError("[metal] " + pipeline + ": constant '" + key + "' has a type the runtime cannot set");
  }
  if (key[0] == '#') {
    values->setConstantValue(&v, type, NS::UInteger(std::strtoul(key.c_str() + 1, nullptr, 10)));
  } else {
    values->setConstantValue(&v, type, ns_string(key));
  }
}

// `spec.function` specialised with spec.constants (owned). A value for a constant the function does not
// use is skipped, as Metal skips it; a name the source does not declare at all was rejected before
// (check_constant_names), as on the host.
NS::SharedPtr<MTL::Function> specialise(MTL::Library* library, const PipelineSpec& spec) {
  const std::string key = spec.key();
  // The unspecialised function tells which constants it uses, and their declared types.
  const auto declared = declared_constants(library_function(library, spec.function, "function").get());
  auto values = NS::TransferPtr(MTL::FunctionConstantValues::alloc()->init());
  for (const auto& [name, value] : spec.constants)
    if (auto it = declared.find(name); it != declared.end()) set_constant(values.get(), name, value, it->second, key);
  auto desc = NS::TransferPtr(MTL::FunctionDescriptor::alloc()->init());
  desc->setName(ns_string(spec.function));
  desc->setConstantValues(values.get());
  desc->setSpecializedName(ns_string(key));  // the function's name() then spells out its specialisation
  NS::Error* error = nullptr;
  MTL::Function* fn = library->newFunction(desc.get(), &error);
  if (!fn) throw CompileError("[metal] cannot specialise " + key + ": " + error_text(error));
  return NS::TransferPtr(fn);
}

// --- Pipelines -----------------------------------------------------------------------------------------

// The pipeline of `spec` as a descriptor. It builds the pipeline and is the binary archive's lookup key,
// so pipeline() and archive_add() both take it from here and describe one spec identically.
// Functions a pipeline links, by name (owned): looked up in `libraries` in order, the first that has one.
using FunctionsByName = std::map<std::string, NS::SharedPtr<MTL::Function>>;
FunctionsByName find_functions(const std::vector<MTL::Library*>& libraries, const std::vector<std::string>& names,
                               const std::string& who) {
  FunctionsByName out;
  for (const std::string& name : names) {
    for (MTL::Library* lib : libraries)
      if (auto fn = NS::TransferPtr(lib->newFunction(ns_string(name)))) {
        out[name] = fn;
        break;
      }
    if (!out.count(name)) {
      std::string where;
      for (MTL::Library* lib : libraries) where += (where.empty() ? "" : "; ") + function_names(lib);
      throw CompileError("[metal] " + who + ": linked function '" + name + "' not found in the kernel's library, "
                         "its libraries or its stitching graphs (they have: " + where + ")");
    }
  }
  return out;
}

// The stitched library of `spec.stitched` (owned): each graph's nodes call [[stitchable]] functions of
// `libraries`; a node's argument is an input node (its index) or an earlier function node.
NS::SharedPtr<MTL::Library> stitched_library(MTL::Device* device, const std::vector<MTL::Library*>& libraries,
                                             const PipelineSpec& spec) {
  std::vector<std::string> names;
  for (const StitchingGraph& g : spec.stitched)
    for (const auto& n : g.nodes) names.push_back(n.function);
  const FunctionsByName functions = find_functions(libraries, names, spec.key());
  std::vector<NS::SharedPtr<NS::Object>> keep;  // every node and graph, released once the descriptor holds them
  std::vector<const NS::Object*> graphs, fns;
  for (const auto& [name, fn] : functions) fns.push_back(fn.get());
  for (const StitchingGraph& g : spec.stitched) {
    std::vector<MTL::FunctionStitchingFunctionNode*> nodes;
    std::vector<const NS::Object*> node_objects;
    for (const auto& n : g.nodes) {
      std::vector<const NS::Object*> args;
      for (int a : n.arguments) {
        if (a < 0) {
          args.push_back(nodes.at(size_t(-1 - a)));
          continue;
        }
        auto input = NS::TransferPtr(MTL::FunctionStitchingInputNode::alloc()->init(NS::UInteger(a)));
        args.push_back(input.get());
        keep.push_back(NS::RetainPtr<NS::Object>(input.get()));
      }
      auto node = NS::TransferPtr(MTL::FunctionStitchingFunctionNode::alloc()->init(
          ns_string(n.function), NS::Array::array(args.data(), args.size()), NS::Array::array()));
      nodes.push_back(node.get());
      node_objects.push_back(node.get());
      keep.push_back(NS::RetainPtr<NS::Object>(node.get()));
    }
    auto graph = NS::TransferPtr(MTL::FunctionStitchingGraph::alloc()->init(
        ns_string(g.function), NS::Array::array(node_objects.data(), node_objects.size()), nodes.back(),
        NS::Array::array()));
    graphs.push_back(graph.get());
    keep.push_back(NS::RetainPtr<NS::Object>(graph.get()));
  }
  auto desc = NS::TransferPtr(MTL::StitchedLibraryDescriptor::alloc()->init());
  desc->setFunctionGraphs(NS::Array::array(graphs.data(), graphs.size()));
  desc->setFunctions(NS::Array::array(fns.data(), fns.size()));
  NS::Error* error = nullptr;
  MTL::Library* lib = device->newLibrary(desc.get(), &error);
  if (!lib) throw CompileError("[metal] " + spec.key() + ": stitching failed: " + error_text(error));
  return NS::TransferPtr(lib);
}

NS::Array* function_array(const FunctionsByName& functions, const std::vector<std::string>& names) {
  std::vector<const NS::Object*> objects;
  for (const std::string& name : names) objects.push_back(functions.at(name).get());
  return NS::Array::array(objects.data(), objects.size());
}

// `linked` holds the functions `spec` links (find_functions over the kernel's library, its libraries and
// stitched library): linked_functions resolve the kernel's `extern` declarations (privateFunctions),
// table_functions may fill its visible function tables (functions).
NS::SharedPtr<MTL::ComputePipelineDescriptor> pipeline_descriptor(MTL::Function* fn, const PipelineSpec& spec,
                                                                  const FunctionsByName& linked) {
  auto desc = NS::TransferPtr(MTL::ComputePipelineDescriptor::alloc()->init());
  desc->setComputeFunction(fn);
  if (spec.max_threads_per_threadgroup) desc->setMaxTotalThreadsPerThreadgroup(spec.max_threads_per_threadgroup);
  if (!spec.linked_functions.empty() || !spec.table_functions.empty()) {
    auto functions = NS::TransferPtr(MTL::LinkedFunctions::alloc()->init());
    functions->setPrivateFunctions(function_array(linked, spec.linked_functions));
    functions->setFunctions(function_array(linked, spec.table_functions));
    desc->setLinkedFunctions(functions.get());
  }
  return desc;
}

// A built pipeline, shared by every lookup of its spec.
struct MetalVariant {
  NS::SharedPtr<MTL::ComputePipelineState> state;
  PipelineInfo info;  // as first built
  FunctionsByName table_functions;  // what visible function tables of this pipeline may hold
};

class MetalPipeline final : public Pipeline {
 public:
  MetalPipeline(std::shared_ptr<const MetalVariant> variant, bool from_memory)
      : v_(std::move(variant)), memory_(from_memory) {}
  PipelineInfo info() const override {
    PipelineInfo i = v_->info;
    if (memory_) {  // this lookup built nothing
      i.cache = "memory";
      i.library_origin = "memory";
      i.library_seconds = i.function_seconds = i.pipeline_seconds = 0.0;
    }
    return i;
  }
  const MetalVariant& variant() const { return *v_; }

 private:
  std::shared_ptr<const MetalVariant> v_;
  bool memory_;
};

// --- Memory --------------------------------------------------------------------------------------------

// The caller memory of one dispatch() call bound to Metal. Every bound range of every step is collected
// first, and ranges that overlap (one array in two slots, or a step's output that a later step reads) form
// one run with one Metal buffer, each bound at its offset into it: all views see the same bytes, in
// dispatch order. A run is wrapped without a copy when it starts on a page inside a region the package
// allocated (runtime/memory.hpp: whole pages of one VM region, what newBufferWithBytesNoCopy needs);
// anything else is copied into a shared buffer, and back after completion where a slot is writable.
// Small read-only arguments go through setBytes (copied at encode time), unless a slot of the sequence
// writes their memory.
class BoundMemory {
 public:
  BoundMemory(MTL::Device* device, size_t page_size, const std::vector<Dispatch>& steps, const std::string& who,
              DispatchResult& out) {
    plan(steps);
    allocate(device, page_size, who, out);
  }

  // Binds step `s`'s buffers on `enc`.
  void bind(MTL::ComputeCommandEncoder* enc, size_t s, const std::vector<BufferArg>& buffers) const {
    for (size_t i = 0; i < slots_[s].size(); i++) {
      const Slot& slot = slots_[s][i];
      if (slot.kind == Slot::Inline) enc->setBytes(buffers[i].data, buffers[i].nbytes, i);
      else if (slot.kind == Slot::InRun) enc->setBuffer(runs_[slot.run].buffer.get(), slot.offset, i);
    }
  }

  // After completion: the copied runs back into the caller's memory, writable ranges only.
  void copy_back(DispatchResult& out) const {
    for (const Run& run : runs_) {
      if (!run.copied) continue;
      for (const auto& [begin, end] : run.written) {
        std::memcpy(begin, static_cast<const char*>(run.buffer->contents()) + (begin - run.begin), size_t(end - begin));
        out.bytes_copied += size_t(end - begin);
      }
    }
  }

  uint64_t wrapped() const { return wrapped_; }

 private:
  // Decides how each slot is bound: inline bytes, or an offset into a run of overlapping ranges.
  void plan(const std::vector<Dispatch>& steps) {
    std::vector<Range> ranges;
    slots_.resize(steps.size());
    for (size_t s = 0; s < steps.size(); s++) {
      const std::vector<BufferArg>& buffers = steps[s].buffers;
      slots_[s].resize(buffers.size());
      for (size_t i = 0; i < buffers.size(); i++) {
        char* data = static_cast<char*>(buffers[i].data);
        if (data && buffers[i].nbytes)  // else unbound (Metal has no empty buffers)
          ranges.push_back({data, data + buffers[i].nbytes, buffers[i].writable, s, i});
      }
    }
    auto written = [&](const Range& r) {
      return std::any_of(ranges.begin(), ranges.end(),
                         [&](const Range& w) { return w.writable && w.begin < r.end && r.begin < w.end; });
    };
    std::vector<Range> in_runs;
    for (const Range& r : ranges) {
      if (!r.writable && size_t(r.end - r.begin) <= kMaxInlineBytes && !written(r))
        slots_[r.step][r.slot] = {Slot::Inline, 0, 0};
      else
        in_runs.push_back(r);
    }
    std::sort(in_runs.begin(), in_runs.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    for (const Range& r : in_runs) {
      if (runs_.empty() || r.begin >= runs_.back().end) runs_.push_back({r.begin, r.end, {}, {}, false});
      Run& run = runs_.back();
      run.end = std::max(run.end, r.end);
      slots_[r.step][r.slot] = {Slot::InRun, runs_.size() - 1, size_t(r.begin - run.begin)};
      if (r.writable) run.written.insert({r.begin, r.end});
    }
  }

  // Gives every run its Metal buffer: a no-copy wrap where allowed, else a copy.
  void allocate(MTL::Device* device, size_t page_size, const std::string& who, DispatchResult& out) {
    for (Run& run : runs_) {
      const size_t n = size_t(run.end - run.begin);
      const void* region_end = nullptr;
      if (reinterpret_cast<uintptr_t>(run.begin) % page_size == 0 && find_region(run.begin, n, &region_end)) {
        // Pages are mapped whole, so the wrap covers whole pages, never past the region.
        const size_t len = std::min<size_t>(round_up(n, page_size), static_cast<const char*>(region_end) - run.begin);
        run.buffer = NS::TransferPtr(device->newBuffer(run.begin, len, MTL::ResourceStorageModeShared, nullptr));
        if (run.buffer) {
          wrapped_++;
          continue;
        }
      }
      run.buffer = NS::TransferPtr(device->newBuffer(n, MTL::ResourceStorageModeShared));  // Metal may refuse a wrap
      if (!run.buffer) throw DispatchError(who + ": cannot allocate a " + std::to_string(n) + "-byte buffer");
      std::memcpy(run.buffer->contents(), run.begin, n);
      run.copied = true;
      out.buffers_copied++;
      out.bytes_copied += n;
    }
  }

  struct Range {
    char* begin;
    char* end;
    bool writable;
    size_t step, slot;
  };
  struct Slot {
    enum Kind { Unbound, Inline, InRun } kind = Unbound;
    size_t run = 0;
    size_t offset = 0;  // bytes into the run's buffer
  };
  struct Run {
    char* begin;
    char* end;
    std::set<std::pair<char*, char*>> written;  // ranges a writable slot binds
    NS::SharedPtr<MTL::Buffer> buffer;
    bool copied = false;
  };
  std::vector<std::vector<Slot>> slots_;  // [step][slot]
  std::vector<Run> runs_;
  uint64_t wrapped_ = 0;
};

// "[metal] kernel 'a'" or "[metal] kernels 'a', 'b'": who failed when a command buffer fails.
std::string kernels_named(const std::vector<const MetalPipeline*>& pipelines) {
  std::vector<std::string> names;
  for (const MetalPipeline* p : pipelines)
    if (std::find(names.begin(), names.end(), p->variant().info.function) == names.end())
      names.push_back(p->variant().info.function);
  std::string out = names.size() == 1 ? "[metal] kernel " : "[metal] kernels ";
  for (size_t i = 0; i < names.size(); i++) out += (i ? ", '" : "'") + names[i] + "'";
  return out;
}

}  // namespace

struct MetalBackend::State {
  // Set once at creation, read-only afterwards: dispatch() uses them without the lock.
  NS::SharedPtr<MTL::Device> device;
  NS::SharedPtr<MTL::CommandQueue> queue;  // MTLCommandQueue is thread-safe
  DeviceInfo info;
  bool fast_math = false;
  size_t page_size = 0;

  // Guards the caches and the archive. Compiles run under it (one at a time); dispatches do not take it.
  mutable std::mutex mutex;
  std::unordered_map<std::string, NS::SharedPtr<MTL::Library>> libraries;   // by Prepared::library_key
  std::unordered_map<std::string, std::shared_ptr<MetalVariant>> pipelines;  // by Prepared::pipeline_key
  std::unique_ptr<metal::BinaryArchive> archive;
  bool fail_on_miss = false;

  std::atomic<uint64_t> libraries_compiled{0}, libraries_prebuilt{0}, pipelines_compiled{0}, archive_hits{0},
      archive_misses{0}, dispatches{0}, buffers_wrapped{0}, buffers_copied{0}, bytes_copied{0};

  // The library of `p` compiled with `defines`: from the cache, a prebuilt metallib or the run-time
  // compiler. Sets info.library_origin and library_seconds. Caller holds `mutex`.
  MTL::Library* library(const Source& source, const Prepared& p, const std::map<std::string, std::string>& defines,
                        PipelineInfo& info) {
    if (auto it = libraries.find(p.library_key); it != libraries.end()) {
      info.library_origin = "memory";
      return it->second.get();
    }
    const auto t0 = Clock::now();
    NS::Error* error = nullptr;
    MTL::Library* lib = nullptr;
    // Metallibs are built without defines. One that fails to load (e.g. built by a newer SDK than this OS)
    // falls back to the source.
    const std::string metallib = defines.empty() ? prebuilt_metallib(source, fast_math) : "";
    if (!metallib.empty() && (lib = device->newLibrary(NS::URL::fileURLWithPath(ns_string(metallib)), &error))) {
      libraries_prebuilt++;
      info.library_origin = "metallib";
    } else {
      auto options = NS::TransferPtr(MTL::CompileOptions::alloc()->init());
      options->setLanguageVersion(MTL::LanguageVersion3_1);
      options->setFastMathEnabled(fast_math);
      if (!defines.empty()) options->setPreprocessorMacros(macro_dictionary(defines));
      error = nullptr;
      lib = device->newLibrary(ns_string(p.text), options.get(), &error);
      if (!lib) throw CompileError("[metal] compiling " + p.name + " failed:\n" + error_text(error));
      libraries_compiled++;
      info.library_origin = "source";
    }
    info.library_seconds = seconds_since(t0);
    libraries.emplace(p.library_key, NS::TransferPtr(lib));
    return lib;
  }

  // The descriptor of `spec`'s pipeline: its library (from wherever) and its specialised function, the
  // stages' origin and seconds recorded in `info`. Caller holds `mutex`.
  NS::SharedPtr<MTL::ComputePipelineDescriptor> describe(const Source& source, const Prepared& p,
                                                         const PipelineSpec& spec, PipelineInfo& info,
                                                         FunctionsByName* tables = nullptr) {
    check_constant_names(p.parsed, spec.constants, "[metal] " + spec.key());
    MTL::Library* lib = library(source, p, spec.defines, info);
    // Libraries to link from, compiled on their own (no defines: they are not the kernel's), then stitched.
    std::vector<MTL::Library*> libs = {lib};
    for (const Source& other : spec.libraries) {
      PipelineInfo stages;
      libs.push_back(library(other, prepare(other, PipelineSpec{}), {}, stages));
      info.library_seconds += stages.library_seconds;
    }
    const auto t0 = Clock::now();
    NS::SharedPtr<MTL::Library> stitched;
    if (!spec.stitched.empty()) {
      stitched = stitched_library(device.get(), {libs.begin() + 1, libs.end()}, spec);
      libs.insert(libs.begin(), stitched.get());
    }
    std::vector<std::string> names = spec.linked_functions;
    names.insert(names.end(), spec.table_functions.begin(), spec.table_functions.end());
    const FunctionsByName linked = find_functions(libs, names, spec.key());
    if (tables)
      for (const std::string& name : spec.table_functions) (*tables)[name] = linked.at(name);
    auto desc = pipeline_descriptor(specialise(lib, spec).get(), spec, linked);  // the descriptor keeps them
    info.function_seconds = seconds_since(t0);
    return desc;
  }
};

MetalBackend::MetalBackend(std::unique_ptr<State> state) : s_(std::move(state)) {}
MetalBackend::~MetalBackend() = default;

const DeviceInfo& MetalBackend::info() const { return s_->info; }

std::shared_ptr<Pipeline> MetalBackend::pipeline(const Source& source, const PipelineSpec& spec) {
  AutoreleasePoolScope pool;
  const Prepared p = prepare(source, spec);
  std::lock_guard<std::mutex> lock(s_->mutex);
  if (auto it = s_->pipelines.find(p.pipeline_key); it != s_->pipelines.end())
    return std::make_shared<MetalPipeline>(it->second, true);

  auto v = std::make_shared<MetalVariant>();
  PipelineInfo& info = v->info;
  info.function = spec.function;
  info.key = spec.key();
  NS::SharedPtr<MTL::ComputePipelineDescriptor> desc = s_->describe(source, p, spec, info, &v->table_functions);

  const auto t0 = Clock::now();
  info.cache = "compiled";
  if (s_->archive) {
    std::string miss;
    v->state = NS::TransferPtr(s_->archive->build(desc.get(), miss));
    if (v->state) {
      info.cache = "archive";
      s_->archive_hits++;
    } else {
      s_->archive_misses++;
      if (s_->fail_on_miss)
        throw ArchiveMissError("[metal] binary archive miss for " + info.key + " in '" + s_->archive->path() +
                               "': " + miss);
    }
  }
  if (!v->state) {  // no archive, or a miss (Metal looks in the archive `desc` now lists, then compiles)
    NS::Error* error = nullptr;
    // No reflection: the arguments come from the source parse both backends share (below).
    v->state = NS::TransferPtr(
        s_->device->newComputePipelineState(desc.get(), MTL::PipelineOptionNone, nullptr, &error));
    if (!v->state) throw CompileError("[metal] cannot build the pipeline " + info.key + ": " + error_text(error));
    s_->pipelines_compiled++;
  }
  info.pipeline_seconds = seconds_since(t0);

  info.max_total_threads_per_threadgroup = static_cast<uint32_t>(v->state->maxTotalThreadsPerThreadgroup());
  info.thread_execution_width = static_cast<uint32_t>(v->state->threadExecutionWidth());
  info.static_threadgroup_memory = v->state->staticThreadgroupMemoryLength();
  info.arguments = kernel_arguments(p.parsed, spec.function, p.name, spec.constants);
  s_->pipelines.emplace(p.pipeline_key, v);
  return std::make_shared<MetalPipeline>(v, false);
}

DispatchResult MetalBackend::dispatch(const std::vector<Dispatch>& steps, uint32_t repeat) {
  std::vector<const MetalPipeline*> pipelines;
  for (const Dispatch& step : steps) {
    auto* p = dynamic_cast<const MetalPipeline*>(step.pipeline.get());
    if (!p) throw ArgumentTypeError("[metal] dispatch: a step's pipeline was not built by the metal backend");
    validate_dispatch(s_->info, p->variant().info, step.buffers, step.args);
    pipelines.push_back(p);
  }
  DispatchResult out;
  out.timer = "gpu";
  out.repeat = std::max(1u, repeat);
  if (steps.empty()) return out;

  AutoreleasePoolScope pool;
  s_->dispatches++;
  const std::string who = kernels_named(pipelines);
  BoundMemory memory(s_->device.get(), s_->page_size, steps, who, out);
  MTL::CommandBuffer* cmd = s_->queue->commandBuffer();  // autoreleased
  if (!cmd) throw DispatchError(who + ": cannot create a command buffer");
  // "The command encoder this method creates uses the MTLDispatchTypeSerial dispatch type"
  // (MTLCommandBuffer computeCommandEncoder): each dispatch runs after the previous one and sees its writes,
  // so the steps need no barriers.
  MTL::ComputeCommandEncoder* enc = cmd->computeCommandEncoder();  // autoreleased
  if (!enc) throw DispatchError(who + ": cannot create a compute command encoder");
  // Visible function tables, one per table argument of each step, filled with the functions it names
  // (handles of this pipeline's linked functions); kept until the command buffer completes.
  std::vector<std::map<uint32_t, NS::SharedPtr<MTL::VisibleFunctionTable>>> tables(steps.size());
  for (size_t s = 0; s < steps.size(); s++) {
    const MetalVariant& v = pipelines[s]->variant();
    for (const auto& [index, names] : steps[s].args.function_tables) {
      auto desc = NS::TransferPtr(MTL::VisibleFunctionTableDescriptor::alloc()->init());
      desc->setFunctionCount(names.size());
      auto table = NS::TransferPtr(v.state->newVisibleFunctionTable(desc.get()));
      if (!table) throw DispatchError(who + ": cannot create a visible function table");
      for (size_t i = 0; i < names.size(); i++) {
        auto fn = v.table_functions.find(names[i]);
        if (fn == v.table_functions.end())
          throw ArgumentError(who + ": function table [[buffer(" + std::to_string(index) + ")]] names '" + names[i] +
                              "', which is not one of the pipeline's table functions");
        table->setFunction(v.state->functionHandle(fn->second.get()), i);
      }
      tables[s][index] = table;
    }
  }
  for (uint32_t r = 0; r < out.repeat; r++) {
    for (size_t s = 0; s < steps.size(); s++) {
      const Dispatch& step = steps[s];
      enc->setComputePipelineState(pipelines[s]->variant().state.get());
      memory.bind(enc, s, step.buffers);
      for (const auto& [index, table] : tables[s]) enc->setVisibleFunctionTable(table.get(), index);
      // Lengths for the [[threadgroup(n)]] parameters the kernel declares (validate_dispatch checked each
      // has one); Metal wants multiples of 16 bytes.
      for (const ArgumentInfo& a : pipelines[s]->variant().info.arguments)
        if (a.kind == "threadgroup")
          enc->setThreadgroupMemoryLength(round_up(step.args.threadgroup_memory.at(a.index), 16), a.index);
      enc->dispatchThreadgroups(MTL::Size(step.args.grid[0], step.args.grid[1], step.args.grid[2]),
                                MTL::Size(step.args.threadgroup[0], step.args.threadgroup[1], step.args.threadgroup[2]));
    }
  }
  enc->endEncoding();
  const auto start = Clock::now();
  cmd->commit();
  cmd->waitUntilCompleted();
  out.wall_seconds = seconds_since(start) / out.repeat;
  if (cmd->status() != MTL::CommandBufferStatusCompleted)
    throw DispatchError(who + " failed: " + error_text(cmd->error()));
  out.seconds = (cmd->GPUEndTime() - cmd->GPUStartTime()) / out.repeat;
  memory.copy_back(out);
  s_->buffers_wrapped += memory.wrapped();
  s_->buffers_copied += out.buffers_copied;
  s_->bytes_copied += out.bytes_copied;
  return out;
}

void MetalBackend::set_archive(const std::string& path, bool fail_on_miss) {
  auto archive = std::make_unique<metal::BinaryArchive>(s_->device.get(), path);  // may throw; keeps the old one
  std::lock_guard<std::mutex> lock(s_->mutex);
  s_->archive = std::move(archive);
  s_->fail_on_miss = fail_on_miss;
}

void MetalBackend::clear_archive() {
  std::lock_guard<std::mutex> lock(s_->mutex);
  s_->archive.reset();
  s_->fail_on_miss = false;
}

std::string MetalBackend::archive_path() const {
  std::lock_guard<std::mutex> lock(s_->mutex);
  return s_->archive ? s_->archive->path() : "";
}

double MetalBackend::archive_add(const Source& source, const PipelineSpec& spec) {
  AutoreleasePoolScope pool;
  const Prepared p = prepare(source, spec);
  std::lock_guard<std::mutex> lock(s_->mutex);
  if (!s_->archive)
    throw Error("[metal] archive_add(" + spec.key() + "): no binary archive is set; call set_archive(path) first");
  const auto t0 = Clock::now();
  PipelineInfo stages;  // not reported: the caller gets the total
  s_->archive->add(s_->describe(source, p, spec, stages).get(), spec.key());
  return seconds_since(t0);
}

void MetalBackend::archive_serialize() {
  std::lock_guard<std::mutex> lock(s_->mutex);
  if (!s_->archive) throw Error("[metal] archive_serialize: no binary archive is set; call set_archive(path) first");
  s_->archive->serialize();
}

void MetalBackend::clear_caches() {
  std::lock_guard<std::mutex> lock(s_->mutex);
  s_->pipelines.clear();
  s_->libraries.clear();
}

std::map<std::string, uint64_t> MetalBackend::stats() const {
  return {{"libraries_compiled", s_->libraries_compiled}, {"libraries_prebuilt", s_->libraries_prebuilt},
          {"pipelines_compiled", s_->pipelines_compiled}, {"archive_hits", s_->archive_hits},
          {"archive_misses", s_->archive_misses},         {"dispatches", s_->dispatches},
          {"buffers_wrapped", s_->buffers_wrapped},       {"buffers_copied", s_->buffers_copied},
          {"bytes_copied", s_->bytes_copied}};
}

std::unique_ptr<Backend> make_metal_backend(std::string& why) {
  AutoreleasePoolScope pool;
  auto s = std::make_unique<MetalBackend::State>();
  std::string lookup;
  s->device = find_device(lookup);
  MTL::Device* device = s->device.get();
  if (!device) {
    why = "MTLCopyAllDevices returned no device and MTLCreateSystemDefaultDevice returned nil";
    return nullptr;
  }
  s->queue = NS::TransferPtr(device->newCommandQueue());
  if (!s->queue) {
    why = std::string("newCommandQueue returned nil on ") + device->name()->utf8String();
    return nullptr;
  }
  s->fast_math = fast_math_from_env();
  s->page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));  // 16 KB on Apple Silicon

  DeviceInfo& info = s->info;
  info.backend = "metal";
  info.name = device->name()->utf8String();
  info.family = gpu_family(device);
  info.max_threadgroup_memory = device->maxThreadgroupMemoryLength();
  info.max_threads_per_threadgroup = static_cast<uint32_t>(device->maxThreadsPerThreadgroup().width);
  info.simd_width = 32;     // every Apple GPU; each PipelineInfo reports its threadExecutionWidth
  info.compute_units = 0;   // Metal does not expose the GPU core count
  info.unified_memory = device->hasUnifiedMemory();
  info.extra["device_lookup"] = lookup;
  info.extra["recommended_max_working_set_size"] = std::to_string(device->recommendedMaxWorkingSetSize());
  info.extra["max_buffer_length"] = std::to_string(device->maxBufferLength());
  if (MTL::Architecture* arch = device->architecture()) info.extra["architecture"] = arch->name()->utf8String();
  info.extra["os"] = NS::ProcessInfo::processInfo()->operatingSystemVersionString()->utf8String();
  info.extra["language_version"] = "3.1";
  info.extra["fast_math"] = s->fast_math ? "true" : "false";
  info.extra["page_size"] = std::to_string(s->page_size);
  info.extra["prebuilt_metallibs"] = kPrebuiltMetallibs ? "true" : "false";
  return std::unique_ptr<Backend>(new MetalBackend(std::move(s)));
}

}  // namespace aproto
