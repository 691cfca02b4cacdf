// Linux compile-check shim only (tests/test_metal_compile.py); never used by a macOS build.
// metal-cpp names these libdispatch handle types in a few signatures.
#pragma once
typedef struct dispatch_queue_s* dispatch_queue_t;
typedef struct dispatch_data_s* dispatch_data_t;
