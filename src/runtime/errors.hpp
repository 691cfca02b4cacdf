// Error types of the runtime. Every message starts with a bracketed component, e.g.
// "[host] kernel 'gemm' asks for 40960 bytes of threadgroup memory (limit 32768)".
// The bindings map each type onto a Python exception class (see src/bindings/runtime.cpp).
#pragma once
#include <stdexcept>
#include <string>

namespace aproto {

// Bad input from the caller (a shape, a size, a value): Python ValueError, whichever entry point sees it.
struct ArgumentError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// An argument of the wrong type or dtype: Python TypeError.
struct ArgumentTypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A shader failed to translate or compile; the message carries the compiler's output (file:line).
struct CompileError : Error { using Error::Error; };
// A pipeline was asked for while a binary archive is set with fail_on_miss, and the archive lacks it
// (Metal backend).
struct ArchiveMissError : CompileError { using CompileError::CompileError; };
// A kernel could not run to completion (bad dispatch arguments, driver error, kernel fault).
struct DispatchError : Error { using Error::Error; };
// Threads of a threadgroup wait on a barrier or SIMD operation that others never reach.
struct DeadlockError : DispatchError { using DispatchError::DispatchError; };
// A device limit was exceeded (threadgroup memory, threads per threadgroup). Caused by the caller's
// configuration, so Python's ResourceLimitError is also a ValueError.
struct LimitError : DispatchError { using DispatchError::DispatchError; };
// Checked mode caught a device-buffer access outside its buffer.
struct OutOfBoundsError : DispatchError { using DispatchError::DispatchError; };
// The requested backend does not exist on this machine (Python: also a ValueError).
struct BackendUnavailable : Error { using Error::Error; };

}  // namespace aproto
