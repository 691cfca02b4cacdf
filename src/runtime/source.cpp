#include "runtime/source.hpp"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <set>
#include <vector>

namespace aproto {

namespace {

std::string dirname_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

bool read_file(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

// Parses `#include "name"` on one line; returns false for any other line.
bool quoted_include(const std::string& line, std::string& name) {
  size_t i = line.find_first_not_of(" \t");
  if (i == std::string::npos || line[i] != '#') return false;
  i = line.find_first_not_of(" \t", i + 1);
  if (i == std::string::npos || line.compare(i, 7, "include") != 0) return false;
  size_t open = line.find('"', i + 7);
  if (open == std::string::npos || line.find_first_not_of(" \t", i + 7) != open) return false;
  size_t close = line.find('"', open + 1);
  if (close == std::string::npos) return false;
  name = line.substr(open + 1, close - open - 1);
  return true;
}

bool has_pragma_once(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t i = line.find_first_not_of(" \t");
    if (i != std::string::npos && line.compare(i, 1, "#") == 0) {
      size_t j = line.find_first_not_of(" \t", i + 1);
      if (j != std::string::npos && line.compare(j, 6, "pragma") == 0 && line.find("once", j + 6) != std::string::npos)
        return true;
    }
  }
  return false;
}

// Updates `in_comment` across one line: whether a /* ... */ comment is still open at its end.
void track_block_comment(const std::string& line, bool& in_comment) {
  for (size_t i = 0; i + 1 < line.size(); i++) {
    if (!in_comment && line[i] == '/' && line[i + 1] == '/') return;
    if (!in_comment && line[i] == '/' && line[i + 1] == '*') { in_comment = true; i++; }
    else if (in_comment && line[i] == '*' && line[i + 1] == '/') { in_comment = false; i++; }
  }
}

void expand(const std::string& text, const std::string& path, const std::vector<std::string>& dirs,
            std::vector<std::string>& stack, std::set<std::string>& once, std::string& out) {
  std::istringstream in(text);
  std::string line;
  int lineno = 0;
  bool in_comment = false;
  while (std::getline(in, line)) {
    lineno++;
    std::string name;
    const bool commented = in_comment;
    track_block_comment(line, in_comment);
    if (commented || !quoted_include(line, name)) {
      out += line + "\n";
      continue;
    }
    std::vector<std::string> candidates{dirname_of(path) + "/" + name};
    for (const auto& d : dirs) candidates.push_back(d + "/" + name);
    std::string found, body;
    for (const auto& c : candidates)
      if (read_file(c, body)) { found = c; break; }
    if (found.empty())
      throw CompileError(path + ":" + std::to_string(lineno) + ": error: include file '" + name + "' not found");
    for (const auto& s : stack)
      if (s == found) throw CompileError(path + ":" + std::to_string(lineno) + ": error: include cycle through '" + name + "'");
    if (once.count(found)) {  // a #pragma once file included again: nothing to add
      out += "\n";
      continue;
    }
    if (has_pragma_once(body)) once.insert(found);
    stack.push_back(found);
    out += "#line 1 \"" + found + "\"\n";
    expand(body, found, dirs, stack, once, out);
    out += "#line " + std::to_string(lineno + 1) + " \"" + path + "\"\n";
    stack.pop_back();
  }
}

}  // namespace

std::string resolve_includes(const Source& source) {
  std::string path = source.path.empty() ? "<source>" : source.path;
  std::vector<std::string> stack{path};
  std::set<std::string> once;
  std::string out = "#line 1 \"" + path + "\"\n";
  expand(source.text, path, source.include_dirs, stack, once, out);
  return out;
}

namespace {

// `text` with comments and string literals blanked (newlines kept), for declaration scans.
std::string code_only(const std::string& text) {
  std::string out = text;
  for (size_t i = 0; i < out.size(); i++) {
    if (out[i] == '/' && i + 1 < out.size() && out[i + 1] == '/') {
      while (i < out.size() && out[i] != '\n') out[i++] = ' ';
    } else if (out[i] == '/' && i + 1 < out.size() && out[i + 1] == '*') {
      size_t end = out.find("*/", i + 2);
      end = end == std::string::npos ? out.size() : end + 2;
      for (; i < end; i++)
        if (out[i] != '\n') out[i] = ' ';
      i--;
    } else if (out[i] == '"') {
      for (i++; i < out.size() && out[i] != '"' && out[i] != '\n'; i++) {
        if (out[i] == '\\' && i + 1 < out.size()) out[i++] = ' ';
        out[i] = ' ';
      }
    }
  }
  return out;
}

bool is_identifier(const std::string& s) {
  if (s.empty() || !(std::isalpha((unsigned char)s[0]) || s[0] == '_')) return false;
  for (char c : s)
    if (!(std::isalnum((unsigned char)c) || c == '_')) return false;
  return true;
}

}  // namespace

std::map<std::string, uint32_t> declared_function_constants(const std::string& text) {
  const std::string code = code_only(text);
  std::map<std::string, uint32_t> out;
  const std::string word = "function_constant";
  for (size_t at = code.find(word); at != std::string::npos; at = code.find(word, at + word.size())) {
    // NAME [[ function_constant ( index ) ]]: walk back over "[[" to the name
    size_t b = at;
    auto skip_space_back = [&] { while (b > 0 && std::isspace((unsigned char)code[b - 1])) b--; };
    skip_space_back();
    if (b < 2 || code[b - 1] != '[' || code[b - 2] != '[') continue;
    b -= 2;
    skip_space_back();
    size_t end = b;
    while (b > 0 && (std::isalnum((unsigned char)code[b - 1]) || code[b - 1] == '_')) b--;
    const std::string name = code.substr(b, end - b);
    size_t open = code.find_first_not_of(" \t\n", at + word.size());
    if (!is_identifier(name) || open == std::string::npos || code[open] != '(') continue;
    out[name] = uint32_t(std::strtoul(code.c_str() + open + 1, nullptr, 0));
  }
  return out;
}

void check_constant_names(const std::string& text, const Constants& constants, const std::string& who) {
  if (constants.empty()) return;
  const auto declared = declared_function_constants(text);
  for (const auto& [key, value] : constants) {
    bool found = false;
    if (key[0] == '#') {
      const uint32_t index = uint32_t(std::strtoul(key.c_str() + 1, nullptr, 10));
      for (const auto& [name, i] : declared) found |= i == index;
    } else {
      found = declared.count(key) != 0;
    }
    if (found) continue;
    std::string list;
    for (const auto& [name, i] : declared) list += (list.empty() ? "" : ", ") + name + " (" + std::to_string(i) + ")";
    throw CompileError(who + ": constant '" + key + "' was given but the source declares no such function constant "
                       "(declared: " + (list.empty() ? "none" : list) + ")");
  }
}

std::string with_defines(const std::string& text, const std::map<std::string, std::string>& defines,
                         const std::string& path) {
  if (defines.empty()) return text;
  std::string out;
  for (const auto& [name, value] : defines) {
    if (!is_identifier(name)) throw CompileError("[runtime] define '" + name + "' is not a macro name");
    if (value.find('\n') != std::string::npos)
      throw CompileError("[runtime] define '" + name + "': the value must be a single line");
    out += "#define " + name + (value.empty() ? "" : " " + value) + "\n";
  }
  return out + "#line 1 \"" + (path.empty() ? "<source>" : path) + "\"\n" + text;
}

std::string content_hash(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) { h ^= c; h *= 1099511628211ull; }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return buf;
}

}  // namespace aproto
