/* The C interface between the host backend's runtime (inside attention_proto._core) and one compiled
 * kernel library (a shared object JIT-built from an MSL file). Plain C so that the two sides may be
 * built by different compilers and C++ standard libraries (g++ for the extension, clang for kernels). */
#ifndef APROTO_KERNEL_ABI_H
#define APROTO_KERNEL_ABI_H
#include <stdint.h>

#define APROTO_ABI_VERSION 6
#define APROTO_SIMD_WIDTH 32
#define APROTO_SIMD_SLOT_BYTES 64 /* largest value one lane can exchange in one SIMD operation */

/* Flags of a SIMD rendezvous. */
#define APROTO_SIMD_ALL_LANES 1u /* every live lane must take part (simdgroup_barrier, simdgroup_matrix) */

#ifdef __cplusplus
extern "C" {
#endif

/* Every thread-position attribute a kernel parameter may ask for. */
typedef struct aproto_thread_pos {
  uint32_t threadgroup_position_in_grid[3];
  uint32_t thread_position_in_threadgroup[3];
  uint32_t thread_position_in_grid[3];
  uint32_t threads_per_threadgroup[3];
  uint32_t threadgroups_per_grid[3];
  uint32_t threads_per_grid[3];
  uint32_t thread_index_in_threadgroup[3]; /* [0] used; arrays keep one accessor shape */
  uint32_t thread_index_in_simdgroup[3];
  uint32_t simdgroup_index_in_threadgroup[3];
  uint32_t simdgroups_per_threadgroup[3];
  uint32_t threads_per_simdgroup[3];
  uint32_t thread_index_in_quadgroup[3];
  uint32_t quadgroup_index_in_threadgroup[3];
  uint32_t quadgroups_per_threadgroup[3];
  uint64_t stack_low, stack_high; /* the fiber's stack: bounds for walking its frames */
} aproto_thread_pos;

/* A call site in the shader source (the file as named by #line directives), and the dynamic context of
 * the call (a hash of the return addresses on the way to it: inlined copies and calls of one helper
 * from different places differ). Barriers and SIMD operations are matched by it: lanes parked at the
 * same site execute that instruction together. */
typedef struct aproto_site {
  const char* file;
  uint32_t line;
  uint32_t column;
  uint64_t context;
} aproto_site;

/* Services the runtime offers to kernel code. */
typedef struct aproto_runtime {
  uint32_t abi_version;
  const aproto_thread_pos* (*current)(void);
  void (*threadgroup_barrier)(aproto_site site);
  /* Deposits `size` bytes for the calling lane and parks until the SIMD operation at `site`
   * resolves; returns the 32 slots (APROTO_SIMD_SLOT_BYTES apart) and, in *mask, the lanes that
   * took part. */
  const unsigned char* (*simd_exchange)(const void* value, uint32_t size, aproto_site site, uint32_t flags,
                                        const char* what, uint32_t* mask);
  /* Storage of the `threadgroup T name[...]` declaration number `index`, shared by the threadgroup,
   * poisoned (0xFF). */
  void* (*threadgroup_variable)(uint32_t index, uint64_t size, uint64_t align, const char* name);
  /* Storage of the [[threadgroup(index)]] parameter. */
  void* (*threadgroup_argument)(uint32_t index);
  /* Aborts the whole dispatch with a message (never returns). */
  void (*fail)(const char* message);
} aproto_runtime;

/* One [[buffer(index)]] parameter of the kernel. */
typedef struct aproto_buffer_desc {
  uint32_t index;
  const char* name;
  const char* type;   /* the parameter's type as written, address space removed */
  uint64_t min_bytes; /* sizeof(T) for `constant T&`, 0 for pointers */
  uint64_t align;     /* alignof the pointee: the buffer's address must be a multiple of it */
  int readonly;       /* 1 when the pointee is const */
} aproto_buffer_desc;

/* What a kernel library exports (symbol `aproto_kernel`). */
typedef struct aproto_kernel_desc {
  uint32_t abi_version;
  const char* name;
  uint32_t max_total_threads_per_threadgroup; /* [[max_total_threads_per_threadgroup(n)]], or 0 */
  uint32_t n_buffers;
  const aproto_buffer_desc* buffers;
  uint32_t n_threadgroup_args;
  const uint32_t* threadgroup_arg_indices;
  void (*bind)(const aproto_runtime* runtime);
  void (*run_thread)(void* const* buffers); /* the kernel body for the current GPU thread */
  /* Functions a visible_function_table may hold (the pipeline's table functions), their addresses, and
   * function_fits[b * n_functions + f]: 1 when function f has the signature of buffers[b]'s table. */
  uint32_t n_functions;
  const char* const* function_names;
  void* const* functions;
  const unsigned char* function_fits;
} aproto_kernel_desc;

/* What a visible_function_table parameter is bound to: the entries the dispatch chose. */
typedef struct aproto_function_table {
  void* const* entries;
  uint64_t count;
} aproto_function_table;

#ifdef __cplusplus
}
#endif
#endif
