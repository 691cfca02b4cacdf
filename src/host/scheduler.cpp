// The threadgroup scheduler of the host backend.
//
// Execution model. Every GPU thread of a threadgroup is a fiber; the scheduler resumes each runnable
// fiber in turn and it runs until it parks (at a barrier or a SIMD operation) or returns. Once every
// fiber is parked, the scheduler settles one rendezvous and repeats:
//  - SIMD operations first: in each SIMD-group, the lanes parked at the earliest waiting call site (in
//    source order) form the active set, the lanes that would execute that instruction together on the
//    GPU (lanes elsewhere or finished are inactive); settling the earliest site first lets lanes that
//    loop longer catch up before the others' code after the loop runs. A site is the source location
//    plus the call path to it, so one helper called from two divergent branches gives two sites. Operations that need every lane
//    (simdgroup_barrier, simdgroup_matrix gathers) fail if the active set is not the whole SIMD-group.
//  - Threadgroup barriers last: they open only when every thread waits at the same barrier. A thread
//    that returned, or waits at another barrier, makes the group a deadlock, reported with the threads
//    and call sites involved, instead of a hang.
// A fault in kernel code (SIGSEGV/SIGBUS) or a stack overflow jumps back to the scheduler and fails
// the dispatch with a message naming the buffer and offset, so the Python process survives.
// A fiber switches only at barriers and SIMD operations, so a thread spinning on memory that another
// thread would write (or an endless loop) never gives way: a watchdog interrupts a dispatch that runs
// past its timeout with a signal and fails it, naming the thread that was running.
#include "host/scheduler.hpp"

#include "host/fiber.hpp"  // first: it adjusts _FORTIFY_SOURCE before any libc header

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

namespace aproto::host {

namespace {

constexpr uint32_t kSimd = APROTO_SIMD_WIDTH;
// Threadgroup declarations one kernel may make (preallocated: no allocation while kernel code runs,
// so the timeout signal may interrupt it safely).
constexpr size_t kMaxVariables = 256;

enum class State : uint8_t { Runnable, AtBarrier, AtSimd, Done };

struct Fiber {
  FiberContext ctx;
  aproto_thread_pos pos;
  State state = State::Runnable;
  aproto_site site{};
  uint32_t flags = 0;
  const char* what = "";
};

struct SimdGroup {
  alignas(64) unsigned char deposit[kSimd][APROTO_SIMD_SLOT_BYTES];
  alignas(64) unsigned char snapshot[kSimd][APROTO_SIMD_SLOT_BYTES];
  uint32_t snapshot_mask = 0;
  uint32_t first = 0, count = 0;  // fibers [first, first + count)
};

// Shared by the workers of one dispatch and its watchdog.
struct GridControl {
  std::atomic<bool> timed_out{false};
};

// One OS thread's state: it runs threadgroups one after another.
struct Worker {
  const GridLaunch* launch = nullptr;
  const GridControl* control = nullptr;
  std::unique_ptr<StackSet> stacks;
  std::vector<Fiber> fibers;
  std::vector<SimdGroup> simd;
  Fiber* current = nullptr;
  jmp_buf scheduler;
  uint32_t group[3] = {0, 0, 0};
  // Threadgroup memory, 64-byte aligned like the GPU's (a vector's 16 bytes are not enough for long4).
  std::unique_ptr<unsigned char[]> arena_memory;
  unsigned char* arena = nullptr;
  uint64_t arena_used = 0, arena_args = 0, max_variable_bytes = 0;
  struct Variable {
    void* storage = nullptr;
    uint64_t size = 0;
  };
  std::vector<Variable> variables;  // by declaration index
  std::vector<void*> argument_ptrs;  // by [[threadgroup(i)]] index
  // True while kernel code proper runs: the fault and timeout handlers only act then. Runtime
  // services clear it while they run (they may allocate, which a signal must never interrupt).
  bool in_kernel = false;
  Failure failure = Failure::None;
  std::string message;            // built outside signal handlers (see describe_pending)
  const void* fault_address = nullptr;
  bool fault_is_write = false;
};

// initial-exec: kernels ask for their thread position on every SIMD and matrix operation, and the
// default model for a dlopen'ed module pays a __tls_get_addr call each time (one pointer fits easily
// in glibc's static-TLS reserve for dlopen'ed modules).
thread_local Worker* tl_worker __attribute__((tls_model("initial-exec"))) = nullptr;

bool same_site(const aproto_site& a, const aproto_site& b) {
  return a.line == b.line && a.column == b.column && a.context == b.context &&
         (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

bool earlier(const aproto_site& a, const aproto_site& b) {
  return a.line != b.line ? a.line < b.line : a.column < b.column;
}

std::string site_text(const aproto_site& site) {
  std::string file = site.file ? site.file : "?";
  return file.substr(file.find_last_of('/') + 1) + ":" + std::to_string(site.line);
}

std::string thread_text(const Worker& w, const Fiber& f) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "thread %u (%u,%u,%u) of threadgroup (%u,%u,%u)",
                f.pos.thread_index_in_threadgroup[0], f.pos.thread_position_in_threadgroup[0],
                f.pos.thread_position_in_threadgroup[1], f.pos.thread_position_in_threadgroup[2], w.group[0],
                w.group[1], w.group[2]);
  return buf;
}

// "0-15, 17, 20-31"
std::string ranges_text(const std::vector<uint32_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) j++;
    if (!out.empty()) out += ", ";
    out += std::to_string(ids[i]);
    if (j > i) out += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return out;
}

[[noreturn]] void fail_from_fiber(Worker& w, Failure kind, std::string message) {
  w.failure = kind;
  w.message = std::move(message);
  w.in_kernel = false;
  _longjmp(w.scheduler, 1);
}

// ---------------------------------------------------------------------------- runtime services
const aproto_thread_pos* rt_current() { return &tl_worker->current->pos; }

void rt_threadgroup_barrier(aproto_site site) {
  Worker& w = *tl_worker;
  Fiber& f = *w.current;
  f.state = State::AtBarrier;
  f.site = site;
  f.what = "threadgroup_barrier";
  w.in_kernel = false;
  fiber_park(f.ctx, w.scheduler);
  w.in_kernel = true;
}

const unsigned char* rt_simd_exchange(const void* value, uint32_t size, aproto_site site, uint32_t flags,
                                      const char* what, uint32_t* mask) {
  Worker& w = *tl_worker;
  Fiber& f = *w.current;
  SimdGroup& sg = w.simd[f.pos.simdgroup_index_in_threadgroup[0]];
  std::memcpy(sg.deposit[f.pos.thread_index_in_simdgroup[0]], value, size);
  f.state = State::AtSimd;
  f.site = site;
  f.flags = flags;
  f.what = what;
  w.in_kernel = false;
  fiber_park(f.ctx, w.scheduler);
  w.in_kernel = true;
  *mask = sg.snapshot_mask;
  return &sg.snapshot[0][0];
}

// Clears Worker::in_kernel while a runtime service runs (restored when it returns normally).
struct ServiceScope {
  Worker& w;
  explicit ServiceScope(Worker& worker) : w(worker) { w.in_kernel = false; }
  ~ServiceScope() { w.in_kernel = true; }
};

void* rt_threadgroup_variable(uint32_t index, uint64_t size, uint64_t align, const char* name) {
  Worker& w = *tl_worker;
  ServiceScope service(w);
  if (index >= w.variables.size())  // sized at set-up for typical kernels: this is rare
    fail_from_fiber(w, Failure::Kernel, "kernel '" + std::string(w.launch->kernel->name) + "' declares more than " +
                                            std::to_string(w.variables.size()) + " threadgroup variables");
  Worker::Variable& v = w.variables[index];
  if (v.storage) {
    if (v.size != size)  // one declaration in a template helper instantiated for several types
      fail_from_fiber(w, Failure::Kernel,
                      "kernel '" + std::string(w.launch->kernel->name) + "': threadgroup variable '" + name +
                          "' is declared with " + std::to_string(size) + " and " + std::to_string(v.size) +
                          " bytes (a template helper instantiated twice?); the host backend gives each "
                          "declaration one size");
    return v.storage;
  }
  // the first thread to get here allocates for the whole group
  uint64_t a = std::max<uint64_t>(align, 16);
  uint64_t offset = (w.arena_used + a - 1) / a * a;
  if (offset + size > w.launch->threadgroup_limit) {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "kernel '%s' needs %llu bytes of threadgroup memory (at `threadgroup` variable '%s' of %llu "
                  "bytes, after %llu bytes of [[threadgroup(n)]] arguments); the limit is %llu",
                  w.launch->kernel->name, (unsigned long long)(offset + size), name, (unsigned long long)size,
                  (unsigned long long)w.arena_args, (unsigned long long)w.launch->threadgroup_limit);
    fail_from_fiber(w, Failure::Limit, buf);
  }
  v.storage = w.arena + offset;
  v.size = size;
  std::memset(v.storage, 0xFF, size);  // poison: an unwritten float/half/bfloat reads as NaN
  w.arena_used = offset + size;
  w.max_variable_bytes = std::max(w.max_variable_bytes, w.arena_used - w.arena_args);
  return v.storage;
}

void* rt_threadgroup_argument(uint32_t index) {
  Worker& w = *tl_worker;
  ServiceScope service(w);
  if (index >= w.argument_ptrs.size() || !w.argument_ptrs[index])
    fail_from_fiber(w, Failure::Kernel,
                    "kernel '" + std::string(w.launch->kernel->name) + "' uses [[threadgroup(" + std::to_string(index) +
                        ")]] but the dispatch gave it no length (threadgroup_memory={" + std::to_string(index) +
                        ": nbytes})");
  return w.argument_ptrs[index];
}

void rt_fail(const char* message) {
  Worker& w = *tl_worker;
  w.in_kernel = false;
  fail_from_fiber(w, Failure::Kernel, std::string("kernel '") + w.launch->kernel->name + "': " + message);
}

const aproto_runtime kRuntime = {APROTO_ABI_VERSION,      rt_current,          rt_threadgroup_barrier,
                                 rt_simd_exchange,        rt_threadgroup_variable, rt_threadgroup_argument,
                                 rt_fail};

// ---------------------------------------------------------------------------- faults
std::mutex g_signal_mutex;
int g_signal_users = 0;
struct sigaction g_old_segv, g_old_bus, g_old_timeout;
constexpr int kTimeoutSignal = SIGUSR2;

void describe_fault(Worker& w, const void* addr, bool is_write, char* out, size_t n) {
  const char* access = is_write ? "write" : "access";
  const Fiber& f = *w.current;
  std::string who = thread_text(w, f);
  if (w.stacks && w.stacks->in_guard(addr)) {
    std::snprintf(out, n,
                  "kernel '%s': stack overflow in %s (fiber stacks are %zu KB; set APROTO_HOST_STACK_KB to raise it)",
                  w.launch->kernel->name, who.c_str(), w.stacks->stack_bytes() / 1024);
    return;
  }
  const BufferRange* best = nullptr;
  long long best_distance = 0;
  auto a = (const char*)addr;
  for (const auto& r : w.launch->ranges) {
    long long d = a < r.base ? (long long)(r.base - a) : (a >= r.base + r.bytes ? (long long)(a - r.base - r.bytes) : 0);
    if (!best || d < best_distance) { best = &r; best_distance = d; }
  }
  if (best && best_distance < (1ll << 20)) {
    std::snprintf(out, n,
                  "kernel '%s': out-of-bounds %s of buffer %u ('%s') at byte offset %lld (the buffer has %llu bytes), "
                  "by %s",
                  w.launch->kernel->name, access, best->index, best->name.c_str(), (long long)(a - best->base),
                  (unsigned long long)best->bytes, who.c_str());
  } else {
    std::snprintf(out, n, "kernel '%s': invalid memory %s at address %p (not near any bound buffer), by %s",
                  w.launch->kernel->name, access, addr, who.c_str());
  }
}

std::string timeout_text(const Worker& w) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%.0f", w.launch->timeout_seconds);
  return "kernel '" + std::string(w.launch->kernel->name) + "' did not finish within " + buf +
         " s (APROTO_HOST_TIMEOUT): " + thread_text(w, *w.current) +
         " was running, at no barrier: an endless loop, or a spin-wait on memory another thread writes "
         "(the host runs a threadgroup's threads one at a time, switching only at barriers and SIMD "
         "operations, so such a wait never ends here)";
}

// The watchdog's signal: leave the kernel code this worker is running.
void on_timeout(int, siginfo_t*, void*) {
  Worker* w = tl_worker;
  if (!w || !w->in_kernel || !w->control->timed_out.load()) return;
  w->failure = Failure::Timeout;  // the message is written after the jump (no allocation in a handler)
  w->in_kernel = false;
  _longjmp(w->scheduler, 1);
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
  Worker* w = tl_worker;
  if (!w || !w->in_kernel) {  // not ours: hand it to whoever had the signal before
    sigaction(sig, sig == SIGSEGV ? &g_old_segv : &g_old_bus, nullptr);
    return;  // the faulting instruction runs again under the previous handler
  }
  bool is_write = false;
#if defined(__x86_64__) && defined(__linux__)
  is_write = (static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
  (void)uctx;
#endif
  w->failure = Failure::Fault;  // described after the jump (no allocation in a handler)
  w->fault_address = info->si_addr;
  w->fault_is_write = is_write;
  w->in_kernel = false;
  // SA_NODEFER left the signal unblocked, so a plain long jump out of the handler is safe.
  _longjmp(w->scheduler, 1);
}

// Writes the message of a failure that a signal handler recorded without one.
void describe_pending(Worker& w) {
  if (!w.message.empty()) return;
  if (w.failure == Failure::Timeout) {
    w.message = timeout_text(w);
  } else if (w.failure == Failure::Fault) {
    char buf[512];
    describe_fault(w, w.fault_address, w.fault_is_write, buf, sizeof buf);
    w.message = buf;
  }
}

// Fault and timeout handlers, installed for the duration of dispatches (counted: concurrent
// dispatches share them).
struct FaultHandlerScope {
  FaultHandlerScope() {
    std::lock_guard<std::mutex> lock(g_signal_mutex);
    if (g_signal_users++ == 0) {
      struct sigaction sa;
      std::memset(&sa, 0, sizeof sa);
      sa.sa_sigaction = on_fault;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGSEGV, &sa, &g_old_segv);
      sigaction(SIGBUS, &sa, &g_old_bus);
      sa.sa_sigaction = on_timeout;
      sigaction(kTimeoutSignal, &sa, &g_old_timeout);
    }
  }
  ~FaultHandlerScope() {
    std::lock_guard<std::mutex> lock(g_signal_mutex);
    if (--g_signal_users == 0) {
      sigaction(SIGSEGV, &g_old_segv, nullptr);
      sigaction(SIGBUS, &g_old_bus, nullptr);
      sigaction(kTimeoutSignal, &g_old_timeout, nullptr);
    }
  }
};

// The signal handler runs on this stack: a fiber that overflowed its own has none left.
struct AltStack {
  std::vector<char> memory;
  stack_t old;
  AltStack() : memory(64 * 1024) {
    stack_t ss;
    ss.ss_sp = memory.data();
    ss.ss_size = memory.size();
    ss.ss_flags = 0;
    sigaltstack(&ss, &old);
  }
  ~AltStack() { sigaltstack(&old, nullptr); }
};

// Past its timeout, flags the dispatch and keeps signalling the enrolled workers until it is
// destroyed; a worker leaves kernel code on the signal (on_timeout), a signal outside kernel code is
// ignored. Workers enrol while they run, so no exited thread is ever signalled.
class Watchdog {
 public:
  Watchdog(double seconds, GridControl& control) {
    if (seconds <= 0) return;
    thread_ = std::thread([this, seconds, &control] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return stopped_; })) return;
      control.timed_out = true;
      while (!cv_.wait_for(lock, std::chrono::milliseconds(50), [this] { return stopped_; }))
        for (pthread_t t : enrolled_) pthread_kill(t, kTimeoutSignal);
    });
  }
  ~Watchdog() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopped_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // The calling thread is a target while this lives.
  struct Enrolment {
    explicit Enrolment(Watchdog& w) : w_(w) {
      std::lock_guard<std::mutex> lock(w_.mutex_);
      w_.enrolled_.push_back(pthread_self());
    }
    ~Enrolment() {
      std::lock_guard<std::mutex> lock(w_.mutex_);
      auto& e = w_.enrolled_;
      e.erase(std::find_if(e.begin(), e.end(), [](pthread_t t) { return pthread_equal(t, pthread_self()); }));
    }
    Watchdog& w_;
  };

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<pthread_t> enrolled_;
  bool stopped_ = false;
  std::thread thread_;
};

// ---------------------------------------------------------------------------- one threadgroup
void fiber_entry() {
  Worker& w = *tl_worker;
  w.in_kernel = true;
  w.launch->kernel->run_thread(w.launch->buffers.data());
  w.in_kernel = false;
  Worker& w2 = *tl_worker;  // re-read: the fiber may have moved through several switches
  w2.current->state = State::Done;
  _longjmp(w2.scheduler, 1);
}

void setup_worker(Worker& w, const GridLaunch& launch) {
  w.launch = &launch;
  uint32_t n = launch.threadgroup[0] * launch.threadgroup[1] * launch.threadgroup[2];
  w.stacks = StackSet::acquire(n, launch.stack_bytes);
  w.fibers.assign(n, Fiber{});
  uint32_t nsg = (n + kSimd - 1) / kSimd;
  w.simd.assign(nsg, SimdGroup{});
  for (uint32_t s = 0; s < nsg; s++) {
    w.simd[s].first = s * kSimd;
    w.simd[s].count = std::min(kSimd, n - s * kSimd);
  }
  w.arena_memory.reset(new unsigned char[launch.threadgroup_limit + 128]);
  w.arena = (unsigned char*)(((uintptr_t)w.arena_memory.get() + 63) & ~(uintptr_t)63);
  w.variables.assign(kMaxVariables, Worker::Variable{});
  uint32_t max_index = 0;
  for (auto& [index, bytes] : launch.threadgroup_args) max_index = std::max(max_index, index + 1);
  w.argument_ptrs.assign(max_index, nullptr);
}

void start_group(Worker& w, uint64_t linear) {
  const GridLaunch& L = *w.launch;
  w.group[0] = linear % L.grid[0];
  w.group[1] = (linear / L.grid[0]) % L.grid[1];
  w.group[2] = linear / ((uint64_t)L.grid[0] * L.grid[1]);
  // [[threadgroup(i)]] arguments first, then `threadgroup` variables as threads reach them.
  uint64_t used = 0;
  for (auto& [index, bytes] : L.threadgroup_args) {
    w.argument_ptrs[index] = w.arena + used;
    std::memset(w.arena + used, 0xFF, bytes);
    used += (bytes + 15) / 16 * 16;
  }
  w.arena_used = w.arena_args = used;
  std::fill(w.variables.begin(), w.variables.end(), Worker::Variable{});
  uint32_t n = (uint32_t)w.fibers.size();
  uint32_t nsg = (uint32_t)w.simd.size();
  for (uint32_t i = 0; i < n; i++) {
    Fiber& f = w.fibers[i];
    aproto_thread_pos& p = f.pos;
    std::memset(&p, 0, sizeof p);
    uint32_t lid[3] = {i % L.threadgroup[0], (i / L.threadgroup[0]) % L.threadgroup[1],
                       i / (L.threadgroup[0] * L.threadgroup[1])};
    for (int d = 0; d < 3; d++) {
      p.threadgroup_position_in_grid[d] = w.group[d];
      p.thread_position_in_threadgroup[d] = lid[d];
      p.thread_position_in_grid[d] = w.group[d] * L.threadgroup[d] + lid[d];
      p.threads_per_threadgroup[d] = L.threadgroup[d];
      p.threadgroups_per_grid[d] = L.grid[d];
      p.threads_per_grid[d] = L.grid[d] * L.threadgroup[d];
    }
    p.thread_index_in_threadgroup[0] = i;
    p.thread_index_in_simdgroup[0] = i % kSimd;
    p.simdgroup_index_in_threadgroup[0] = i / kSimd;
    p.simdgroups_per_threadgroup[0] = nsg;
    p.threads_per_simdgroup[0] = kSimd;
    p.thread_index_in_quadgroup[0] = i % 4;
    p.quadgroup_index_in_threadgroup[0] = i / 4;
    p.quadgroups_per_threadgroup[0] = (n + 3) / 4;
    p.stack_low = (uint64_t)(uintptr_t)w.stacks->stack(i);
    p.stack_high = p.stack_low + w.stacks->stack_bytes();
    f.state = State::Runnable;
    f.site = aproto_site{};
    f.flags = 0;
    fiber_prepare(f.ctx, w.stacks->stack(i), w.stacks->stack_bytes(), fiber_entry);
  }
}

// Settles one SIMD rendezvous in `sg` if any lane waits at one. Returns false if none does.
bool settle_simd(Worker& w, SimdGroup& sg) {
  int leader = -1;  // a lane waiting at the earliest site in source order
  for (uint32_t l = 0; l < sg.count; l++) {
    const Fiber& f = w.fibers[sg.first + l];
    if (f.state == State::AtSimd && (leader < 0 || earlier(f.site, w.fibers[sg.first + leader].site))) leader = (int)l;
  }
  if (leader < 0) return false;
  const aproto_site site = w.fibers[sg.first + leader].site;
  uint32_t mask = 0;
  bool all_lanes = false;
  for (uint32_t l = 0; l < sg.count; l++) {
    const Fiber& f = w.fibers[sg.first + l];
    if (f.state == State::AtSimd && same_site(f.site, site)) {
      mask |= 1u << l;
      all_lanes |= (f.flags & APROTO_SIMD_ALL_LANES) != 0;
    }
  }
  const Fiber& lead = w.fibers[sg.first + leader];
  const uint32_t every_lane = sg.count == 32 ? 0xffffffffu : (1u << sg.count) - 1;
  if (all_lanes && mask != every_lane) {  // a lane that returned cannot take part either
    std::vector<uint32_t> in, out;
    std::string elsewhere;
    for (uint32_t l = 0; l < sg.count; l++) {
      const Fiber& f = w.fibers[sg.first + l];
      if (mask >> l & 1) in.push_back(l);
      else if (f.state != State::Done) {
        out.push_back(l);
        if (elsewhere.empty()) elsewhere = std::string("; e.g. lane ") + std::to_string(l) + " waits in " + f.what + " at " + site_text(f.site);
      } else {
        out.push_back(l);
        if (elsewhere.empty()) elsewhere = "; e.g. lane " + std::to_string(l) + " has returned";
      }
    }
    w.failure = Failure::Deadlock;
    w.message = "deadlock in kernel '" + std::string(w.launch->kernel->name) + "': " + lead.what + " at " +
                site_text(site) + " needs every lane of SIMD-group " +
                std::to_string(lead.pos.simdgroup_index_in_threadgroup[0]) + " of threadgroup (" +
                std::to_string(w.group[0]) + "," + std::to_string(w.group[1]) + "," + std::to_string(w.group[2]) +
                "), but only lanes " + ranges_text(in) + " reach it (lanes " + ranges_text(out) + " never do" +
                elsewhere + ")";
    return false;
  }
  for (uint32_t l = 0; l < sg.count; l++)
    if (mask >> l & 1) std::memcpy(sg.snapshot[l], sg.deposit[l], APROTO_SIMD_SLOT_BYTES);
  sg.snapshot_mask = mask;
  for (uint32_t l = 0; l < sg.count; l++)
    if (mask >> l & 1) w.fibers[sg.first + l].state = State::Runnable;
  return true;
}

// Opens the barrier every live thread waits at, or explains the deadlock.
bool settle_barrier(Worker& w) {
  std::vector<std::pair<aproto_site, std::vector<uint32_t>>> waiting;  // site -> thread indices
  std::vector<uint32_t> returned;
  for (uint32_t i = 0; i < w.fibers.size(); i++) {
    const Fiber& f = w.fibers[i];
    if (f.state == State::AtBarrier) {
      auto it = std::find_if(waiting.begin(), waiting.end(), [&](const auto& e) { return same_site(e.first, f.site); });
      if (it == waiting.end()) waiting.push_back({f.site, {i}});
      else it->second.push_back(i);
    } else if (f.state == State::Done) {
      returned.push_back(i);
    }
  }
  if (waiting.size() == 1 && returned.empty()) {
    for (auto& f : w.fibers) f.state = State::Runnable;
    return true;
  }
  std::string where = "threadgroup (" + std::to_string(w.group[0]) + "," + std::to_string(w.group[1]) + "," +
                      std::to_string(w.group[2]) + ")";
  std::string msg = "deadlock in kernel '" + std::string(w.launch->kernel->name) + "', " + where + ": ";
  bool first = true;
  for (auto& [site, ids] : waiting) {
    msg += (first ? "" : "; ") + std::string("threads ") + ranges_text(ids) + " wait at threadgroup_barrier (" +
           site_text(site) + ")";
    first = false;
  }
  if (!returned.empty())
    msg += "; threads " + ranges_text(returned) + " returned without reaching it";
  else
    msg += " (every thread must reach the same barrier)";
  w.failure = Failure::Deadlock;
  w.message = msg;
  return false;
}

bool run_group(Worker& w) {
  for (;;) {
    bool any_live = false;
    for (Fiber& f : w.fibers) {
      if (f.state != State::Runnable) continue;
      w.current = &f;
      if (w.control->timed_out.load(std::memory_order_relaxed)) {
        w.failure = Failure::Timeout;
        w.message = timeout_text(w);
        return false;
      }
      fiber_resume(f.ctx, w.scheduler);
      if (w.failure != Failure::None) {
        describe_pending(w);
        return false;
      }
    }
    for (const Fiber& f : w.fibers) any_live |= f.state != State::Done;
    if (!any_live) return true;
    bool settled = false;
    for (SimdGroup& sg : w.simd) {
      settled |= settle_simd(w, sg);
      if (w.failure != Failure::None) return false;
    }
    if (!settled && !settle_barrier(w)) return false;
  }
}

}  // namespace

const aproto_runtime* runtime_table() { return &kRuntime; }

GridResult run_grid(const GridLaunch& launch) {
  const uint64_t total = (uint64_t)launch.grid[0] * launch.grid[1] * launch.grid[2];
  unsigned workers = launch.workers ? launch.workers : std::max(1u, std::thread::hardware_concurrency());
  workers = (unsigned)std::min<uint64_t>(workers, std::max<uint64_t>(total, 1));

  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex result_mutex;
  GridResult result;
  GridControl control;
  FaultHandlerScope faults;
  Watchdog watchdog(launch.timeout_seconds, control);

  auto work = [&] {
    Watchdog::Enrolment enrolled(watchdog);
    AltStack alt;
    Worker w;
    w.control = &control;
    try {
      setup_worker(w, launch);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(result_mutex);
      if (!failed.exchange(true)) {
        result.failure = Failure::Kernel;
        result.message = std::string("could not set up a threadgroup: ") + e.what();
      }
      return;
    }
    tl_worker = &w;
    for (uint64_t k; !failed.load(std::memory_order_relaxed) && (k = next++) < total;) {
      start_group(w, k);
      if (!run_group(w)) {
        std::lock_guard<std::mutex> lock(result_mutex);
        if (!failed.exchange(true)) {
          result.failure = w.failure;
          result.message = w.message;
        }
        break;
      }
    }
    tl_worker = nullptr;
    // A failed group's fibers are abandoned mid-flight; their stacks hold nothing that needs unwinding.
    StackSet::release(std::move(w.stacks));
    std::lock_guard<std::mutex> lock(result_mutex);
    result.threadgroup_variable_bytes = std::max(result.threadgroup_variable_bytes, w.max_variable_bytes);
  };
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < workers; i++) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  return result;
}

}  // namespace aproto::host
