// The token id: one type from the tokenizer through the router, the worker API and the engine
// to the block keys (docs/architecture.md, "Token ids"). Ids are non-negative and below the
// model's vocabulary size; every boundary that takes ids from outside checks that. A block key
// hashes each id as an unsigned 32-bit little-endian integer (docs/block-key.md).
#ifndef KVTIER_TOKEN_H_
#define KVTIER_TOKEN_H_

#include <cstdint>

namespace kvtier {

using TokenId = int32_t;

}  // namespace kvtier

#endif  // KVTIER_TOKEN_H_
