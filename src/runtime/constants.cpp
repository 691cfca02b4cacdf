#include "runtime/constants.hpp"

#include <cstdio>

namespace aproto {

std::string ConstantValue::literal() const {
  switch (type) {
    case Type::Bool: return i ? "true" : "false";
    case Type::Int: return std::to_string(i);
    case Type::UInt: return std::to_string((uint64_t)i) + "u";
    case Type::Float: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.9g", f);  // 9 significant digits round-trip a float
      std::string s = buf;
      if (s.find_first_of(".eE") == std::string::npos && s.find("inf") == std::string::npos &&
          s.find("nan") == std::string::npos)
        s += ".0";
      return s + "f";
    }
  }
  return "";
}

std::string constants_key(const Constants& constants) {
  std::string key;
  for (const auto& [name, value] : constants) key += (key.empty() ? "" : ",") + name + "=" + value.literal();
  return key;
}

}  // namespace aproto
