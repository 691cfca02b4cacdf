#include "runtime/arguments.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>

#include "host/translate.hpp"
#include "runtime/source.hpp"

namespace aproto {

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(' '), b = s.find_last_not_of(' ');
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// "const float*" -> "float"; "const metal::atomic_uint&" -> "atomic_uint"; "device T*" never reaches
// here with its address space (the translator drops it).
std::string element_of(const std::string& type) {
  std::string t = type;
  while (!t.empty() && (t.back() == '*' || t.back() == '&' || t.back() == ' ')) t.pop_back();
  for (const char* word : {"const ", "volatile "})
    for (size_t p; (p = t.find(word)) != std::string::npos;) t.erase(p, std::string(word).size());
  if (t.rfind("metal::", 0) == 0) t = t.substr(7);
  return trim(t);
}

}  // namespace

std::string numpy_dtype_of(const std::string& element) {
  static const std::map<std::string, std::string> scalars = {
      {"float", "float32"}, {"half", "float16"},   {"bfloat", "bfloat16"}, {"int", "int32"},
      {"uint", "uint32"},   {"short", "int16"},    {"ushort", "uint16"},   {"char", "int8"},
      {"uchar", "uint8"},   {"long", "int64"},     {"ulong", "uint64"},    {"bool", "bool"},
      {"int32_t", "int32"}, {"uint32_t", "uint32"}, {"int16_t", "int16"}, {"uint16_t", "uint16"},
      {"int8_t", "int8"},   {"uint8_t", "uint8"},  {"int64_t", "int64"},   {"uint64_t", "uint64"}};
  std::string base = element;
  if (base.rfind("packed_", 0) == 0) base = base.substr(7);
  if (base.rfind("atomic_", 0) == 0) base = base.substr(7);  // atomic_int, atomic_uint, atomic_float
  if (base.rfind("atomic<", 0) == 0 && base.back() == '>') base = trim(base.substr(7, base.size() - 8));
  if (auto it = scalars.find(base); it != scalars.end()) return it->second;
  // vector types: float4, half2, uint3, ...
  if (!base.empty() && base.back() >= '2' && base.back() <= '4') {
    base.pop_back();
    if (auto it = scalars.find(base); it != scalars.end()) return it->second;
  }
  return "";
}

namespace {

// Is the boolean function constant `name` true under `constants` (given by name or by index)? A
// constant without a value is false: the parameter it guards does not exist.
bool constant_is_true(const std::string& name, const Constants& constants,
                      const std::map<std::string, uint32_t>& declared) {
  auto it = constants.find(name);
  if (it == constants.end()) {
    auto d = declared.find(name);
    if (d != declared.end()) it = constants.find("#" + std::to_string(d->second));
  }
  return it != constants.end() && (it->second.type == ConstantValue::Type::Float ? it->second.f != 0 : it->second.i != 0);
}

}  // namespace

bool is_function_table_type(const std::string& type) {
  return type.rfind("visible_function_table", 0) == 0 || type.rfind("metal::visible_function_table", 0) == 0;
}

std::vector<ArgumentInfo> kernel_arguments(const std::string& text, const std::string& function,
                                           const std::string& path, const Constants& constants) {
  std::vector<ArgumentInfo> out;
  const auto declared = declared_function_constants(text);
  for (const auto& p : host::kernel_parameters(text, function, path.empty() ? "<source>" : path)) {
    if (!p.condition.empty() && !constant_is_true(p.condition, constants, declared)) continue;
    ArgumentInfo a;
    a.kind = p.attr == "buffer" || p.attr == "threadgroup" ? p.attr : "position";
    if (a.kind == "buffer" && is_function_table_type(p.type)) a.kind = "function_table";
    a.index = a.kind == "position" ? 0 : uint32_t(std::strtoul(p.arg.c_str(), nullptr, 0));
    a.name = p.name;
    a.type = p.type;
    a.element = element_of(p.type);
    a.dtype = numpy_dtype_of(a.element);
    a.reference = !p.type.empty() && p.type.back() == '&';
    a.writable = a.kind == "buffer" && p.address_space != "constant" && p.type.find("const") == std::string::npos;
    out.push_back(a);
  }
  return out;
}

void validate_buffers(const std::string& who, const std::vector<ArgumentInfo>& arguments,
                      const std::vector<BufferArg>& buffers) {
  uint32_t slots = 0;
  for (const auto& a : arguments)
    if (a.kind == "buffer" || a.kind == "function_table") slots = std::max(slots, a.index + 1);
  size_t given = buffers.size();
  while (given > 0 && !buffers[given - 1].data) given--;  // trailing unbound slots are not arguments
  if (given > slots)
    throw ArgumentError(who + ": " + std::to_string(given) + " buffer arguments given, but the kernel's buffer "
                        "parameters end at [[buffer(" + std::to_string(int(slots) - 1) + ")]] (" +
                        std::to_string(slots) + " slots)");
  for (const auto& a : arguments) {
    if (a.kind != "buffer") continue;
    const std::string what = "[[buffer(" + std::to_string(a.index) + ")]] '" + a.name + "' (" + a.type + ")";
    if (a.index >= buffers.size() || !buffers[a.index].data)
      throw ArgumentError(who + ": " + what + " is not bound (pass one argument per [[buffer(n)]] index)");
    const BufferArg& b = buffers[a.index];
    if (a.writable && !b.writable)
      throw ArgumentError(who + ": " + what + " is written by the kernel, but the array passed is read-only");
    // Raw bytes (uint8, numpy scalars, bytes) and elements without a numpy type are not type-checked.
    if (!b.dtype.empty() && b.dtype != "uint8" && !a.dtype.empty() && b.dtype != a.dtype)
      throw ArgumentTypeError(who + ": " + what + " holds " + a.dtype + " elements, got a " + b.dtype +
                              " array (to reinterpret its memory, pass a view: array.view(np." + a.dtype + "))");
  }
}

}  // namespace aproto
