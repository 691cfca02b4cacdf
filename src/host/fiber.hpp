// Fibers: one per emulated GPU thread. A fiber runs on its own stack until it parks at a barrier or a
// SIMD operation, then control returns to the threadgroup's scheduler on the OS thread's own stack.
// Switching is _setjmp/_longjmp (no signal-mask syscall), about 60 ns; makecontext only starts a fiber.
#pragma once
#ifdef _FORTIFY_SOURCE  // glibc's __longjmp_chk refuses jumps between stacks; fibers need exactly those
#undef _FORTIFY_SOURCE
#endif
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700  // ucontext on macOS
#endif
#include <setjmp.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace aproto::host {

// Stacks for `count` fibers in one mapping, each below a PROT_NONE guard page, so an overflow faults
// at once instead of corrupting a neighbour.
class StackSet {
 public:
  StackSet(size_t count, size_t stack_bytes);
  ~StackSet();
  StackSet(const StackSet&) = delete;
  StackSet& operator=(const StackSet&) = delete;
  char* stack(size_t i) const { return base_ + i * (stack_bytes_ + guard_) + guard_; }
  size_t count() const { return count_; }
  size_t stack_bytes() const { return stack_bytes_; }
  // True when `addr` falls in one of the guard pages (a fiber overflowed its stack).
  bool in_guard(const void* addr) const;

  // A set of at least `count` stacks of `stack_bytes`, reused from earlier dispatches when one is
  // free: mapping, guarding and first-touching fresh stacks costs more than small kernels run.
  static std::unique_ptr<StackSet> acquire(size_t count, size_t stack_bytes);
  // Returns a set to the pool (which keeps a few).
  static void release(std::unique_ptr<StackSet> set);

 private:
  char* base_ = nullptr;
  size_t count_, stack_bytes_, guard_, map_bytes_;
};

struct FiberContext {
  jmp_buf jump;       // where the parked fiber resumes
  ucontext_t start;   // how it starts the first time
  bool started = false;
};

// Prepares `f` to start `entry` on `stack`.
void fiber_prepare(FiberContext& f, char* stack, size_t stack_bytes, void (*entry)());
// Runs the fiber from the scheduler until it parks or finishes (both jump back to `scheduler`).
void fiber_resume(FiberContext& f, jmp_buf& scheduler);
// Called on a fiber: saves its state and returns control to the scheduler.
void fiber_park(FiberContext& f, jmp_buf& scheduler);

}  // namespace aproto::host
