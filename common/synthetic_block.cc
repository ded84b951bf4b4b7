#include "common/synthetic_block.h"

#include <cstring>
#include <vector>

namespace kvtier {
namespace {

// splitmix64: fast, and good enough that distinct keys give distinct bytes.
inline uint64_t Mix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

void FillSyntheticBlock(const BlockKey& key, uint8_t* dst, size_t bytes) {
  uint64_t state;
  std::memcpy(&state, key.data(), sizeof(state));
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t v = Mix(state);
    std::memcpy(dst + i, &v, 8);
  }
  if (i < bytes) {
    uint64_t v = Mix(state);
    std::memcpy(dst + i, &v, bytes - i);
  }
}

bool IsSyntheticBlock(const BlockKey& key, const uint8_t* data, size_t bytes) {
  std::vector<uint8_t> expect(bytes);
  FillSyntheticBlock(key, expect.data(), bytes);
  return std::memcmp(expect.data(), data, bytes) == 0;
}

}  // namespace kvtier
