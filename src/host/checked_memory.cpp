#include "host/checked_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <new>

namespace aproto::host {

namespace {
constexpr unsigned char kCanary = 0xFF;  // also NaN for float/half/bfloat reads
}

GuardedBuffer::GuardedBuffer(const void* source, size_t bytes, size_t align) : bytes_(bytes) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  const size_t data_pages = (bytes + page - 1) / page;
  map_bytes_ = (data_pages + 2) * page;
  void* p = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  map_ = static_cast<char*>(p);
  mprotect(map_, page, PROT_NONE);
  mprotect(map_ + (data_pages + 1) * page, page, PROT_NONE);
  char* end = map_ + (data_pages + 1) * page;
  data_ = (char*)((uintptr_t)(end - bytes) & ~(uintptr_t)(align - 1));
  slack_ = (size_t)(data_ - (map_ + page));
  std::memset(data_ - slack_, kCanary, slack_);
  if (bytes) std::memcpy(data_, source, bytes);
}

GuardedBuffer::~GuardedBuffer() { munmap(map_, map_bytes_); }

size_t GuardedBuffer::underrun_bytes() const {
  for (size_t i = 0; i < slack_; i++)
    if ((unsigned char)data_[-(long)slack_ + (long)i] != kCanary) return slack_ - i;
  return 0;
}

void GuardedBuffer::copy_back(void* destination) const {
  if (bytes_) std::memcpy(destination, data_, bytes_);
}

}  // namespace aproto::host
