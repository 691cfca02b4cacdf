// Linux compile-check shim only (tests/test_metal_compile.py); never used by a macOS build.
// metal-cpp names IOSurfaceRef in texture signatures.
#pragma once
typedef struct __IOSurface* IOSurfaceRef;
