// Runs a grid of threadgroups of one compiled kernel on the CPU: each threadgroup on one OS thread,
// each of its GPU threads a fiber, threadgroups spread over worker threads (one per core).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "host/include/aproto_kernel_abi.h"

namespace aproto::host {

// A bound device buffer, for naming it in fault messages.
struct BufferRange {
  uint32_t index = 0;
  std::string name;
  const char* base = nullptr;
  uint64_t bytes = 0;
};

struct GridLaunch {
  const aproto_kernel_desc* kernel = nullptr;
  std::vector<void*> buffers;                // indexed by [[buffer(i)]]
  std::vector<BufferRange> ranges;
  std::array<uint32_t, 3> grid{1, 1, 1};     // threadgroups per grid
  std::array<uint32_t, 3> threadgroup{1, 1, 1};
  std::vector<std::pair<uint32_t, uint64_t>> threadgroup_args;  // [[threadgroup(i)]] -> bytes
  uint64_t threadgroup_limit = 32768;
  unsigned workers = 0;                      // 0: one per core
  size_t stack_bytes = 256 * 1024;
  double timeout_seconds = 0;                // > 0: a dispatch running longer fails instead of hanging
};

enum class Failure { None, Deadlock, Timeout, Limit, Fault, Kernel };

struct GridResult {
  Failure failure = Failure::None;
  std::string message;
  uint64_t threadgroup_variable_bytes = 0;  // bytes of `threadgroup` declarations one group used
};

GridResult run_grid(const GridLaunch& launch);

// The table of runtime services handed to every kernel library (aproto_kernel_desc::bind).
const aproto_runtime* runtime_table();

}  // namespace aproto::host
