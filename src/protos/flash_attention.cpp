#include "protos/flash_attention.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "attention_params.h"

namespace aproto::flash_attention {

namespace {

constexpr const char* kShaderFile = "flash_attention.metal";
constexpr uint64_t kRowPadBytes = 16;  // ROW_PAD_BYTES in the shader
constexpr uint32_t kMaxBlockQ = 256;   // 32 SIMD-groups = 1024 threads, Apple's per-threadgroup limit
// MAX_BLOCK_K in the shader: the score registers are an array of literal size MAX_BLOCK_K / 8 (MSL array
// sizes must be compile-time constants, which function constants are not), so larger blocks cannot run.
constexpr uint32_t kMaxBlockK = 128;
constexpr int64_t kMaxLength = int64_t(1) << 30;  // the kernel computes row - Nq + Nk in 32-bit ints

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("[flash_attention] " + what); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); i++) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

void check_tensor(const Tensor& t, const char* name, size_t ndim, uint32_t itemsize, uint32_t alignment) {
  if (!t.data) bad(std::string(name) + " has no data");
  if (t.shape.size() != ndim)
    bad(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " + shape_text(t.shape));
  if (t.itemsize != itemsize)
    bad(std::string(name) + " has " + std::to_string(t.itemsize) + "-byte elements, expected " +
        std::to_string(itemsize));
  int64_t expected = 1;  // C-contiguous: strides are suffix products of the shape
  for (size_t d = ndim; d-- > 0;) {
    if (t.shape[d] < 1) bad(std::string(name) + " has an empty dimension, shape " + shape_text(t.shape));
    if (t.shape[d] > 1 && t.strides[d] != expected)
      bad(std::string(name) + " must be C-contiguous (shape " + shape_text(t.shape) + ")");
    expected *= t.shape[d];
  }
  if (reinterpret_cast<uintptr_t>(t.data) % alignment != 0)
    bad(std::string(name) + " must be " + std::to_string(alignment) + "-byte aligned");
}

uint64_t element_count(const Tensor& t) {
  uint64_t n = 1;
  for (int64_t s : t.shape) n *= uint64_t(s);
  return n;
}

// The shader's text, read once per path (the backends cache pipelines by its content).
const std::string& shader_text(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, std::string> texts;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = texts.find(path);
  if (it != texts.end()) return it->second;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CompileError("[flash_attention] cannot read the shader " + path);
  std::ostringstream body;
  body << in.rdbuf();
  return texts.emplace(path, body.str()).first->second;
}

void check_blocks(uint32_t block_q, uint32_t block_k) {
  if (block_q < 8 || block_q % 8 != 0 || block_q > kMaxBlockQ)
    bad("block_q " + std::to_string(block_q) + " must be a multiple of 8 in 8.." + std::to_string(kMaxBlockQ));
  if (block_k < 8 || block_k % 8 != 0 || block_k > kMaxBlockK)
    bad("block_k " + std::to_string(block_k) + " must be a multiple of 8 in 8.." + std::to_string(kMaxBlockK) +
        " (the kernel's score registers are sized for MAX_BLOCK_K = " + std::to_string(kMaxBlockK) + " keys)");
}

void check_head_dim(int64_t head_dim) {
  const auto& dims = supported_head_dims();
  if (std::find(dims.begin(), dims.end(), head_dim) != dims.end()) return;
  std::string list;
  for (uint32_t d : dims) list += (list.empty() ? "" : ", ") + std::to_string(d);
  bad("head_dim " + std::to_string(head_dim) + " not supported (supported: " + list + ")");
}

std::shared_ptr<Pipeline> build_pipeline(Backend& backend, uint32_t head_dim, bool write_lse, const Options& o) {
  check_blocks(o.block_q, o.block_k);
  check_head_dim(head_dim);
  const uint64_t bytes = threadgroup_bytes(o.block_q, o.block_k, head_dim, o.dtype);
  const uint64_t limit = backend.info().max_threadgroup_memory;
  if (bytes > limit)
    throw LimitError("[flash_attention] block_q=" + std::to_string(o.block_q) + ", block_k=" +
                     std::to_string(o.block_k) + " with head_dim " + std::to_string(head_dim) + " and " +
                     dtype_name(o.dtype) + " needs " + std::to_string(bytes) +
                     " bytes of threadgroup memory (limit " + std::to_string(limit) + ")");
  const std::string path = o.shader_dir + "/" + kShaderFile;
  Source source{shader_text(path), path, {o.shader_dir}};
  Constants constants = {
      {"BLOCK_Q", ConstantValue::unsigned_integer(o.block_q)},
      {"BLOCK_K", ConstantValue::unsigned_integer(o.block_k)},
      {"HEAD_DIM", ConstantValue::unsigned_integer(head_dim)},
      {"CAUSAL", ConstantValue::boolean(o.causal)},
      {"WRITE_LSE", ConstantValue::boolean(write_lse)},
  };
  return backend.pipeline(source, std::string("flash_attention_") +
                                       (o.dtype == DType::Float32 ? "f32" : o.dtype == DType::Float16 ? "f16" : "bf16"),
                          constants);
}

}  // namespace

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "float16") return DType::Float16;
  if (name == "bfloat16") return DType::BFloat16;
  bad("dtype '" + name + "' not supported (float32, float16, bfloat16)");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "?";
}

uint32_t itemsize(DType dtype) { return dtype == DType::Float32 ? 4 : 2; }

const std::vector<uint32_t>& supported_head_dims() {
  static const std::vector<uint32_t> dims = {32, 64, 80, 96, 128, 256};
  return dims;
}

uint64_t threadgroup_bytes(uint32_t block_q, uint32_t block_k, uint32_t head_dim, DType dtype) {
  return (uint64_t(block_q) + 2 * uint64_t(block_k)) * (uint64_t(head_dim) * itemsize(dtype) + kRowPadBytes);
}

Result run(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor* lse,
           const Options& options) {
  const uint32_t size = itemsize(options.dtype);
  // The kernel reads q, k, v four elements at a time (vec<T, 4>); it writes o and lse per element.
  check_tensor(q, "q", 4, size, 4 * size);
  check_tensor(k, "k", 4, size, 4 * size);
  check_tensor(v, "v", 4, size, 4 * size);
  check_tensor(o, "out", 4, size, size);
  if (!o.writable) bad("out must be writable");
  const int64_t B = q.shape[0], Hq = q.shape[1], Nq = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k.shape[1], Nk = k.shape[2];
  if (k.shape[0] != B || k.shape[3] != D)
    bad("k shape " + shape_text(k.shape) + " does not match q " + shape_text(q.shape) +
        " (expected [B, Hkv, Nk, D] with q's B and D)");
  if (v.shape != k.shape) bad("v shape " + shape_text(v.shape) + " must equal k shape " + shape_text(k.shape));
  if (o.shape != q.shape) bad("out shape " + shape_text(o.shape) + " must equal q shape " + shape_text(q.shape));
  if (Hq % Hkv != 0)
    bad("q heads (" + std::to_string(Hq) + ") must be a multiple of kv heads (" + std::to_string(Hkv) + ")");
  if (Nq > kMaxLength || Nk > kMaxLength || B > UINT32_MAX || Hq > UINT32_MAX)
    bad("sizes too large for one dispatch: q " + shape_text(q.shape) + ", k " + shape_text(k.shape));
  check_head_dim(D);
  if (lse) {
    check_tensor(*lse, "lse", 3, 4, 4);
    if (!lse->writable) bad("lse must be writable");
    if (lse->shape != std::vector<int64_t>{B, Hq, Nq})
      bad("lse shape " + shape_text(lse->shape) + " must be [B, Hq, Nq] = " + shape_text({B, Hq, Nq}));
  }
  const float scale = options.scale;
  if (!std::isfinite(scale)) bad("scale must be finite");

  Backend& backend = get_backend(options.backend);
  auto pipeline = build_pipeline(backend, uint32_t(D), lse != nullptr, options);

  FlashAttentionParams params{};
  params.batch = uint32_t(B);
  params.q_heads = uint32_t(Hq);
  params.kv_heads = uint32_t(Hkv);
  params.q_len = uint32_t(Nq);
  params.kv_len = uint32_t(Nk);
  params.q_per_kv = uint32_t(Hq / Hkv);
  params.scale_log2 = scale * 1.4426950408889634f;  // log2(e)

  std::vector<BufferArg> buffers = {
      {q.data, element_count(q) * size, false},
      {k.data, element_count(k) * size, false},
      {v.data, element_count(v) * size, false},
      {o.data, element_count(o) * size, true},
      // Without lse the slot is bound to `out` (WRITE_LSE = false: never written): no extra buffer, and
      // both backends treat two slots over one array as one.
      lse ? BufferArg{lse->data, element_count(*lse) * 4, true} : BufferArg{o.data, element_count(o) * size, true},
      {&params, sizeof params, false},
  };
  DispatchArgs args;
  args.grid = {uint32_t((Nq + options.block_q - 1) / options.block_q), uint32_t(Hq), uint32_t(B)};
  args.threadgroup = {options.block_q / 8 * 32, 1, 1};
  // The Q, K and V tiles are the kernel's [[threadgroup(0)]] buffer (it declares no threadgroup arrays:
  // their sizes depend on function constants, which cannot size arrays in MSL). build_pipeline checked
  // this length against the device limit; it is a multiple of 16 bytes, as Metal requires.
  args.threadgroup_memory = {{0, threadgroup_bytes(options.block_q, options.block_k, uint32_t(D), options.dtype)}};
  Result result;
  result.dispatch = backend.dispatch(*pipeline, buffers, args);
  result.pipeline = pipeline->info();
  result.backend = backend.info().backend;
  result.threadgroup_memory = args.threadgroup_memory;
  return result;
}

PipelineInfo pipeline_info(uint32_t head_dim, bool write_lse, const Options& options) {
  Backend& backend = get_backend(options.backend);
  return build_pipeline(backend, head_dim, write_lse, options)->info();
}

}  // namespace aproto::flash_attention
