// Linked functions, visible function tables and stitched functions on the host backend: what Metal's
// pipeline creation does with MTLLinkedFunctions and a stitched library, done on the C++ translation.
#pragma once
#include <string>

#include "runtime/backend.hpp"

namespace aproto::host {

// The kernel's translation unit (`kernel_cpp`, from translate() with spec.table_functions) with every
// function the spec links added before its entry point: each library's C++ in a namespace of its own
// (its other functions stay private to it, as in Metal), a global definition forwarding to each linked
// library function (this resolves the kernel's `extern` declarations), and each stitched function
// generated from its graph. `kernel_source` is the kernel's include-resolved source. Throws CompileError
// for what Metal's pipeline creation rejects: a name that no library publishes as [[visible]] or
// [[stitchable]], an `extern` function the kernel calls that nothing resolves or whose signature differs,
// and a stitching graph that calls a function that is not [[stitchable]], with the wrong number or type
// of arguments, or a node that is not earlier in the graph.
std::string link_pipeline(const std::string& kernel_cpp, const std::string& kernel_source, const std::string& name,
                          const PipelineSpec& spec);

}  // namespace aproto::host
