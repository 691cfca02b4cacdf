// Linux compile-check shim only (tests/test_metal_compile.py); never used by a macOS build.
// Selects metal-cpp's macOS code paths, as Apple's SDK does for a macOS 14 deployment target.
#pragma once
#define TARGET_OS_OSX 1
#ifndef __MAC_OS_X_VERSION_MIN_REQUIRED
#define __MAC_OS_X_VERSION_MIN_REQUIRED 140000
#endif
