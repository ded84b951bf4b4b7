// The namespace and key chains that the store tests and their client processes share, so a
// block written by one process is recognised by another.
#ifndef KVTIER_TESTS_TEST_KEYS_H_
#define KVTIER_TESTS_TEST_KEYS_H_

#include <cstdint>
#include <vector>

#include "kvtier/block_key.h"

namespace kvtier::testing {

inline NamespaceId TestNamespace() {
  NamespaceParams p;
  p.tenant_salt = "kvtier-tests";
  return ComputeNamespace(p);
}

// Keys of `n` 16-token blocks whose tokens are derived from `seed`.
inline std::vector<BlockKey> TestKeys(uint32_t seed, uint32_t n) {
  std::vector<TokenId> tokens(n * 16);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = seed * 1000003u + i;
  return ComputeBlockKeys(TestNamespace(), tokens, 16);
}

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_TEST_KEYS_H_
