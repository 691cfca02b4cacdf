#include "runtime/memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

namespace aproto {

namespace {

struct Mapping {
  char* base;     // what mmap returned
  size_t length;  // what was mapped
  size_t usable;  // bytes from the aligned start to the end of the mapping
};

std::mutex g_mutex;
std::map<const char*, Mapping> g_regions;  // aligned start -> mapping

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

}  // namespace

void* allocate_region(size_t nbytes) {
  const size_t usable = round_up(nbytes == 0 ? 1 : nbytes, kAllocationGranule);
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  // On systems whose pages are smaller than the granule, map one granule more to align the start.
  const size_t extra = page >= kAllocationGranule ? 0 : kAllocationGranule;
  void* p = mmap(nullptr, usable + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  char* base = static_cast<char*>(p);
  char* start = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(base), kAllocationGranule));
  std::lock_guard<std::mutex> lock(g_mutex);
  g_regions[start] = {base, usable + extra, usable + extra - size_t(start - base)};
  return start;
}

void free_region(void* data) noexcept {
  Mapping m{};
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_regions.find(static_cast<const char*>(data));
    if (it == g_regions.end()) return;
    m = it->second;
    g_regions.erase(it);
  }
  munmap(m.base, m.length);
}

const void* find_region(const void* data, size_t nbytes, const void** region_end) {
  const char* p = static_cast<const char*>(data);
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_regions.upper_bound(p);  // first region starting after p
  if (it == g_regions.begin()) return nullptr;
  it = std::prev(it);
  const char* end = it->first + it->second.usable;
  if (p < it->first || p + nbytes > end) return nullptr;
  if (region_end) *region_end = end;
  return it->first;
}

}  // namespace aproto
