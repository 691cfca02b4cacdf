// Linux compile-check shim only (tests/test_metal_compile.py); never used by a macOS build.
// metal-cpp uses these two Mach types in MTLResource.hpp (ownership transfer to a task).
#pragma once
typedef int kern_return_t;
typedef unsigned int task_id_token_t;
