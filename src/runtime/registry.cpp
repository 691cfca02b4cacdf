#include <mutex>

#include "host/host_backend.hpp"
#include "runtime/backend.hpp"
#ifdef APROTO_WITH_METAL
#include "metal/metal_backend.hpp"
#endif

namespace aproto {

namespace {
#ifdef APROTO_WITH_METAL
// Created once; null when this Mac has no Metal device.
Backend* metal_or_null() {
  static std::unique_ptr<Backend> metal = make_metal_backend();
  return metal.get();
}
#endif
}  // namespace

std::vector<std::string> available_backends() {
  std::vector<std::string> names;
#ifdef APROTO_WITH_METAL
  if (metal_or_null()) names.push_back("metal");
#endif
  names.push_back("host");
  return names;
}

Backend& get_backend(const std::string& name) {
  if (name.empty()) return get_backend(available_backends().front());
  if (name == "host") return host_backend();
#ifdef APROTO_WITH_METAL
  if (name == "metal") {
    if (Backend* metal = metal_or_null()) return *metal;
    throw BackendUnavailable("[runtime] backend 'metal' unavailable: no Metal device on this machine");
  }
#endif
  std::string known;
  for (const auto& n : available_backends()) known += (known.empty() ? "" : ", ") + n;
  throw BackendUnavailable("[runtime] unknown or unavailable backend '" + name + "' (available: " + known + ")");
}

void validate_dispatch(const DeviceInfo& device, const PipelineInfo& pipeline, const DispatchArgs& args) {
  uint64_t threads = 1;
  for (int d = 0; d < 3; d++) {
    if (args.grid[d] == 0 || args.threadgroup[d] == 0)
      throw DispatchError("[" + device.backend + "] kernel '" + pipeline.function +
                          "': grid and threadgroup sizes must be >= 1 in every dimension");
    threads *= args.threadgroup[d];
  }
  uint64_t max_threads = pipeline.max_total_threads_per_threadgroup ? pipeline.max_total_threads_per_threadgroup
                                                                    : device.max_threads_per_threadgroup;
  if (threads > max_threads)
    throw LimitError("[" + device.backend + "] kernel '" + pipeline.function + "': " + std::to_string(threads) +
                     " threads per threadgroup exceeds the limit of " + std::to_string(max_threads));
  uint64_t tg_bytes = pipeline.static_threadgroup_memory;
  for (const auto& [index, bytes] : args.threadgroup_memory) tg_bytes += (bytes + 15) / 16 * 16;
  if (tg_bytes > device.max_threadgroup_memory)
    throw LimitError("[" + device.backend + "] kernel '" + pipeline.function + "' asks for " +
                     std::to_string(tg_bytes) + " bytes of threadgroup memory (limit " +
                     std::to_string(device.max_threadgroup_memory) + ")");
}

}  // namespace aproto
