// Block payload checksum: xxh3-64 (docs/store-protocol.md). Thread-safe, stateless.
#ifndef KVTIER_COMMON_CHECKSUM_H_
#define KVTIER_COMMON_CHECKSUM_H_

#include <cstddef>
#include <cstdint>

namespace kvtier {

// xxh3-64 with seed 0 over `size` bytes at `data`.
uint64_t BlockChecksum(const void* data, size_t size);

// Copies `size` bytes from src to dst and returns BlockChecksum of the bytes now at dst, in one
// pass over memory: each chunk is hashed right after it is copied, while it is still in cache.
// The hash covers what landed at dst, so a source changing under the copy cannot go unseen.
uint64_t CopyAndChecksum(void* dst, const void* src, size_t size);

// Returns BlockChecksum of src while copying it to dst with non-temporal stores (dst does not
// pass through this core's cache: the right copy for a block another process reads next).
// Hashes the source, so the caller must own src and keep it stable during the call.
uint64_t ChecksumAndStreamCopy(void* dst, const void* src, size_t size);

}  // namespace kvtier

#endif  // KVTIER_COMMON_CHECKSUM_H_
