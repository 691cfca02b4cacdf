// Compile-check shim only (python/attention_proto/metal_check.py); never used by a macOS build.
// zig's macOS headers have no IOSurface framework; metal-cpp names IOSurfaceRef in texture signatures.
#pragma once
typedef struct __IOSurface* IOSurfaceRef;
