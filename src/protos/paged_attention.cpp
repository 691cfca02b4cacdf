// Prototype 3, PagedAttention decode V1 / V2 (shaders/paged_attention.metal) and the cache writer
// (shaders/paged_kv_write.metal): arguments, block-table and slot checks, threadgroup memory, launches.
#include <algorithm>

#include "attention_params.h"
#include "protos/proto.hpp"

namespace aproto::proto {
namespace {

const std::vector<uint32_t> kHeadDims = {64, 80, 96, 112, 128, 256};  // HEAD_DIM % 16 == 0 (see the shader)
const std::vector<uint32_t> kBlockSizes = {8, 16, 32};                // 32 / BLOCK_SIZE lanes per key
constexpr uint64_t kSimdgroups = 4, kThreads = 128;                   // SIMDGROUPS, THREADS in the shader
std::string str(int64_t v) { return std::to_string(v); }
uint64_t round_up(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }
const int32_t* ints(const Call& c, const char* name) { return static_cast<const int32_t*>(c.array(name).data); }

// The layout is the pair of caches given (k_cache, v_cache or k_cache_vllm, v_cache_vllm); returns the
// constants both shaders read, and the suffix of the pair's names.
Constants cache_constants(const Call& c, std::string& pair) {
  const bool vllm = c.has("k_cache_vllm") || c.has("v_cache_vllm");
  pair = vllm ? "_vllm" : "";
  c.require(c.has("k_cache" + pair) && c.has("v_cache" + pair) && !(vllm && (c.has("k_cache") || c.has("v_cache"))),
            "give k_cache and v_cache (layout 'blocked') or k_cache_vllm and v_cache_vllm (layout 'vllm')");
  const int64_t D = c.dim("D"), x = vllm ? 16 / c.array("k_cache_vllm").itemsize : 0;
  c.require(!vllm || (c.dim("X") == x && c.dim("Dx") * x == D), "k_cache_vllm must be [num_blocks, Hkv, D / x, "
            "block_size, x] with x = 16 / itemsize = " + str(x) + " (vLLM's layout)");
  c.require_one_of("head_dim", D, kHeadDims);
  c.require_one_of("block_size", c.dim("BS"), kBlockSizes);
  return {{"HEAD_DIM", ConstantValue::unsigned_integer(uint64_t(D))},
          {"BLOCK_SIZE", ConstantValue::unsigned_integer(uint64_t(c.dim("BS")))},
          {"VLLM_LAYOUT", ConstantValue::boolean(vllm)}};
}

// Every seq_len, and every block id a kernel reads (the first ceil(seq_len / BS) of a row); the longest seq_len.
int64_t check_tables(const Call& c, int64_t S, int64_t M, int64_t BS, int64_t N) {
  const int32_t *lens = ints(c, "seq_lens"), *tables = ints(c, "block_tables");
  int64_t longest = 0;
  for (int64_t s = 0; s < S; s++) {
    c.require(lens[s] >= 1 && lens[s] <= M * BS, "seq_lens[" + str(s) + "] = " + str(lens[s]) + " must be in [1, " +
              str(M * BS) + "] (max_blocks_per_seq " + str(M) + " x block_size " + str(BS) + ")");
    for (int64_t i = 0; i < (lens[s] + BS - 1) / BS; i++) {
      const int32_t id = tables[s * M + i];
      c.require(id >= 0 && id < N, "block_tables[" + str(s) + ", " + str(i) + "] = " + str(id) + " (sequence " + str(s) +
                ", position " + str(i) + ") is not a block id in [0, num_blocks = " + str(N) + ")");
    }
    longest = std::max<int64_t>(longest, lens[s]);
  }
  return longest;
}

std::vector<Launch> plan_attention(const Call& c) {
  std::string pair;
  Constants constants = cache_constants(c, pair);
  const int64_t S = c.dim("S"), Hq = c.dim("Hq"), Hkv = c.dim("Hkv"), M = c.dim("M"), D = c.dim("D"), BS = c.dim("BS");
  c.require(Hq % Hkv == 0, "q heads (" + str(Hq) + ") must be a multiple of kv heads (" + str(Hkv) + ")");
  const uint32_t partition = c.count("partition_size", 0, 1 << 20, uint32_t(BS));
  const bool v2 = partition > 0;
  for (const char* name : {"tmp_out", "max_logits", "exp_sums"})
    c.require(c.has(name) == v2, std::string(name) + (v2 ? " is required" : " is only used") + " by V2 (partition_size > 0)");
  const int64_t longest = c.planning() ? M * BS : check_tables(c, S, M, BS, c.dim("N"));  // planning: the table's room
  const int64_t P = v2 ? c.dim("P") : 1, needed = (longest + partition - 1) / std::max<int64_t>(partition, 1);
  c.require(!v2 || P >= needed, "tmp_out, max_logits and exp_sums need ceil(max(seq_lens) / partition_size) = " +
                                    str(needed) + " partitions, got " + str(P));
  // threadgroup(0) of the attention kernels (the shader's header comment): q, 2 x SIMDGROUPS, the scores.
  const uint64_t scores = v2 ? partition : round_up(uint64_t(longest), uint64_t(BS)), limit = c.device().max_threadgroup_memory;
  const uint64_t bytes = 4 * (D + 2 * kSimdgroups + std::max(scores, kSimdgroups * D));
  if (!v2 && !c.planning() && bytes > limit)
    throw LimitError("[paged_attention] V1 (partition_size=0) holds all scores of a sequence in threadgroup memory: " +
                     str(longest) + " tokens need " + str(bytes) + " bytes, over the limit of " + str(limit) + " on the " +
                     c.device().backend + " backend; use V2 (partition_size > 0, e.g. 512)");
  constants["PARTITION_SIZE"] = ConstantValue::unsigned_integer(partition);
  constants["USE_ALIBI"] = ConstantValue::boolean(c.has("alibi_slopes"));
  const PagedAttentionParams params{uint32_t(S), uint32_t(Hq), uint32_t(Hkv), uint32_t(Hq / Hkv), uint32_t(M),
                                    uint32_t(P), float(c.number("scale") * 1.4426950408889634)};  // * log2(e)
  Launch l;
  l.pipeline = {(v2 ? "paged_attention_v2_" : "paged_attention_v1_") + c.kernel_suffix("q"), constants};
  for (const std::string& name : std::vector<std::string>{"q", "k_cache" + pair, "v_cache" + pair, "block_tables", "seq_lens"})
    l.bind(l.buffers.size(), c.buffer(name));
  BufferArg slopes = c.buffer(c.has("alibi_slopes") ? "alibi_slopes" : "q");  // never read without USE_ALIBI
  if (!c.has("alibi_slopes")) slopes.dtype = "";
  l.bind(5, slopes);
  l.set_params(6, params);
  for (const char* name : v2 ? std::vector<const char*>{"tmp_out", "max_logits", "exp_sums"} : std::vector<const char*>{"out"})
    l.bind(l.buffers.size(), c.buffer(name));
  l.args = {{uint32_t(Hq), uint32_t(S), uint32_t(P)}, {kThreads, 1, 1}, {{0, bytes}}};
  if (!v2) return {l};
  Launch r;  // the reduce: 2 x SIMDGROUPS floats, then one weight per partition
  r.pipeline = {"paged_attention_reduce_" + c.kernel_suffix("q"), constants};
  for (const char* name : {"tmp_out", "max_logits", "exp_sums", "seq_lens"}) r.bind(r.buffers.size(), c.buffer(name));
  r.set_params(4, params);
  r.bind(5, c.buffer("out"));
  r.args = {{uint32_t(Hq), uint32_t(S), 1}, {kThreads, 1, 1}, {{0, 4 * (2 * kSimdgroups + round_up(uint64_t(P), 4))}}};
  return {l, r};
}

std::vector<Launch> plan_write(const Call& c) {
  std::string pair;
  Launch l;
  l.pipeline = {"paged_kv_write_" + c.kernel_suffix("k"), cache_constants(c, pair)};
  const int64_t T = c.dim("T"), slots = c.dim("N") * c.dim("BS");
  std::vector<int32_t> used;  // distinct slots: two tokens writing one slot would race
  for (int64_t t = 0; t < (c.planning() ? 0 : T); t++) {
    const int32_t slot = ints(c, "slot_mapping")[t];
    c.require(slot >= -1 && slot < slots, "slot_mapping[" + str(t) + "] = " + str(slot) +
              " must be -1 (skip) or a slot in [0, num_blocks x block_size = " + str(slots) + ")");
    if (slot >= 0) used.push_back(slot);
  }
  std::sort(used.begin(), used.end());
  const auto twice = std::adjacent_find(used.begin(), used.end());
  c.require(twice == used.end(), "slot_mapping writes slot " + str(twice == used.end() ? 0 : *twice) + " twice");
  for (const std::string& name : std::vector<std::string>{"k", "v", "slot_mapping", "k_cache" + pair, "v_cache" + pair})
    l.bind(l.buffers.size(), c.buffer(name));
  l.set_params(5, PagedKvWriteParams{uint32_t(T), uint32_t(c.dim("Hkv"))});
  l.args = {{uint32_t(T), uint32_t(c.dim("Hkv")), 1}, {uint32_t(c.dim("D") / 4), 1, 1}, {}};
  return {l};
}

const std::vector<std::string> kFloats = {"float32", "float16", "bfloat16"};
// `args` with the caches in both layouts inserted at `at`, of the dtype of `like`; a call passes one pair.
std::vector<ArgSpec> with_caches(std::vector<ArgSpec> args, size_t at, const std::string& like, bool output) {
  args.insert(args.begin() + at, {{"k_cache", "N Hkv BS D", {like}, output, true, 4},
                                  {"v_cache", "N Hkv BS D", {like}, output, true, 4},
                                  {"k_cache_vllm", "N Hkv Dx BS X", {like}, output, true, 4},
                                  {"v_cache_vllm", "N Hkv D BS", {like}, output, true, 4}});
  return args;
}
const std::map<std::string, std::vector<int64_t>> kFacts = {
    {"head_dims", {kHeadDims.begin(), kHeadDims.end()}}, {"block_sizes", {kBlockSizes.begin(), kBlockSizes.end()}}};

const Proto kPagedAttention{
    "paged_attention", "paged_attention.metal",
    "PagedAttention decode: out[s, h] = softmax(scale * q[s, h] . K_s^T + alibi) V_s over the seq_lens[s] tokens of "
    "sequence s, read from the paged cache through block_tables[s]. V1 (partition_size 0) or V2 (partitions + reduce).",
    with_caches({{"q", "S Hq D", kFloats, false, false, 4}, {"block_tables", "S M", {"int32"}},
                 {"seq_lens", "S", {"int32"}}, {"alibi_slopes", "Hq", {"float32"}, false, true},
                 {"out", "S Hq D", {"=q"}, true}, {"tmp_out", "S Hq P D", {"float32"}, true, true, 4},
                 {"max_logits", "S Hq P", {"float32"}, true, true}, {"exp_sums", "S Hq P", {"float32"}, true, true}},
                1, "=q", false),
    {{"scale", OptionKind::Float, "softmax scale"},
     {"partition_size", OptionKind::Int, "0: V1; a positive multiple of the block size: V2 with that many tokens per partition"}},
    plan_attention, kFacts};
const Proto kPagedKvWrite{
    "paged_kv_write", "paged_kv_write.metal",
    "Paged KV cache writer (vLLM's reshape_and_cache): k[t], v[t] go to slot slot_mapping[t] = block * block_size + "
    "offset of the caches, in place; -1 skips the token.",
    with_caches({{"k", "T Hkv D", kFloats, false, false, 4}, {"v", "T Hkv D", {"=k"}, false, false, 4},
                 {"slot_mapping", "T", {"int32"}}}, 3, "=k", true),
    {}, plan_write, kFacts};
const Registration kRegistered(kPagedAttention), kRegisteredWrite(kPagedKvWrite);

}  // namespace
}  // namespace aproto::proto
