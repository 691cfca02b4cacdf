#include "host/host_backend.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "host/checked_memory.hpp"
#include "host/compiler.hpp"
#include "host/link.hpp"
#include "host/scheduler.hpp"
#include "host/translate.hpp"
#include "runtime/arguments.hpp"
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

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A compiled kernel library, shared by every lookup of its spec.
struct HostVariant {
  const aproto_kernel_desc* desc = nullptr;
  PipelineInfo info;                            // as first built
  std::atomic<uint64_t> threadgroup_bytes{0};   // what runs measured (host kernels declare as they go)
};

class HostPipeline : public Pipeline {
 public:
  HostPipeline(std::shared_ptr<HostVariant> variant, bool from_memory) : v_(std::move(variant)), memory_(from_memory) {}
  PipelineInfo info() const override {
    PipelineInfo i = v_->info;
    i.static_threadgroup_memory = v_->threadgroup_bytes.load();
    if (memory_) {  // this lookup built nothing
      i.cache = "memory";
      i.library_origin = "memory";
      i.library_seconds = i.function_seconds = i.pipeline_seconds = 0.0;
    }
    return i;
  }
  HostVariant& variant() const { return *v_; }

 private:
  std::shared_ptr<HostVariant> v_;
  bool memory_;
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

  std::shared_ptr<Pipeline> pipeline(const Source& source, const PipelineSpec& spec) override {
    const std::string name = source.path.empty() ? "<source>" : source.path;
    const std::string resolved = with_defines(resolve_includes(source), spec.defines, name);
    const std::string key = content_hash(resolved) + ":" + spec.key();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = cache_.find(key);
      if (it != cache_.end()) return std::make_shared<HostPipeline>(it->second, true);
    }
    check_constant_names(resolved, spec.constants, "[host] " + spec.key());
    auto v = std::make_shared<HostVariant>();
    PipelineInfo& info = v->info;
    info.function = spec.function;
    info.key = spec.key();
    info.arguments = kernel_arguments(resolved, spec.function, name, spec.constants);
    const auto t0 = Clock::now();
    std::string cpp = host::translate(resolved, spec.function, spec.constants, name, spec.table_functions);
    // Linking is part of the one compile: a pipeline with linked functions is one shared object.
    if (!spec.linked_functions.empty() || !spec.table_functions.empty() || !spec.libraries.empty() ||
        !spec.stitched.empty() || resolved.find("extern") != std::string::npos)
      cpp = host::link_pipeline(cpp, resolved, name, spec);
    const double translate_seconds = seconds_since(t0);
    host::CompiledKernel compiled = host::compile_kernel(cpp, spec.function);
    v->desc = compiled.desc;
    uint32_t max_threads = info_.max_threads_per_threadgroup;
    if (compiled.desc->max_total_threads_per_threadgroup)
      max_threads = std::min(max_threads, compiled.desc->max_total_threads_per_threadgroup);
    if (spec.max_threads_per_threadgroup) max_threads = std::min(max_threads, spec.max_threads_per_threadgroup);
    info.max_total_threads_per_threadgroup = max_threads;
    info.thread_execution_width = APROTO_SIMD_WIDTH;
    info.cache = compiled.from_disk_cache ? "disk" : "compiled";
    info.library_origin = compiled.from_disk_cache ? "disk" : "source";
    info.library_seconds = translate_seconds + compiled.compile_seconds;
    info.pipeline_seconds = compiled.load_seconds;
    std::lock_guard<std::mutex> lock(mutex_);
    auto [it, fresh] = cache_.emplace(key, v);
    return std::make_shared<HostPipeline>(it->second, !fresh);
  }

  DispatchResult dispatch(const std::vector<Dispatch>& steps, uint32_t repeat) override {
    for (const Dispatch& step : steps) {
      auto& p = dynamic_cast<HostPipeline&>(*step.pipeline);
      PipelineInfo check = p.info();
      check.static_threadgroup_memory = 0;  // known only once threads declare it; enforced as they do
      validate_dispatch(info_, check, step.buffers, step.args);
    }
    DispatchResult out;
    out.repeat = std::max(1u, repeat);
    out.timer = "wall";
    const auto start = Clock::now();
    for (uint32_t r = 0; r < out.repeat; r++)
      for (const Dispatch& step : steps) run_one(dynamic_cast<HostPipeline&>(*step.pipeline).variant(), step, out);
    out.seconds = out.wall_seconds = seconds_since(start) / out.repeat;
    return out;
  }

 private:
  void run_one(HostVariant& v, const Dispatch& step, DispatchResult& out) {
    const aproto_kernel_desc* k = v.desc;
    const std::string who = "[host] kernel '" + std::string(k->name) + "'";
    const std::vector<BufferArg>& buffers = step.buffers;
    const DispatchArgs& args = step.args;
    host::GridLaunch launch;
    launch.kernel = k;
    launch.grid = args.grid;
    launch.threadgroup = args.threadgroup;
    launch.threadgroup_limit = info_.max_threadgroup_memory;
    launch.workers = info_.compute_units;
    launch.stack_bytes = env_u64("APROTO_HOST_STACK_KB", 256) * 1024;
    launch.timeout_seconds = (double)env_u64("APROTO_HOST_TIMEOUT", 600);
    for (auto& [index, bytes] : args.threadgroup_memory) launch.threadgroup_args.push_back({index, bytes});

    const bool checked = args.checked || env_flag("APROTO_CHECKED");
    // A buffer runs from a copy in checked mode (a guarded one) or when its address is not aligned for
    // the kernel's pointer type (Metal copies such memory too; both count it). The decision is made per
    // memory range: every slot bound to the same array uses the one copy, so a write through one slot is
    // seen through the other, as on the GPU, and no stale copy is written back over it.
    using Range = std::pair<void*, size_t>;
    std::map<Range, uint64_t> align;  // the strictest alignment any slot asks of a range
    std::map<Range, bool> written;
    for (uint32_t i = 0; i < k->n_buffers; i++) {
      const aproto_buffer_desc& b = k->buffers[i];
      if (args.function_tables.count(b.index)) continue;  // bound below to the table the dispatch fills
      const BufferArg& a = buffers[b.index];  // validate_dispatch checked every slot is bound
      if (a.nbytes < b.min_bytes)
        throw ArgumentError(who + ": [[buffer(" + std::to_string(b.index) + ")]] '" + b.name + "' (" + b.type +
                            ") needs " + std::to_string(b.min_bytes) + " bytes, got " + std::to_string(a.nbytes));
      align[{a.data, a.nbytes}] = std::max<uint64_t>(align[{a.data, a.nbytes}], b.align);
      written[{a.data, a.nbytes}] = written[{a.data, a.nbytes}] || !b.readonly;
    }
    std::map<Range, std::shared_ptr<host::GuardedBuffer>> copies;
    for (const auto& [range, alignment] : align) {
      const bool misaligned = (uintptr_t)range.first % alignment != 0;
      if (!checked && !misaligned) continue;
      copies[range] = std::make_shared<host::GuardedBuffer>(range.first, range.second, std::max<uint64_t>(alignment, 16));
      if (misaligned) {
        out.buffers_copied++;
        out.bytes_copied += range.second * (written[range] ? 2 : 1);
      }
    }
    launch.buffers.assign(buffers.size(), nullptr);
    std::map<uint32_t, std::vector<void*>> entries;  // visible_function_table slots: the chosen functions
    std::map<uint32_t, aproto_function_table> tables;
    for (const auto& [index, names] : args.function_tables) {
      for (const std::string& name : names) {
        uint32_t f = 0, b = 0;
        while (f < k->n_functions && name != k->function_names[f]) f++;
        while (b < k->n_buffers && k->buffers[b].index != index) b++;
        if (f == k->n_functions) {
          std::string known;
          for (uint32_t j = 0; j < k->n_functions; j++) known += (j ? ", " : "") + std::string(k->function_names[j]);
          throw ArgumentError(who + ": function table [[buffer(" + std::to_string(index) + ")]] names '" + name +
                              "', which is not one of the pipeline's table functions (" +
                              (known.empty() ? std::string("none: give them as table_functions") : known) + ")");
        }
        if (!k->function_fits[b * k->n_functions + f])
          throw ArgumentError(who + ": '" + name + "' does not have the signature of the function table '" +
                              k->buffers[b].name + "' (" + k->buffers[b].type + ")");
        entries[index].push_back(k->functions[f]);
      }
      tables[index] = {entries[index].data(), entries[index].size()};
      if (launch.buffers.size() <= index) launch.buffers.resize(index + 1, nullptr);
    }
    for (uint32_t i = 0; i < k->n_buffers; i++) {
      const aproto_buffer_desc& b = k->buffers[i];
      if (tables.count(b.index)) {
        launch.buffers[b.index] = &tables[b.index];
        continue;
      }
      const BufferArg& a = buffers[b.index];
      auto copy = copies.find({a.data, a.nbytes});
      launch.buffers[b.index] = copy != copies.end() ? copy->second->data() : a.data;
      launch.ranges.push_back({b.index, b.name, (const char*)launch.buffers[b.index], a.nbytes});
    }

    host::GridResult r = host::run_grid(launch);
    uint64_t seen = v.threadgroup_bytes.load();
    while (r.threadgroup_variable_bytes > seen && !v.threadgroup_bytes.compare_exchange_weak(seen, r.threadgroup_variable_bytes)) {
    }
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
      if (tables.count(b.index)) continue;
      if (size_t under = copies.at({buffers[b.index].data, buffers[b.index].nbytes})->underrun_bytes())
        throw OutOfBoundsError(who + ": out-of-bounds write before the start of buffer " + std::to_string(b.index) +
                               " ('" + b.name + "'), " + std::to_string(under) + " bytes before offset 0");
    }
    for (const auto& [range, copy] : copies)
      if (written[range]) copy->copy_back(range.first);
  }

  DeviceInfo info_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<HostVariant>> cache_;
};

}  // namespace

Backend& host_backend() {
  static HostBackend backend;
  return backend;
}

}  // namespace aproto
