// Deterministic block payloads for demos, benchmarks and tests: the bytes are a function of the
// key, so whoever fetches a block can check it byte for byte without having written it.
#ifndef KVTIER_COMMON_SYNTHETIC_BLOCK_H_
#define KVTIER_COMMON_SYNTHETIC_BLOCK_H_

#include <cstddef>
#include <cstdint>

#include "kvtier/block_key.h"

namespace kvtier {

// Fills `bytes` bytes at `dst` with a pseudo-random stream seeded by `key`.
void FillSyntheticBlock(const BlockKey& key, uint8_t* dst, size_t bytes);

// True if `data` holds exactly FillSyntheticBlock(key, ., bytes).
bool IsSyntheticBlock(const BlockKey& key, const uint8_t* data, size_t bytes);

}  // namespace kvtier

#endif  // KVTIER_COMMON_SYNTHETIC_BLOCK_H_
