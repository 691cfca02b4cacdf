// Linux compile-check shim only (tests/test_metal_compile.py); never used by a macOS build.
// metal-cpp needs CFTimeInterval, and INFINITY/NAN, which the real CoreFoundation.h brings via math.h.
#pragma once
#include <math.h>
typedef double CFTimeInterval;
