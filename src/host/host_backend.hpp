// The host backend: MSL kernels run on the CPU (see translate.hpp, scheduler.hpp, compiler.hpp).
#pragma once
#include "runtime/backend.hpp"

namespace aproto {

// The process-wide host backend.
Backend& host_backend();

}  // namespace aproto
