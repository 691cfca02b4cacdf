// Linux compile-check shim only (tests/test_metal_compile.py); never used by a macOS build.
// metal-cpp casts these entry points to the exact signature of each message before calling them.
#pragma once
#include <objc/runtime.h>
extern "C" void objc_msgSend(void);
extern "C" void objc_msgSend_fpret(void);
extern "C" void objc_msgSend_stret(void);
