#include "host/fiber.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <new>

namespace aproto::host {

StackSet::StackSet(size_t count, size_t stack_bytes) : count_(count) {
  guard_ = (size_t)sysconf(_SC_PAGESIZE);
  stack_bytes_ = (stack_bytes + guard_ - 1) / guard_ * guard_;
  map_bytes_ = count * (stack_bytes_ + guard_);
  void* p = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  base_ = static_cast<char*>(p);
  for (size_t i = 0; i < count; i++) mprotect(base_ + i * (stack_bytes_ + guard_), guard_, PROT_NONE);
}

StackSet::~StackSet() { munmap(base_, map_bytes_); }

bool StackSet::in_guard(const void* addr) const {
  auto a = (const char*)addr;
  if (a < base_ || a >= base_ + map_bytes_) return false;
  return (size_t)(a - base_) % (stack_bytes_ + guard_) < guard_;
}

// macOS marks the ucontext calls deprecated but keeps them working; only makecontext can start a
// function on a stack of our own without assembly.
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
namespace {
std::mutex g_pool_mutex;
std::vector<std::unique_ptr<StackSet>> g_pool;
constexpr size_t kPoolSize = 8;  // two per core on a big machine is plenty; each is address space only
}  // namespace

std::unique_ptr<StackSet> StackSet::acquire(size_t count, size_t stack_bytes) {
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    for (auto it = g_pool.begin(); it != g_pool.end(); ++it) {
      if ((*it)->count() >= count && (*it)->stack_bytes() == stack_bytes) {
        std::unique_ptr<StackSet> set = std::move(*it);
        g_pool.erase(it);
        return set;
      }
    }
  }
  return std::make_unique<StackSet>(count, stack_bytes);
}

void StackSet::release(std::unique_ptr<StackSet> set) {
  if (!set) return;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool.size() >= kPoolSize) g_pool.erase(g_pool.begin());  // drop the oldest
  g_pool.push_back(std::move(set));
}

void fiber_prepare(FiberContext& f, char* stack, size_t stack_bytes, void (*entry)()) {
  getcontext(&f.start);
  f.start.uc_stack.ss_sp = stack;
  f.start.uc_stack.ss_size = stack_bytes;
  f.start.uc_link = nullptr;
  makecontext(&f.start, entry, 0);
  f.started = false;
}

// noinline keeps the compiler from caching values across the jumps.
__attribute__((noinline)) void fiber_resume(FiberContext& f, jmp_buf& scheduler) {
  if (_setjmp(scheduler) == 0) {
    if (!f.started) {
      f.started = true;
      setcontext(&f.start);
    }
    _longjmp(f.jump, 1);
  }
}

__attribute__((noinline)) void fiber_park(FiberContext& f, jmp_buf& scheduler) {
  if (_setjmp(f.jump) == 0) _longjmp(scheduler, 1);
}

}  // namespace aproto::host
