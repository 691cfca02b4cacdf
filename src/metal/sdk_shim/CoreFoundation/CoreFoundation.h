// Compile-check shim only (python/attention_proto/metal_check.py); never used by a macOS build.
// zig's macOS headers have no CoreFoundation framework. metal-cpp needs CFTimeInterval from it, and
// INFINITY/NAN, which the real CoreFoundation.h brings in through math.h.
#pragma once
#include <math.h>
typedef double CFTimeInterval;
