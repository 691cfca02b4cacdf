#include "metal/metal_backend.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <utility>

#include <Foundation/Foundation.hpp>
#include <Metal/Metal.hpp>

#include "metal/binary_archive.hpp"
#include "metal/metal_util.hpp"
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
constexpr size_t kMaxBindings = 31;  // Metal's argument tables: [[buffer(0..30)]], [[threadgroup(0..30)]]

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t round_up(uint64_t n, uint64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Off by default: fast math lets the compiler assume no NaN/Inf, and attention kernels mask with -INFINITY.
// APROTO_METAL_FAST_MATH=1 turns it on (the value is recorded in DeviceInfo::extra["fast_math"]).
bool fast_math_from_env() {
  const char* v = std::getenv("APROTO_METAL_FAST_MATH");
  return v && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0);
}

std::string gpu_family(MTL::Device* device) {
  const std::pair<MTL::GPUFamily, const char*> families[] = {
      {MTL::GPUFamilyApple10, "apple10"}, {MTL::GPUFamilyApple9, "apple9"},
      {MTL::GPUFamilyApple8, "apple8"},   {MTL::GPUFamilyApple7, "apple7"}};
  for (const auto& [family, name] : families)
    if (device->supportsFamily(family)) return name;
  return device->supportsFamily(MTL::GPUFamilyMac2) ? "mac2" : "unknown";
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

// Declared type of every function constant of `fn`, keyed by name and by "#<index>".
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

// resolve_includes() with this backend's message prefix.
std::string resolved_text(const Source& source) {
  try {
    return resolve_includes(source);
  } catch (const CompileError& e) {
    throw CompileError(std::string("[metal] ") + e.what());
  }
}

std::string function_names(MTL::Library* library) {
  std::string names;
  NS::Array* all = library->functionNames();
  for (NS::UInteger i = 0; all && i < all->count(); i++)
    names += (i ? ", " : "") + std::string(all->object<NS::String>(i)->utf8String());
  return names.empty() ? "none" : names;
}

class MetalPipeline final : public Pipeline {
 public:
  MetalPipeline(NS::SharedPtr<MTL::ComputePipelineState> state, PipelineInfo info)
      : state_(std::move(state)), info_(std::move(info)) {}
  const PipelineInfo& info() const override { return info_; }
  MTL::ComputePipelineState* state() const { return state_.get(); }

 private:
  NS::SharedPtr<MTL::ComputePipelineState> state_;
  PipelineInfo info_;
};

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
  std::unordered_map<std::string, NS::SharedPtr<MTL::Library>> libraries;        // by content hash
  std::unordered_map<std::string, std::shared_ptr<MetalPipeline>> pipelines;     // by hash + "/" + key
  std::unique_ptr<metal::BinaryArchive> archive;
  bool fail_on_miss = false;

  std::atomic<uint64_t> libraries_compiled{0}, libraries_prebuilt{0}, pipelines_compiled{0}, archive_hits{0},
      archive_misses{0}, dispatches{0}, buffers_wrapped{0}, buffers_copied{0}, bytes_copied{0};

  // The library of the resolved `text`, from the cache, a prebuilt metallib, or the run-time compiler.
  // Caller holds `mutex`.
  MTL::Library* library(const Source& source, const std::string& text, const std::string& hash) {
    if (auto it = libraries.find(hash); it != libraries.end()) return it->second.get();
    NS::Error* error = nullptr;
    MTL::Library* lib = nullptr;
    std::string metallib = prebuilt_metallib(source, fast_math);
    // A metallib that fails to load (e.g. built by a newer SDK than this OS) falls back to the source.
    if (!metallib.empty() && (lib = device->newLibrary(NS::URL::fileURLWithPath(ns_string(metallib)), &error)))
      libraries_prebuilt++;
    if (!lib) {
      auto options = NS::TransferPtr(MTL::CompileOptions::alloc()->init());
      options->setLanguageVersion(MTL::LanguageVersion3_1);
      options->setFastMathEnabled(fast_math);
      error = nullptr;
      lib = device->newLibrary(ns_string(text), options.get(), &error);
      if (!lib)
        throw CompileError("[metal] compiling " + (source.path.empty() ? std::string("<source>") : source.path) +
                           " failed:\n" + error_text(error));
      libraries_compiled++;
    }
    libraries.emplace(hash, NS::TransferPtr(lib));
    return lib;
  }

  // `function` specialised with `constants`, owned by the caller.
  NS::SharedPtr<MTL::Function> function(MTL::Library* lib, const std::string& name, const Constants& constants,
                                        const std::string& key) {
    NS::Error* error = nullptr;
    MTL::Function* fn = nullptr;
    if (constants.empty()) {
      fn = lib->newFunction(ns_string(name));
      if (!fn)
        throw CompileError("[metal] function '" + name + "' not found in the library (it has: " +
                           function_names(lib) + ")");
    } else {
      // The unspecialised function tells each constant's declared type.
      auto generic = NS::TransferPtr(lib->newFunction(ns_string(name)));
      if (!generic)
        throw CompileError("[metal] function '" + name + "' not found in the library (it has: " +
                           function_names(lib) + ")");
      const auto declared = declared_constants(generic.get());
      auto values = NS::TransferPtr(MTL::FunctionConstantValues::alloc()->init());
      for (const auto& [k, v] : constants) {
        auto it = declared.find(k);
        if (it == declared.end()) {
          std::string names;
          for (const auto& [d, t] : declared)
            if (d[0] != '#') names += (names.empty() ? "" : ", ") + d;
          throw CompileError("[metal] " + key + ": constant '" + k + "' was given but '" + name +
                             "' declares no such function constant (declared: " + (names.empty() ? "none" : names) +
                             ")");
        }
        set_constant(values.get(), k, v, it->second, key);
      }
      fn = lib->newFunction(ns_string(name), values.get(), &error);
      if (!fn) throw CompileError("[metal] cannot specialise " + key + ": " + error_text(error));
    }
    return NS::TransferPtr(fn);
  }
};

MetalBackend::MetalBackend(std::unique_ptr<State> state) : s_(std::move(state)) {}
MetalBackend::~MetalBackend() = default;

const DeviceInfo& MetalBackend::info() const { return s_->info; }

std::shared_ptr<Pipeline> MetalBackend::pipeline(const Source& source, const std::string& function,
                                                 const Constants& constants) {
  AutoreleasePoolScope pool;
  const std::string text = resolved_text(source);
  const std::string hash = content_hash(text);
  const std::string key = pipeline_key(function, constants);
  std::lock_guard<std::mutex> lock(s_->mutex);

  if (auto it = s_->pipelines.find(hash + "/" + key); it != s_->pipelines.end()) {
    // Same GPU pipeline object, but this lookup reports where it came from.
    PipelineInfo info = it->second->info();
    info.cache = "memory";
    info.compile_seconds = 0.0;
    return std::make_shared<MetalPipeline>(NS::RetainPtr(it->second->state()), std::move(info));
  }

  const auto t0 = Clock::now();
  MTL::Library* lib = s_->library(source, text, hash);
  NS::SharedPtr<MTL::Function> fn = s_->function(lib, function, constants, key);

  NS::SharedPtr<MTL::ComputePipelineState> state;
  std::string cache = "compiled";
  if (s_->archive) {
    std::string miss;
    state = NS::TransferPtr(s_->archive->build(fn.get(), miss));
    if (state) {
      cache = "archive";
      s_->archive_hits++;
    } else {
      s_->archive_misses++;
      if (s_->fail_on_miss)
        throw ArchiveMissError("[metal] binary archive miss for " + key + " in '" + s_->archive->path() +
                               "': " + miss);
    }
  }
  if (!state) {
    NS::Error* error = nullptr;
    state = NS::TransferPtr(s_->device->newComputePipelineState(fn.get(), &error));
    if (!state) throw CompileError("[metal] cannot build the pipeline " + key + ": " + error_text(error));
    s_->pipelines_compiled++;
  }

  PipelineInfo info;
  info.function = function;
  info.key = key;
  info.max_total_threads_per_threadgroup = static_cast<uint32_t>(state->maxTotalThreadsPerThreadgroup());
  info.thread_execution_width = static_cast<uint32_t>(state->threadExecutionWidth());
  info.static_threadgroup_memory = state->staticThreadgroupMemoryLength();
  info.compile_seconds = seconds_since(t0);
  info.cache = cache;
  auto built = std::make_shared<MetalPipeline>(std::move(state), std::move(info));
  s_->pipelines[hash + "/" + key] = built;
  return built;
}

DispatchResult MetalBackend::dispatch(Pipeline& pipeline, const std::vector<BufferArg>& buffers,
                                      const DispatchArgs& args) {
  auto* mp = dynamic_cast<MetalPipeline*>(&pipeline);
  if (!mp) throw DispatchError("[metal] pipeline " + pipeline.info().key + " was not built by the metal backend");
  const PipelineInfo& pinfo = mp->info();
  validate_dispatch(s_->info, pinfo, args);
  if (buffers.size() > kMaxBindings)
    throw LimitError("[metal] kernel '" + pinfo.function + "': " + std::to_string(buffers.size()) +
                     " buffer arguments exceed Metal's " + std::to_string(kMaxBindings));
  for (const auto& [index, bytes] : args.threadgroup_memory)
    if (index >= kMaxBindings)
      throw LimitError("[metal] kernel '" + pinfo.function + "': threadgroup memory index " + std::to_string(index) +
                       " is beyond Metal's [[threadgroup(" + std::to_string(kMaxBindings - 1) + ")]]");
  // args.checked is not honoured here: bounds checking is a host-backend feature (it instruments every
  // device-memory access of the translated kernel); a Metal kernel runs unmodified on the GPU.

  AutoreleasePoolScope pool;
  s_->dispatches++;
  DispatchResult result;

  // Wrap each argument's memory without a copy when its address is page-aligned. The wrapped length is
  // rounded up to whole pages: the OS maps memory in pages, so the tail of the last page is readable, and
  // attention_proto.memory pads its arrays so that tail belongs to the array. Otherwise (or if Metal
  // refuses the memory) the data goes through a shared buffer: copied in, and out again if writable.
  // Small read-only arguments (params structs, scalars) go through setBytes, Metal's path for constant
  // data up to 4 KB: no buffer object, and not counted as a copy.
  struct Bound {
    NS::SharedPtr<MTL::Buffer> buffer;
    bool copied = false;      // this slot owns a copy of the caller's memory
    bool inline_bytes = false;
    bool write_back = false;  // the copy goes back to the caller (some slot sharing it is writable)
  };
  std::vector<Bound> bound(buffers.size());
  for (size_t i = 0; i < buffers.size(); i++) {
    const BufferArg& arg = buffers[i];
    if (!arg.data || arg.nbytes == 0) continue;  // unbound slot (Metal cannot make empty buffers)
    if (!arg.writable && arg.nbytes <= kMaxInlineBytes) {
      bound[i].inline_bytes = true;
      continue;
    }
    if (reinterpret_cast<uintptr_t>(arg.data) % s_->page_size == 0) {
      MTL::Buffer* wrapped = s_->device->newBuffer(arg.data, round_up(arg.nbytes, s_->page_size),
                                                   MTL::ResourceStorageModeShared, nullptr);
      if (wrapped) {
        bound[i].buffer = NS::TransferPtr(wrapped);
        s_->buffers_wrapped++;
        continue;
      }
    }
    // Slots bound to the same array share one copy: writes through one are seen through the other,
    // and copying back cannot undo them.
    bool shared = false;
    for (size_t j = 0; j < i && !shared; j++) {
      if (bound[j].copied && buffers[j].data == arg.data && buffers[j].nbytes == arg.nbytes) {
        bound[i].buffer = bound[j].buffer;
        bound[j].write_back |= arg.writable;
        shared = true;
      }
    }
    if (shared) continue;
    MTL::Buffer* copy = s_->device->newBuffer(arg.nbytes, MTL::ResourceStorageModeShared);
    if (!copy)
      throw DispatchError("[metal] kernel '" + pinfo.function + "': cannot allocate " +
                          std::to_string(arg.nbytes) + " bytes for buffer " + std::to_string(i));
    std::memcpy(copy->contents(), arg.data, arg.nbytes);
    bound[i].buffer = NS::TransferPtr(copy);
    bound[i].copied = true;
    bound[i].write_back = arg.writable;
    result.buffers_copied++;
    result.bytes_copied += arg.nbytes;
  }

  MTL::CommandBuffer* cmd = s_->queue->commandBuffer();  // autoreleased
  if (!cmd) throw DispatchError("[metal] kernel '" + pinfo.function + "': cannot create a command buffer");
  MTL::ComputeCommandEncoder* enc = cmd->computeCommandEncoder();
  enc->setComputePipelineState(mp->state());
  for (size_t i = 0; i < bound.size(); i++) {
    if (bound[i].inline_bytes) enc->setBytes(buffers[i].data, buffers[i].nbytes, i);
    else if (bound[i].buffer) enc->setBuffer(bound[i].buffer.get(), 0, i);
  }
  for (const auto& [index, bytes] : args.threadgroup_memory)
    enc->setThreadgroupMemoryLength(round_up(bytes, 16), index);  // Metal wants multiples of 16 bytes
  enc->dispatchThreadgroups(MTL::Size(args.grid[0], args.grid[1], args.grid[2]),
                            MTL::Size(args.threadgroup[0], args.threadgroup[1], args.threadgroup[2]));
  enc->endEncoding();
  cmd->commit();
  cmd->waitUntilCompleted();
  if (cmd->status() == MTL::CommandBufferStatusError)
    throw DispatchError("[metal] kernel '" + pinfo.function + "' failed: " + error_text(cmd->error()));

  result.seconds = cmd->GPUEndTime() - cmd->GPUStartTime();
  result.timer = "gpu";
  for (size_t i = 0; i < bound.size(); i++) {
    if (!bound[i].copied || !bound[i].write_back) continue;
    std::memcpy(buffers[i].data, bound[i].buffer->contents(), buffers[i].nbytes);
    result.bytes_copied += buffers[i].nbytes;
  }
  s_->buffers_copied += result.buffers_copied;
  s_->bytes_copied += result.bytes_copied;
  return result;
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

double MetalBackend::archive_add(const Source& source, const std::string& function, const Constants& constants) {
  AutoreleasePoolScope pool;
  const std::string text = resolved_text(source);
  const std::string hash = content_hash(text);
  const std::string key = pipeline_key(function, constants);
  std::lock_guard<std::mutex> lock(s_->mutex);
  if (!s_->archive)
    throw Error("[metal] archive_add(" + key + "): no binary archive is set; call set_archive(path) first");
  const auto t0 = Clock::now();
  NS::SharedPtr<MTL::Function> fn = s_->function(s_->library(source, text, hash), function, constants, key);
  s_->archive->add(fn.get());
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

std::unique_ptr<Backend> make_metal_backend() {
  AutoreleasePoolScope pool;
  MTL::Device* device = MTL::CreateSystemDefaultDevice();  // owned (a Create function)
  if (!device) return nullptr;
  auto s = std::make_unique<MetalBackend::State>();
  s->device = NS::TransferPtr(device);
  MTL::CommandQueue* queue = device->newCommandQueue();
  if (!queue) return nullptr;
  s->queue = NS::TransferPtr(queue);
  s->fast_math = fast_math_from_env();
  s->page_size = static_cast<size_t>(getpagesize());  // 16 KB on Apple Silicon

  DeviceInfo& info = s->info;
  info.backend = "metal";
  info.name = device->name()->utf8String();
  info.family = gpu_family(device);
  info.max_threadgroup_memory = device->maxThreadgroupMemoryLength();
  info.max_threads_per_threadgroup = static_cast<uint32_t>(device->maxThreadsPerThreadgroup().width);
  info.simd_width = 32;     // every Apple GPU; each PipelineInfo reports its threadExecutionWidth
  info.compute_units = 0;   // Metal does not expose the GPU core count
  info.unified_memory = device->hasUnifiedMemory();
  info.extra["recommended_max_working_set_size"] = std::to_string(device->recommendedMaxWorkingSetSize());
  info.extra["max_buffer_length"] = std::to_string(device->maxBufferLength());
  info.extra["architecture"] = device->architecture()->name()->utf8String();
  info.extra["os"] = NS::ProcessInfo::processInfo()->operatingSystemVersionString()->utf8String();
  info.extra["language_version"] = "3.1";
  info.extra["fast_math"] = s->fast_math ? "true" : "false";
  info.extra["page_size"] = std::to_string(s->page_size);
  info.extra["prebuilt_metallibs"] = kPrebuiltMetallibs ? "true" : "false";
  return std::unique_ptr<Backend>(new MetalBackend(std::move(s)));
}

}  // namespace aproto
