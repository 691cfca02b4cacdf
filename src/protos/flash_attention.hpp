// Prototype 1, flash attention forward: re-checks a call's tensors, specialises the pipeline of
// shaders/flash_attention.metal and dispatches it on the caller's memory (no copies on the host).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/backend.hpp"

namespace aproto::flash_attention {

enum class DType { Float32, Float16, BFloat16 };

// "float32" | "float16" | "bfloat16"; throws std::invalid_argument for anything else.
DType parse_dtype(const std::string& name);
const char* dtype_name(DType dtype);
uint32_t itemsize(DType dtype);

// Head dimensions the kernel is built for.
const std::vector<uint32_t>& supported_head_dims();

// A caller-owned array: shape and strides in elements, `itemsize` as the array declares it.
struct Tensor {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  uint32_t itemsize = 0;
  bool writable = false;
};

struct Options {
  DType dtype = DType::Float32;
  uint32_t block_q = 0;  // query rows per threadgroup (multiple of 8)
  uint32_t block_k = 0;  // keys per step (multiple of 8, at most 128: MAX_BLOCK_K in the shader)
  bool causal = false;
  float scale = 0.0f;
  std::string backend;     // "" = the best available
  std::string shader_dir;  // where flash_attention.metal is installed
};

struct Result {
  DispatchResult dispatch;
  PipelineInfo pipeline;
  std::string backend;
  std::map<uint32_t, uint64_t> threadgroup_memory;  // the dispatch's [[threadgroup(n)]] lengths in bytes
};

// Threadgroup memory of one configuration in bytes, the length dispatched as the kernel's
// [[threadgroup(0)]] buffer: (block_q + 2 * block_k) rows of head_dim elements plus 16 bytes of
// padding each (a multiple of 16 bytes).
uint64_t threadgroup_bytes(uint32_t block_q, uint32_t block_k, uint32_t head_dim, DType dtype);

// Runs O = softmax(scale * Q K^T + mask) V into `o` (and the logsumexp into `lse` when not null).
// Every shape, stride, alignment and limit is checked first: a bad argument throws
// std::invalid_argument "[flash_attention] ...", a configuration over the device's threadgroup memory
// throws LimitError. Call without the GIL: it compiles (first use) and waits for the dispatch.
Result run(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor* lse,
           const Options& options);

// The pipeline of one configuration (built or fetched from the caches). On the host backend its
// static_threadgroup_memory is what the last dispatch measured (0 before any dispatch).
PipelineInfo pipeline_info(uint32_t head_dim, bool write_lse, const Options& options);

}  // namespace aproto::flash_attention
