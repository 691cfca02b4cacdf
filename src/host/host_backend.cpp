#include "host/host_backend.hpp"

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "host/checked_memory.hpp"
#include "host/compiler.hpp"
#include "host/scheduler.hpp"
#include "host/translate.hpp"
#include "runtime/source.hpp"

#ifdef __APPLE__
#include <sys/sysctl.h>
#endif

namespace aproto {

namespace {

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::strtoull(v, nullptr, 10) : fallback;
}

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0" && std::string(v) != "false";
}

std::string cpu_name() {
#ifdef __APPLE__
  char buf[256];
  size_t len = sizeof buf;
  if (sysctlbyname("machdep.cpu.brand_string", buf, &len, nullptr, 0) == 0) return buf;
#else
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
#endif
  return "unknown CPU";
}

class HostPipeline : public Pipeline {
 public:
  HostPipeline(PipelineInfo info, const aproto_kernel_desc* desc) : info_(std::move(info)), desc_(desc) {}
  const PipelineInfo& info() const override { return info_; }
  const aproto_kernel_desc* desc() const { return desc_; }
  // What a run measured (host kernels declare threadgroup memory as they reach it).
  void record_threadgroup_bytes(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    info_.static_threadgroup_memory = std::max(info_.static_threadgroup_memory, bytes);
  }

 private:
  std::mutex mutex_;
  PipelineInfo info_;
  const aproto_kernel_desc* desc_;
};

class HostBackend : public Backend {
 public:
  HostBackend() {
    info_.backend = "host";
    info_.name = cpu_name();
    info_.family = "cpu";
    // The host emulates an Apple GPU's limits so kernels that break them fail here too.
    info_.max_threadgroup_memory = env_u64("APROTO_HOST_TG_LIMIT", 32768);
    info_.simd_width = APROTO_SIMD_WIDTH;
    info_.max_threads_per_threadgroup = 1024;
    info_.compute_units = (uint32_t)env_u64("APROTO_HOST_THREADS", std::max(1u, std::thread::hardware_concurrency()));
    info_.unified_memory = true;
    info_.extra["timer"] = "wall clock (CPU time of the emulation, not GPU time)";
    info_.extra["cache_dir"] = host::cache_directory();
  }

  const DeviceInfo& info() const override { return info_; }

  std::shared_ptr<Pipeline> pipeline(const Source& source, const std::string& function,
                                     const Constants& constants) override {
    const std::string resolved = resolve_includes(source);
    const std::string key = content_hash(resolved) + ":" + pipeline_key(function, constants);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = cache_.find(key);
      if (it != cache_.end()) return it->second;
    }
    std::string name = source.path.empty() ? "<source>" : source.path;
    host::CompiledKernel compiled = host::compile_kernel(host::translate(resolved, function, constants, name), function);
    PipelineInfo info;
    info.function = function;
    info.key = pipeline_key(function, constants);
    info.max_total_threads_per_threadgroup =
        compiled.desc->max_total_threads_per_threadgroup
            ? std::min(compiled.desc->max_total_threads_per_threadgroup, info_.max_threads_per_threadgroup)
            : info_.max_threads_per_threadgroup;
    info.thread_execution_width = APROTO_SIMD_WIDTH;
    info.compile_seconds = compiled.compile_seconds;
    info.cache = compiled.from_disk_cache ? "disk" : "compiled";
    auto p = std::make_shared<HostPipeline>(info, compiled.desc);
    std::lock_guard<std::mutex> lock(mutex_);
    return cache_.emplace(key, p).first->second;
  }

  DispatchResult dispatch(Pipeline& pipeline, const std::vector<BufferArg>& buffers,
                          const DispatchArgs& args) override {
    auto& p = dynamic_cast<HostPipeline&>(pipeline);
    const aproto_kernel_desc* k = p.desc();
    const std::string who = "[host] kernel '" + std::string(k->name) + "'";
    PipelineInfo check = p.info();
    check.static_threadgroup_memory = 0;  // known only once threads declare it; enforced as they do
    validate_dispatch(info_, check, args);

    host::GridLaunch launch;
    launch.kernel = k;
    launch.grid = args.grid;
    launch.threadgroup = args.threadgroup;
    launch.threadgroup_limit = info_.max_threadgroup_memory;
    launch.workers = info_.compute_units;
    launch.stack_bytes = env_u64("APROTO_HOST_STACK_KB", 256) * 1024;
    launch.timeout_seconds = (double)env_u64("APROTO_HOST_TIMEOUT", 600);
    for (auto& [index, bytes] : args.threadgroup_memory) launch.threadgroup_args.push_back({index, bytes});
    for (uint32_t i = 0; i < k->n_threadgroup_args; i++) {
      bool given = args.threadgroup_memory.count(k->threadgroup_arg_indices[i]);
      if (!given)
        throw DispatchError(who + " has a [[threadgroup(" + std::to_string(k->threadgroup_arg_indices[i]) +
                            ")]] parameter but the dispatch gave it no length");
    }

    const bool checked = args.checked || env_flag("APROTO_CHECKED");
    // A buffer runs from a copy in checked mode (a guarded one) or when its address is not aligned for
    // the kernel's pointer type (Metal copies such memory too; both count it). Slots bound to the same
    // array share one copy, so a write through one slot is seen through the other, as on the GPU.
    std::map<std::pair<void*, size_t>, std::shared_ptr<host::GuardedBuffer>> copies;
    std::vector<std::shared_ptr<host::GuardedBuffer>> staged(buffers.size());
    DispatchResult out;
    launch.buffers.assign(buffers.size(), nullptr);
    for (uint32_t i = 0; i < k->n_buffers; i++) {
      const aproto_buffer_desc& b = k->buffers[i];
      std::string what = "buffer " + std::to_string(b.index) + " ('" + b.name + "', " + b.type + ")";
      if (b.index >= buffers.size() || !buffers[b.index].data)
        throw DispatchError(who + ": " + what + " is not bound (the kernel has " + std::to_string(k->n_buffers) +
                            " buffer parameters; pass one array per [[buffer(n)]] index)");
      const BufferArg& a = buffers[b.index];
      if (a.nbytes < b.min_bytes)
        throw DispatchError(who + ": " + what + " needs " + std::to_string(b.min_bytes) + " bytes, got " +
                            std::to_string(a.nbytes));
      if (!b.readonly && !a.writable)
        throw DispatchError(who + ": " + what + " is writable in the kernel but the array passed is read-only");
      const bool misaligned = (uintptr_t)a.data % b.align != 0;
      if (checked || misaligned) {
        auto& copy = copies[{a.data, a.nbytes}];
        if (!copy) {
          copy = std::make_shared<host::GuardedBuffer>(a.data, a.nbytes, std::max<uint64_t>(b.align, 16));
          if (misaligned) {
            out.buffers_copied++;
            out.bytes_copied += a.nbytes * (b.readonly ? 1 : 2);
          }
        }
        staged[b.index] = copy;
        launch.buffers[b.index] = copy->data();
      } else {
        launch.buffers[b.index] = a.data;
      }
      launch.ranges.push_back({b.index, b.name, (const char*)launch.buffers[b.index], a.nbytes});
    }

    auto start = std::chrono::steady_clock::now();
    host::GridResult r = host::run_grid(launch);
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    out.timer = "wall";
    p.record_threadgroup_bytes(r.threadgroup_variable_bytes);
    switch (r.failure) {
      case host::Failure::None: break;
      case host::Failure::Deadlock:
      case host::Failure::Timeout: throw DeadlockError("[host] " + r.message);
      case host::Failure::Limit: throw LimitError("[host] " + r.message);
      case host::Failure::Fault:
        if (checked) throw OutOfBoundsError("[host] " + r.message);
        if (r.message.find("stack overflow") != std::string::npos) throw DispatchError("[host] " + r.message);
        throw DispatchError("[host] " + r.message + " (run with checked=True or APROTO_CHECKED=1 for exact bounds)");
      case host::Failure::Kernel: throw DispatchError("[host] " + r.message);
    }
    for (uint32_t i = 0; i < k->n_buffers && checked; i++) {
      const aproto_buffer_desc& b = k->buffers[i];
      if (size_t under = staged[b.index]->underrun_bytes())
        throw OutOfBoundsError(who + ": out-of-bounds write before the start of buffer " + std::to_string(b.index) +
                               " ('" + b.name + "'), " + std::to_string(under) + " bytes before offset 0");
    }
    for (uint32_t i = 0; i < k->n_buffers; i++) {
      const aproto_buffer_desc& b = k->buffers[i];
      if (staged[b.index] && !b.readonly) staged[b.index]->copy_back(buffers[b.index].data);  // shared: same bytes
    }
    return out;
  }

 private:
  DeviceInfo info_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Pipeline>> cache_;
};

}  // namespace

Backend& host_backend() {
  static HostBackend backend;
  return backend;
}

}  // namespace aproto
