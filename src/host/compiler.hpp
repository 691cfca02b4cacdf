// JIT compilation of translated kernels into shared objects, cached on disk.
// The compiler is clang >= 15: APROTO_HOST_CXX if set, else a clang++ on PATH, else the clang inside
// the `ziglang` wheel (a dependency on Linux, so no system package is needed).
#pragma once
#include <string>

#include "host/include/aproto_kernel_abi.h"

namespace aproto::host {

struct CompilerConfig {
  std::string include_dir;  // src/host/include as installed (aproto_metal.hpp, metal_stdlib, ...)
  std::string zig;          // path of the ziglang wheel's `zig` executable, or empty
};
void configure_compiler(const CompilerConfig& config);

struct CompiledKernel {
  const aproto_kernel_desc* desc = nullptr;
  std::string library_path;
  double compile_seconds = 0.0;  // 0 when loaded from the disk cache
  double load_seconds = 0.0;     // dlopen and binding of the shared object
  bool from_disk_cache = false;
};

// Compiles (or loads from the cache) the translation unit `cpp`; `function` names the kernel in
// messages and cache file names. Throws CompileError carrying the compiler's output.
CompiledKernel compile_kernel(const std::string& cpp, const std::string& function);

// "clang 22.1.8 (ziglang)" etc.; throws CompileError when no usable compiler exists.
std::string compiler_description();
std::string cache_directory();

}  // namespace aproto::host
