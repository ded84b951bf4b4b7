// Block payload checksum: xxh3-64 (DESIGN §2). Thread-safe, stateless.
#ifndef KVTIER_COMMON_CHECKSUM_H_
#define KVTIER_COMMON_CHECKSUM_H_

#include <cstddef>
#include <cstdint>

namespace kvtier {

// xxh3-64 with seed 0 over `size` bytes at `data`.
uint64_t BlockChecksum(const void* data, size_t size);

}  // namespace kvtier

#endif  // KVTIER_COMMON_CHECKSUM_H_
