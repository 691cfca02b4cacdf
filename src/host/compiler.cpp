#include "host/compiler.hpp"

#include <dirent.h>
#include <sys/wait.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "host/scheduler.hpp"
#include "runtime/errors.hpp"
#include "runtime/source.hpp"

namespace aproto::host {

namespace {

std::mutex g_mutex;
CompilerConfig g_config;

struct Toolchain {
  std::vector<std::string> cxx;   // argv prefix of the C++ compiler
  std::vector<std::string> link;  // argv prefix that links objects into a shared library (empty: cxx does it)
  std::vector<std::string> flags;
  std::string description;
  std::string identity;  // version text, part of the cache key
};

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a command; returns its exit status and combined output.
int run(const std::vector<std::string>& argv, std::string& output) {
  std::string cmd;
  for (const auto& a : argv) cmd += shell_quote(a) + " ";
  cmd += "2>&1";
  output.clear();
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, n);
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (!path) return false;
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (!dir.empty() && access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  return false;
}

// Major version from "clang version 16.0.6" / "Apple clang version 15.0.0", or 0.
int clang_major(const std::string& version_text) {
  size_t p = version_text.find("clang version ");
  return p == std::string::npos ? 0 : std::atoi(version_text.c_str() + p + 14);
}

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string w;
  while (ss >> w) out.push_back(w);
  return out;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

Toolchain find_toolchain() {
  Toolchain t;
  std::string out;
  std::vector<std::string> tried;
  if (const char* env = std::getenv("APROTO_HOST_CXX"); env && *env) {
    t.cxx = split_words(env);
    if (run({t.cxx[0], "--version"}, out) != 0 || clang_major(out) < 15)
      throw CompileError(std::string("[host] APROTO_HOST_CXX='") + env + "' is not a clang >= 15: " + first_line(out));
  } else {
    for (const char* name : {"clang++", "clang++-22", "clang++-21", "clang++-20", "clang++-19", "clang++-18",
                             "clang++-17", "clang++-16", "clang++-15"}) {
      if (!on_path(name)) continue;
      if (run({name, "--version"}, out) == 0 && clang_major(out) >= 15) { t.cxx = {name}; break; }
      tried.push_back(std::string(name) + " (" + first_line(out) + ")");
    }
    if (t.cxx.empty() && !g_config.zig.empty() && access(g_config.zig.c_str(), X_OK) == 0) {
      t.cxx = {g_config.zig, "c++"};
      run({g_config.zig, "c++", "--version"}, out);
      // `zig c++ -shared` would build and link libc++ (a minute on first use); kernels need no C++
      // runtime, so compile with zig and link with the system's cc, or with `zig cc` when there is none.
      t.link = on_path("cc") ? std::vector<std::string>{"cc"} : std::vector<std::string>{g_config.zig, "cc"};
      t.description = "clang " + std::to_string(clang_major(out)) + " (ziglang wheel)";
    }
  }
  if (t.cxx.empty()) {
    std::string why = tried.empty() ? "" : " (found but too old: ";
    for (size_t i = 0; i < tried.size(); i++) why += (i ? ", " : "") + tried[i];
    if (!tried.empty()) why += ")";
    throw CompileError("[host] no compiler for the host backend: it needs clang >= 15 on PATH, or the 'ziglang' "
                       "Python package (pip install ziglang), or APROTO_HOST_CXX" + why);
  }
  t.identity = out;
  if (t.description.empty()) t.description = first_line(out);
  t.flags = {"-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-exceptions", "-fno-rtti",
             "-fno-threadsafe-statics", "-fno-math-errno",
             // call sites of SIMD operations are told apart by their call path: keep every frame
             "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls",
             // every function may reach a SIMD operation: none may be merged across divergent branches
             // (what a GPU compiler assumes; clang's default for C++ is the opposite)
             "-fconvergent-functions",
             // and the CPU code generator, which ignores convergence, must not merge identical call tails
             "-mllvm", "-enable-tail-merge=false",
             // MSL has no variable-length arrays; an array sized by a function constant must fail here
             // as it does in Metal, not become a clang extension.
             "-Werror=vla", "-Werror=vla-extension", "-ffp-contract=fast", "-Wno-unknown-attributes",
             "-Wno-ignored-attributes", "-Wno-unused-value", "-Wno-deprecated-declarations"};
#if defined(__linux__)
  // Large stack frames probe every page, so a fiber overflowing its stack hits the guard page.
  t.flags.push_back("-fstack-clash-protection");
#endif
#if defined(__x86_64__)
  if (t.link.empty()) t.flags.push_back("-march=native");  // zig targets the native CPU by default
#endif
  return t;
}

const Toolchain& toolchain() {
  static Toolchain t = find_toolchain();  // a throw leaves it unset: the next call tries again
  return t;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every file of the emulation headers: a change to any of them invalidates cached kernels.
const std::string& headers_identity() {
  static std::string id = [] {
    std::string all;
    if (DIR* d = opendir(g_config.include_dir.c_str())) {
      std::vector<std::string> names;
      while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') names.push_back(e->d_name);
      closedir(d);
      std::sort(names.begin(), names.end());
      for (const auto& n : names) all += n + "\n" + read_all(g_config.include_dir + "/" + n);
    }
    return content_hash(all);
  }();
  return id;
}

// The CPU the kernels are built for (they use its instruction set): part of the cache key, so a
// cache shared between machines never loads code the CPU cannot run.
const std::string& cpu_identity() {
  static std::string id = [] {
    std::string text;
#if defined(__linux__)
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("model name", 0) == 0 || line.rfind("flags", 0) == 0 || line.rfind("Features", 0) == 0) {
        text += line + "\n";
        if (text.size() > 4096) break;
      }
#endif
    return content_hash(text);
  }();
  return id;
}

void make_dirs(const std::string& path) {
  for (size_t p = 1; p <= path.size(); p++)
    if (p == path.size() || path[p] == '/') mkdir(path.substr(0, p).c_str(), 0755);
}

std::string tail_lines(const std::string& text, size_t max_lines) {
  std::stringstream ss(text);
  std::string line, out;
  size_t n = 0;
  while (std::getline(ss, line) && n < max_lines) { out += line + "\n"; n++; }
  if (n == max_lines) out += "...\n";
  return out;
}

}  // namespace

void configure_compiler(const CompilerConfig& config) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_config = config;
}

std::string compiler_description() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return toolchain().description;
}

std::string cache_directory() {
  if (const char* env = std::getenv("APROTO_CACHE_DIR"); env && *env) return std::string(env) + "/host";
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/attention_proto/host";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/tmp") + "/.cache/attention_proto/host";
}

CompiledKernel compile_kernel(const std::string& cpp, const std::string& function) {
  Toolchain t;
  std::string header_id;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    t = toolchain();
    header_id = headers_identity();
  }
  std::string tools_text;  // everything that shapes the binary: compiler and linker command lines, flags
  for (const auto& part : {t.cxx, t.link, t.flags})
    for (const auto& word : part) tools_text += word + " ";
  const std::string key = content_hash(cpp + "\n" + t.identity + tools_text + header_id + cpu_identity() + "abi" +
                                       std::to_string(APROTO_ABI_VERSION));
  const std::string dir = cache_directory();
  const std::string stem = dir + "/" + function + "-" + key;
  const std::string so = stem + ".so";
  CompiledKernel out;
  out.library_path = so;
  if (access(so.c_str(), R_OK) == 0) {
    out.from_disk_cache = true;
  } else {
    make_dirs(dir);
    static std::atomic<uint64_t> counter{0};  // several threads of one process may build at once
    const std::string tmp = stem + ".tmp" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    const std::string source = tmp + ".cpp";
    { std::ofstream(source, std::ios::binary) << cpp; }
    auto start = std::chrono::steady_clock::now();
    std::vector<std::string> argv = t.cxx;
    argv.insert(argv.end(), t.flags.begin(), t.flags.end());
    argv.insert(argv.end(), {"-I", g_config.include_dir, source});
    std::string output;
    int status;
    if (t.link.empty()) {
      argv.insert(argv.end(), {"-shared", "-o", tmp});
      status = run(argv, output);
    } else {
      argv.insert(argv.end(), {"-c", "-o", tmp + ".o"});
      status = run(argv, output);
      if (status == 0) {
        std::vector<std::string> link = t.link;
        link.insert(link.end(), {"-shared", "-o", tmp, tmp + ".o", "-lm"});
        std::string link_output;
        status = run(link, link_output);
        output += link_output;
      }
      unlink((tmp + ".o").c_str());
    }
    if (status != 0) {
      unlink(tmp.c_str());
      const std::string kept = stem + ".cpp";
      rename(source.c_str(), kept.c_str());
      std::string hint;
      if (output.find("variable length array") != std::string::npos ||
          output.find("not an integral constant expression") != std::string::npos ||
          output.find("is not a constant expression") != std::string::npos)
        hint = "note: in MSL a function constant, or a constant computed from one, cannot size an array (Metal "
               "compiles the library before the values exist): size arrays with literal maxima, or pass "
               "threadgroup memory as a [[threadgroup(n)]] argument\n";
      throw CompileError("[host] kernel '" + function + "' failed to compile with " + t.description +
                         " (translated source: " + kept + "):\n" + tail_lines(output, 40) + hint);
    }
    rename(source.c_str(), (stem + ".cpp").c_str());  // kept next to the library, for reading
    rename(tmp.c_str(), so.c_str());  // atomic: concurrent builders of the same key agree
    out.compile_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const auto load_start = std::chrono::steady_clock::now();
  void* handle = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) throw CompileError("[host] cannot load " + so + ": " + dlerror());
  auto desc = static_cast<const aproto_kernel_desc*>(dlsym(handle, "aproto_kernel"));
  if (!desc || desc->abi_version != APROTO_ABI_VERSION)
    throw CompileError("[host] " + so + " is not a kernel library of this version (stale cache? delete " + dir + ")");
  desc->bind(runtime_table());
  out.desc = desc;
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  return out;
}

}  // namespace aproto::host
