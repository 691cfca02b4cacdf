// Checked mode: each device buffer is run from a private copy that ends at a PROT_NONE page (exactly,
// when its size is a multiple of its alignment), with another guard page before it. An access past the
// end faults (and becomes an OutOfBoundsError naming buffer and offset). The slack between the leading
// guard page and the start of the data is filled with a 0xFF canary that is checked afterwards, so
// writes just before the start are reported too, unless they write 0xFF bytes; reads there return
// NaN-poison rather than faulting. Misaligned arrays run from such a copy as well.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace aproto::host {

class GuardedBuffer {
 public:
  // A copy of `bytes` bytes whose start is a multiple of `align` (at most that many bytes short of
  // the guard page).
  GuardedBuffer(const void* source, size_t bytes, size_t align);
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
