// Bindings of prototype 1, flash attention forward (src/protos/flash_attention.cpp).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>

#include "bindings/convert.hpp"
#include "protos/flash_attention.hpp"

namespace nb = nanobind;
using namespace nb::literals;
namespace fa = aproto::flash_attention;

namespace {

// Any dtype, any layout: nanobind must not convert (a converted `out` would be a copy the kernel
// writes into and Python never sees). The proto checks layout; dtypes are checked here.
using InArray = nb::ndarray<nb::ro, nb::device::cpu>;
using OutArray = nb::ndarray<nb::device::cpu>;

// numpy has no DLPack code for ml_dtypes.bfloat16, so bfloat16 arrays arrive as uint16 views.
bool dtype_matches(nb::dlpack::dtype got, fa::DType want) {
  using Code = nb::dlpack::dtype_code;
  const auto code = Code(got.code);
  if (got.lanes != 1) return false;
  switch (want) {
    case fa::DType::Float32: return code == Code::Float && got.bits == 32;
    case fa::DType::Float16: return code == Code::Float && got.bits == 16;
    case fa::DType::BFloat16: return (code == Code::Bfloat || code == Code::UInt) && got.bits == 16;
  }
  return false;
}

template <class Array>
fa::Tensor view(const Array& a, const char* name, fa::DType dtype, bool writable) {
  if (!dtype_matches(a.dtype(), dtype))
    throw std::invalid_argument(std::string("[flash_attention] ") + name + " must hold " + fa::dtype_name(dtype) +
                                " elements" + (dtype == fa::DType::BFloat16 ? " (passed as a uint16 view)" : ""));
  fa::Tensor t;
  t.data = const_cast<void*>(static_cast<const void*>(a.data()));
  for (size_t d = 0; d < a.ndim(); d++) {
    t.shape.push_back(int64_t(a.shape(d)));
    t.strides.push_back(a.stride(d));
  }
  t.itemsize = uint32_t(a.itemsize());
  t.writable = writable;
  return t;
}

fa::Options options(const std::string& dtype, uint32_t block_q, uint32_t block_k, bool causal, float scale,
                    const std::string& backend, const std::string& shader_dir) {
  fa::Options o;
  o.dtype = fa::parse_dtype(dtype);
  o.block_q = block_q;
  o.block_k = block_k;
  o.causal = causal;
  o.scale = scale;
  o.backend = backend;
  o.shader_dir = shader_dir;
  return o;
}

}  // namespace

void init_flash_attention(nb::module_& m) {
  m.def("flash_attention_head_dims", &fa::supported_head_dims, "Head dimensions the flash attention kernel supports.");

  m.def(
      "flash_attention_threadgroup_bytes",
      [](uint32_t block_q, uint32_t block_k, uint32_t head_dim, const std::string& dtype) {
        return fa::threadgroup_bytes(block_q, block_k, head_dim, fa::parse_dtype(dtype));
      },
      "block_q"_a, "block_k"_a, "head_dim"_a, "dtype"_a,
      "Threadgroup memory in bytes of one flash attention configuration: the length of the kernel's\n"
      "[[threadgroup(0)]] tile buffer.");

  m.def(
      "flash_attention",
      [](const InArray& q, const InArray& k, const InArray& v, const OutArray& out, std::optional<OutArray> lse,
         const std::string& dtype, bool causal, float scale, uint32_t block_q, uint32_t block_k,
         const std::string& backend, const std::string& shader_dir) {
        fa::Options o = options(dtype, block_q, block_k, causal, scale, backend, shader_dir);
        fa::Tensor tq = view(q, "q", o.dtype, false), tk = view(k, "k", o.dtype, false);
        fa::Tensor tv = view(v, "v", o.dtype, false), to = view(out, "out", o.dtype, true);
        std::optional<fa::Tensor> tl;
        if (lse) tl = view(*lse, "lse", fa::DType::Float32, true);
        fa::Result r;
        {
          nb::gil_scoped_release release;  // compiling (first use) and the dispatch take a while
          r = fa::run(tq, tk, tv, to, tl ? &*tl : nullptr, o);
        }
        nb::dict d;
        d["seconds"] = r.dispatch.seconds;
        d["timer"] = r.dispatch.timer;
        d["backend"] = r.backend;
        d["bytes_copied"] = r.dispatch.bytes_copied;
        d["buffers_copied"] = r.dispatch.buffers_copied;
        d["pipeline"] = aproto::bindings::to_dict(r.pipeline);
        nb::dict tg;  // [[threadgroup(n)]] index -> bytes, as dispatched
        for (const auto& [index, bytes] : r.threadgroup_memory) tg[nb::int_(index)] = bytes;
        d["threadgroup_memory"] = tg;
        return d;
      },
      "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(), "out"_a.noconvert(), "lse"_a.noconvert().none(),
      "dtype"_a, "causal"_a, "scale"_a, "block_q"_a, "block_k"_a, "backend"_a, "shader_dir"_a,
      "Flash attention forward into `out` (and the logsumexp into `lse`, float32 [B, Hq, Nq], when given).\n"
      "q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D], out like q: C-contiguous arrays used in place (bfloat16 as\n"
      "uint16 views). Every shape is re-checked (ValueError '[flash_attention] ...'). Returns a dict: the\n"
      "timing, the pipeline's facts and threadgroup_memory, the dispatched {[[threadgroup(n)]] index: bytes}.\n"
      "Use attention_proto.flash_attention instead: it validates and picks defaults.");

  m.def(
      "flash_attention_pipeline_info",
      [](uint32_t head_dim, const std::string& dtype, uint32_t block_q, uint32_t block_k, bool causal,
         bool write_lse, const std::string& backend, const std::string& shader_dir) {
        fa::Options o = options(dtype, block_q, block_k, causal, 1.0f, backend, shader_dir);
        aproto::PipelineInfo info;
        {
          nb::gil_scoped_release release;
          info = fa::pipeline_info(head_dim, write_lse, o);
        }
        return aproto::bindings::to_dict(info);
      },
      "head_dim"_a, "dtype"_a, "block_q"_a, "block_k"_a, "causal"_a, "write_lse"_a, "backend"_a, "shader_dir"_a,
      "Facts of one flash attention pipeline (built on first use). On the host backend\n"
      "static_threadgroup_memory is what the last dispatch measured (0 before any); the kernel declares\n"
      "none, its tiles are the [[threadgroup(0)]] buffer.");
}
