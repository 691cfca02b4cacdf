// Memory the package allocates for arrays (attention_proto.empty / zeros / aligned): whole pages
// from an anonymous mmap, each mapping one VM region, which is what Metal's no-copy buffers
// (newBufferWithBytesNoCopy) ask for. The Metal backend wraps memory without a copy only inside these
// regions and copies everything else (counted in DispatchResult::bytes_copied).
#pragma once
#include <cstddef>

namespace aproto {

// Alignment and length granule of package allocations: the page size of Apple Silicon (a multiple of
// the 4 KB pages of x86 Linux), so an allocation is wrappable on every Mac.
constexpr size_t kAllocationGranule = 16384;

// A zero-filled region of at least `nbytes` bytes (at least one granule), starting on a granule
// boundary, its length a multiple of the granule. Throws std::bad_alloc.
void* allocate_region(size_t nbytes);
// Unmaps a region returned by allocate_region.
void free_region(void* data) noexcept;

// The package region holding all of [data, data + nbytes), or null. `region_end` receives its end.
const void* find_region(const void* data, size_t nbytes, const void** region_end);

}  // namespace aproto
