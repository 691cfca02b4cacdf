#include <cstdlib>
#include <cstring>
#include <mutex>

#include "host/host_backend.hpp"
#include "runtime/arguments.hpp"
#include "runtime/backend.hpp"
#include "runtime/source.hpp"
#ifdef APROTO_WITH_METAL
#include "metal/metal_backend.hpp"
#endif

namespace aproto {

namespace {
#ifdef APROTO_WITH_METAL
// Created once; null when this Mac has no Metal device (the reason in `why`).
Backend* metal_or_null(std::string* why = nullptr) {
  static std::string reason;
  static std::unique_ptr<Backend> metal = make_metal_backend(reason);
  if (why) *why = reason;
  return metal.get();
}

// On Apple Silicon a Metal device is expected: running the suite on the host backend only, because
// device lookup failed, must not pass quietly.
bool metal_required() {
#if defined(__APPLE__) && defined(__aarch64__)
  const char* v = std::getenv("APROTO_REQUIRE_METAL");
  return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0));
#else
  return false;
#endif
}
#endif
}  // namespace

std::vector<std::string> available_backends() {
  std::vector<std::string> names;
#ifdef APROTO_WITH_METAL
  std::string why;
  if (metal_or_null(&why)) {
    names.push_back("metal");
  } else if (metal_required()) {
    throw BackendUnavailable("[runtime] no Metal device on this Apple Silicon Mac: " + why +
                             ". Metal needs a logged-in GPU session (not a plain VM or sandbox without GPU "
                             "access). Set APROTO_REQUIRE_METAL=0 to run on the host backend only.");
  }
#endif
  names.push_back("host");
  return names;
}

Backend& get_backend(const std::string& name) {
  if (name.empty()) return get_backend(available_backends().front());
  if (name == "host") return host_backend();
#ifdef APROTO_WITH_METAL
  if (name == "metal") {
    std::string why;
    if (Backend* metal = metal_or_null(&why)) return *metal;
    throw BackendUnavailable("[runtime] backend 'metal' unavailable: " + why);
  }
#endif
  std::string known;
  for (const auto& n : available_backends()) known += (known.empty() ? "" : ", ") + n;
  throw BackendUnavailable("[runtime] unknown or unavailable backend '" + name + "' (available: " + known + ")");
}

std::string PipelineSpec::key() const {
  std::string key = function;
  if (!constants.empty()) key += "[" + constants_key(constants) + "]";
  if (!defines.empty()) {
    std::string d;
    for (const auto& [name, value] : defines) d += (d.empty() ? "" : ",") + name + (value.empty() ? "" : "=" + value);
    key += "{" + d + "}";
  }
  if (!linked_functions.empty()) {
    std::string l;
    for (const auto& f : linked_functions) l += (l.empty() ? "" : ",") + f;
    key += "<" + l + ">";
  }
  if (max_threads_per_threadgroup) key += "@" + std::to_string(max_threads_per_threadgroup);
  auto list = [](const std::vector<std::string>& names) {
    std::string l;
    for (const auto& n : names) l += (l.empty() ? "" : ",") + n;
    return l;
  };
  if (!table_functions.empty()) key += "|table:" + list(table_functions);
  for (const Source& lib : libraries) key += "|lib:" + content_hash(lib.path + "\n" + lib.text);
  for (const StitchingGraph& g : stitched) {
    key += "|stitch:" + g.function + "=";
    for (const auto& n : g.nodes) {
      std::vector<std::string> args;
      for (int a : n.arguments) args.push_back(a >= 0 ? std::to_string(a) : "n" + std::to_string(-1 - a));
      key += n.function + "(" + list(args) + ")";
    }
  }
  return key;
}

void validate_dispatch(const DeviceInfo& device, const PipelineInfo& pipeline, const std::vector<BufferArg>& buffers,
                       const DispatchArgs& args) {
  const std::string who = "[" + device.backend + "] kernel '" + pipeline.function + "'";
  uint64_t threads = 1;
  for (int d = 0; d < 3; d++) {
    if (args.grid[d] == 0 || args.threadgroup[d] == 0)
      throw ArgumentError(who + ": grid and threadgroup sizes must be >= 1 in every dimension");
    threads *= args.threadgroup[d];
  }
  uint64_t max_threads = pipeline.max_total_threads_per_threadgroup ? pipeline.max_total_threads_per_threadgroup
                                                                    : device.max_threads_per_threadgroup;
  if (threads > max_threads)
    throw LimitError(who + ": " + std::to_string(threads) + " threads per threadgroup exceeds the pipeline's limit of " +
                     std::to_string(max_threads));
  uint64_t tg_bytes = pipeline.static_threadgroup_memory;
  for (const auto& [index, bytes] : args.threadgroup_memory) tg_bytes += (bytes + 15) / 16 * 16;
  if (tg_bytes > device.max_threadgroup_memory)
    throw LimitError(who + " asks for " + std::to_string(tg_bytes) + " bytes of threadgroup memory (limit " +
                     std::to_string(device.max_threadgroup_memory) + ")");
  for (const auto& a : pipeline.arguments)
    if (a.kind == "threadgroup" && !args.threadgroup_memory.count(a.index))
      throw ArgumentError(who + " has a [[threadgroup(" + std::to_string(a.index) + ")]] parameter '" + a.name +
                          "' but the dispatch gave it no length (threadgroup_memory={" + std::to_string(a.index) +
                          ": nbytes})");
  for (const auto& a : pipeline.arguments)
    if (a.kind == "function_table" && !args.function_tables.count(a.index))
      throw ArgumentError(who + ": [[buffer(" + std::to_string(a.index) + ")]] '" + a.name + "' (" + a.type +
                          ") needs a function table (pass attention_proto.FunctionTable([...]) in that slot)");
  for (const auto& [index, names] : args.function_tables) {
    bool declared = false;
    for (const auto& a : pipeline.arguments) declared = declared || (a.kind == "function_table" && a.index == index);
    if (!declared)
      throw ArgumentError(who + ": a function table was given for [[buffer(" + std::to_string(index) +
                          ")]], which is no visible_function_table parameter of the kernel");
  }
  validate_buffers(who, pipeline.arguments, buffers);
}

}  // namespace aproto
