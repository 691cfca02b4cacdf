#include "protos/proto.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <mutex>
#include <sstream>

#include "runtime/memory.hpp"

namespace aproto::proto {

namespace {

std::string g_shader_dir;
std::string g_shader_note;

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); i++) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

std::vector<std::string> words(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

std::string joined(const std::vector<std::string>& items, const std::string& last_sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); i++)
    out += (i == 0 ? "" : i + 1 == items.size() ? last_sep : ", ") + items[i];
  return out;
}

bool is_number(const std::string& w) { return !w.empty() && w.find_first_not_of("0123456789") == std::string::npos; }

// The shader's text, read once per path (the backends cache pipelines by its content).
const std::string& shader_text(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, std::string> texts;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = texts.find(path); it != texts.end()) return it->second;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CompileError("[runtime] cannot read the shader " + path + " (is the package installed?)");
  std::ostringstream body;
  body << in.rdbuf();
  return texts.emplace(path, body.str()).first->second;
}

const char* kind_name(OptionKind kind) {
  switch (kind) {
    case OptionKind::Bool: return "a bool";
    case OptionKind::Int: return "an int";
    case OptionKind::Float: return "a number";
    case OptionKind::Text: return "a str";
  }
  return "?";
}

}  // namespace

uint64_t Array::elements() const {
  uint64_t n = 1;
  for (int64_t s : shape) n *= uint64_t(s);
  return n;
}

// An aligned copy of a misaligned array; outputs are copied back after the dispatch.
struct Call::Staged {
  const Array* source;
  bool output;
  void* data;
  explicit Staged(const Array& a, bool out) : source(&a), output(out), data(allocate_region(a.nbytes())) {
    std::memcpy(data, a.data, a.nbytes());
  }
  ~Staged() { free_region(data); }
  Staged(const Staged&) = delete;
  Staged& operator=(const Staged&) = delete;
};

Call::Call(const Proto& proto, std::map<std::string, Array> arrays, std::map<std::string, OptionValue> options,
           const DeviceInfo& device)
    : proto_(proto), device_(device), arrays_(std::move(arrays)), options_(std::move(options)) {
  for (const auto& [name, a] : arrays_) {
    bool known = false;
    for (const auto& spec : proto_.args) known |= spec.name == name;
    if (!known) fail_type("unknown array argument '" + name + "'");
    planning_ |= a.planned;
  }
  for (const auto& [name, v] : options_) {
    bool known = false;
    for (const auto& spec : proto_.options) known |= spec.name == name;
    if (!known) fail_type("unknown option '" + name + "'");
  }
  for (const auto& spec : proto_.args) {
    auto it = arrays_.find(spec.name);
    if (it == arrays_.end()) {
      if (!spec.optional) fail_type("missing array argument '" + spec.name + "'");
      continue;
    }
    check_array(spec, it->second);
  }
  // An output may not share memory with any other argument: the kernel would read what it writes.
  if (!planning_) {
    for (const auto& spec : proto_.args) {
      if (!spec.output || !has(spec.name)) continue;
      const Array& out = arrays_.at(spec.name);
      const char* lo = static_cast<const char*>(out.data);
      for (const auto& [name, other] : arrays_) {
        if (name == spec.name) continue;
        const char* olo = static_cast<const char*>(other.data);
        if (lo < olo + other.nbytes() && olo < lo + out.nbytes()) fail(spec.name + " must not overlap " + name);
      }
    }
  }
}

void Call::check_array(const ArgSpec& spec, const Array& a) {
  const std::string& n = spec.name;
  // dtype
  if (spec.dtypes.size() == 1 && spec.dtypes[0][0] == '=') {
    const std::string other = spec.dtypes[0].substr(1);
    if (has(other) && a.dtype != dtype(other))
      fail_type(n + " must have the dtype of " + other + " (" + dtype(other) + "), got " + a.dtype);
  } else {
    bool ok = false;
    for (const auto& d : spec.dtypes) ok |= d == a.dtype;
    if (!ok) fail_type(n + " must be " + joined(spec.dtypes, " or ") + ", got " + a.dtype);
  }
  // shape: the names bind sizes; the first argument to use a name fixes it. "N | B N" accepts either rank.
  std::vector<std::vector<std::string>> ranks(1);
  for (const auto& w : words(spec.shape)) {
    if (w == "|") ranks.emplace_back();
    else ranks.back().push_back(w);
  }
  std::vector<std::string> dims, expected_ranks;
  bool matched = false;
  for (const auto& r : ranks) {
    if (r.size() == a.shape.size()) dims = r, matched = true;
    expected_ranks.push_back(std::to_string(r.size()) + " dimensions [" + joined(r, ", ") + "]");
  }
  if (!matched)
    fail(n + " must have " + joined(expected_ranks, " or ") + ", got shape " + shape_text(a.shape));
  for (size_t d = 0; d < dims.size(); d++) {
    const int64_t size = a.shape[d];
    if (size < 1) fail(n + " must not be empty, got shape " + shape_text(a.shape));
    if (is_number(dims[d])) {
      if (size != std::stoll(dims[d]))
        fail(n + " must have " + dims[d] + " in dimension " + std::to_string(d) + ", got shape " + shape_text(a.shape));
      continue;
    }
    auto [it, fresh] = dims_.emplace(dims[d], size);
    if (fresh) {
      dim_source_[dims[d]] = n;
    } else if (it->second != size) {
      fail(n + " has shape " + shape_text(a.shape) + ", expected [" + joined(dims, ", ") + "] with " + dims[d] +
           " = " + std::to_string(it->second) + " (from " + dim_source_[dims[d]] + ")");
    }
  }
  if (a.planned) return;
  // memory: C-contiguous (strides are suffix products), writable outputs
  int64_t expected = a.itemsize;
  for (size_t d = a.shape.size(); d-- > 0;) {
    if (a.shape[d] > 1 && a.strides[d] != expected)
      fail(n + " must be C-contiguous (use np.ascontiguousarray(" + n + "))");
    expected *= a.shape[d];
  }
  if (spec.output && !a.writable) fail(n + " must be writable (it is an output)");
}

int64_t Call::dim(const std::string& name) const {
  auto it = dims_.find(name);
  if (it == dims_.end()) throw std::logic_error("[" + proto_.name + "] no array binds size '" + name + "'");
  return it->second;
}

bool Call::has(const std::string& arg) const { return arrays_.count(arg) != 0; }

const Array& Call::array(const std::string& arg) const {
  auto it = arrays_.find(arg);
  if (it == arrays_.end()) throw std::logic_error("[" + proto_.name + "] array '" + arg + "' was not given");
  return it->second;
}

const std::string& Call::dtype(const std::string& arg) const { return array(arg).dtype; }

std::string Call::kernel_suffix(const std::string& arg) const {
  const std::string& d = dtype(arg);
  if (d == "float32") return "f32";
  if (d == "float16") return "f16";
  if (d == "bfloat16") return "bf16";
  fail_type(arg + ": no kernel for dtype " + d);
}

const OptionValue& Call::option(const std::string& name, OptionKind kind) const {
  auto it = options_.find(name);
  if (it == options_.end() || std::holds_alternative<std::monostate>(it->second))
    fail_type("option '" + name + "' is required (" + kind_name(kind) + ")");
  const OptionValue& v = it->second;
  const bool ok = (kind == OptionKind::Bool && std::holds_alternative<bool>(v)) ||
                  (kind == OptionKind::Int && std::holds_alternative<int64_t>(v)) ||
                  (kind == OptionKind::Float && (std::holds_alternative<double>(v) || std::holds_alternative<int64_t>(v))) ||
                  (kind == OptionKind::Text && std::holds_alternative<std::string>(v));
  if (!ok) fail_type(name + " must be " + kind_name(kind));
  return v;
}

bool Call::flag(const std::string& option_name) const { return std::get<bool>(option(option_name, OptionKind::Bool)); }
int64_t Call::integer(const std::string& name) const { return std::get<int64_t>(option(name, OptionKind::Int)); }
double Call::number(const std::string& name) const {
  const OptionValue& v = option(name, OptionKind::Float);
  const double x = std::holds_alternative<double>(v) ? std::get<double>(v) : double(std::get<int64_t>(v));
  if (!std::isfinite(x)) fail(name + " must be a finite number, got " + std::to_string(x));
  return x;
}
const std::string& Call::text(const std::string& name) const {
  return std::get<std::string>(option(name, OptionKind::Text));
}
bool Call::given(const std::string& name) const {
  auto it = options_.find(name);
  return it != options_.end() && !std::holds_alternative<std::monostate>(it->second);
}

uint32_t Call::count(const std::string& name, uint32_t lo, uint32_t hi, uint32_t multiple) const {
  const int64_t v = integer(name);
  if (v < lo || v > hi || v % multiple != 0)
    fail(name + " must be " + (multiple > 1 ? "a multiple of " + std::to_string(multiple) + " in " : "in ") +
         std::to_string(lo) + ".." + std::to_string(hi) + ", got " + std::to_string(v));
  return uint32_t(v);
}

void Call::fail(const std::string& message) const { throw ArgumentError("[" + proto_.name + "] " + message); }
void Call::fail_type(const std::string& message) const { throw ArgumentTypeError("[" + proto_.name + "] " + message); }

void Call::require_one_of(const std::string& what, int64_t value, const std::vector<uint32_t>& allowed,
                          const std::string& hint) const {
  for (uint32_t a : allowed)
    if (value == a) return;
  std::vector<std::string> names;
  for (uint32_t a : allowed) names.push_back(std::to_string(a));
  fail(what + " " + std::to_string(value) + " not supported (supported: " + joined(names, ", ") + ")" + hint);
}

BufferArg Call::buffer(const std::string& arg) const {
  if (planning_ || !has(arg)) return {};
  const Array& a = array(arg);
  bool output = false;
  uint64_t align = 1;
  for (const auto& spec : proto_.args)
    if (spec.name == arg) { output = spec.output; align = std::max<uint64_t>(uint64_t(spec.vector_width) * a.itemsize, spec.align_bytes); }
  void* data = a.data;
  if (reinterpret_cast<uintptr_t>(data) % align != 0) {
    auto& copy = staged_[arg];  // one copy per argument, however many launches bind it
    if (!copy) copy = std::make_shared<Staged>(a, output);
    data = copy->data;
  }
  return {data, a.nbytes(), output, a.dtype};
}

void Launch::bind(uint32_t index, const BufferArg& buffer) {
  if (buffers.size() <= index) buffers.resize(index + 1);
  buffers[index] = buffer;
}

uint64_t Launch::threadgroup_bytes() const {
  uint64_t total = 0;
  for (const auto& [index, bytes] : args.threadgroup_memory) total += bytes;
  return total;
}

namespace {
std::vector<const Proto*>& mutable_registry() {
  static std::vector<const Proto*> protos;  // filled by static Registrations before main
  return protos;
}
}  // namespace

const std::vector<const Proto*>& registry() { return mutable_registry(); }

Registration::Registration(const Proto& proto) { mutable_registry().push_back(&proto); }

void set_shader_dir(const std::string& dir) { g_shader_dir = dir; }
void set_shader_note(const std::string& note) { g_shader_note = note.empty() ? "" : "\n// " + note + "\n"; }

Source shader_source(const Proto& proto) {
  const std::string path = g_shader_dir + "/" + proto.shader;
  return {shader_text(path) + g_shader_note, path, {g_shader_dir}};
}

namespace {

std::vector<std::shared_ptr<Pipeline>> build(const Call& call, Backend& backend, const std::vector<Launch>& launches) {
  const Source source = shader_source(call.proto());
  std::vector<std::shared_ptr<Pipeline>> out;
  for (const Launch& l : launches) {
    if (!l.source) {
      out.push_back(backend.pipeline(source, l.pipeline));
      continue;
    }
    Source own = *l.source;
    own.include_dirs.push_back(g_shader_dir);
    PipelineSpec spec = l.pipeline;
    for (Source& lib : spec.libraries) lib.include_dirs.push_back(g_shader_dir);
    out.push_back(backend.pipeline(own, spec));
  }
  return out;
}

LaunchInfo describe(const Launch& l) {
  LaunchInfo info;
  info.function = l.pipeline.function;
  info.key = l.pipeline.key();
  info.grid = l.args.grid;
  info.threadgroup = l.args.threadgroup;
  info.threadgroup_memory = l.args.threadgroup_memory;
  info.spec = l.pipeline;
  return info;
}

}  // namespace

CallResult run(const Call& call, const std::string& backend_name, uint32_t repeat) {
  Backend& backend = get_backend(backend_name);
  const DeviceInfo& device = backend.info();
  std::vector<Launch> launches = call.proto().plan(call);
  // Limits first: a configuration the device cannot run is the caller's error, reported before any
  // compile or dispatch, naming the prototype.
  for (const Launch& l : launches) {
    if (l.threadgroup_bytes() > device.max_threadgroup_memory)
      throw LimitError("[" + call.proto().name + "] " + l.pipeline.key() + " needs " +
                       std::to_string(l.threadgroup_bytes()) + " bytes of threadgroup memory (limit " +
                       std::to_string(device.max_threadgroup_memory) + " on the " + device.backend + " backend)");
  }
  std::vector<std::shared_ptr<Pipeline>> pipelines = build(call, backend, launches);
  std::vector<Dispatch> steps;
  for (size_t i = 0; i < launches.size(); i++) steps.push_back({pipelines[i], launches[i].buffers, launches[i].args});
  CallResult result;
  result.timing = backend.dispatch(steps, repeat);
  result.backend = device.backend;
  for (const auto& [name, s] : call.staged()) {
    result.timing.buffers_copied++;
    result.timing.bytes_copied += s->source->nbytes() * (s->output ? 2 : 1);
    if (s->output) std::memcpy(s->source->data, s->data, s->source->nbytes());
  }
  for (size_t i = 0; i < launches.size(); i++) {
    result.launches.push_back(describe(launches[i]));
    result.launches.back().pipeline = pipelines[i]->info();
  }
  return result;
}

std::vector<LaunchInfo> plan(const Call& call, const std::string& backend_name, bool build_pipelines) {
  std::vector<Launch> launches = call.proto().plan(call);
  std::vector<LaunchInfo> out;
  for (const Launch& l : launches) out.push_back(describe(l));
  if (build_pipelines) {
    auto pipelines = build(call, get_backend(backend_name), launches);
    for (size_t i = 0; i < out.size(); i++) out[i].pipeline = pipelines[i]->info();
  }
  return out;
}

}  // namespace aproto::proto
