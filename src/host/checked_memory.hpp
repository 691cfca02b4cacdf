// Checked mode: each device buffer is run from a private copy that ends exactly at a PROT_NONE page,
// with another guard page before it. Any access past the end faults at its first byte (and becomes an
// OutOfBoundsError naming buffer and offset). The slack between the leading guard page and the start
// of the data is filled with a canary that is checked afterwards, so writes just before the start are
// reported too; reads there return NaN-poison.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace aproto::host {

class GuardedBuffer {
 public:
  GuardedBuffer(const void* source, size_t bytes);
  ~GuardedBuffer();
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;
  void* data() const { return data_; }
  // Bytes before the start that a kernel overwrote (0 if the canary is intact).
  size_t underrun_bytes() const;
  void copy_back(void* destination) const;

 private:
  char* map_ = nullptr;
  size_t map_bytes_ = 0, bytes_ = 0, slack_ = 0;
  char* data_ = nullptr;
};

}  // namespace aproto::host
