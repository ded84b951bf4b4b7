#include "common/checksum.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace kvtier {

uint64_t BlockChecksum(const void* data, size_t size) { return XXH3_64bits(data, size); }

}  // namespace kvtier
