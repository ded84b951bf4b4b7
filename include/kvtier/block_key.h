// Block keys and namespaces: the content addresses of stored K/V blocks, defined byte for byte
// in docs/block-key.md. Part of the client API (include/kvtier/); implemented in
// common/block_key.cc (library kvtier_common).
//
// Value types only, nothing owned. All functions are pure and thread-safe.
#ifndef KVTIER_BLOCK_KEY_H_
#define KVTIER_BLOCK_KEY_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kvtier/token.h"

namespace kvtier {

inline constexpr size_t kBlockKeyBytes = 32;

// A SHA-256 digest: a block key or a namespace id.
using BlockKey = std::array<uint8_t, kBlockKeyBytes>;
using NamespaceId = BlockKey;

// Everything that changes the bytes of K/V. Two parameter sets that differ in any field give
// different namespaces.
struct NamespaceParams {
  // SHA-256 over the model's architecture fields and weights (computed by engine/).
  // Default: all zero.
  BlockKey model_fingerprint{};
  // KV element type, e.g. "bf16", "fp16", "fp32". Default: "bf16".
  std::string kv_dtype = "bf16";
  // Tokens per block. Default: 16.
  uint32_t block_tokens = 16;
  // Version of the block payload layout (docs/engine.md, "KV pages are block payloads").
  // Default: 1.
  uint32_t layout_version = 1;
  // Optional per-tenant salt; empty means shared. Default: empty.
  std::string tenant_salt;
};

// SHA-256("kvtier-namespace-v1" || fingerprint || len|dtype || block_tokens || layout_version
//         || len|salt), integers as u32 little-endian.
NamespaceId ComputeNamespace(const NamespaceParams& params);

// The namespace of one tenant's blocks (docs/block-key.md, "Tenants"): `ns` itself for the empty
// tenant, else SHA-256("kvtier-tenant-v1" || ns || len|tenant). Two tenants never share a key;
// the router and the workers derive it from the workers' namespace alike.
NamespaceId TenantNamespace(const NamespaceId& ns, absl::string_view tenant);

// key = SHA-256(prev || tokens as u32 LE), where prev is the namespace for the first block.
BlockKey ChainBlockKey(const BlockKey& prev, absl::Span<const TokenId> block_tokens);

// Keys of every full block of `tokens` (a trailing partial block has no key).
std::vector<BlockKey> ComputeBlockKeys(const NamespaceId& ns, absl::Span<const TokenId> tokens,
                                       uint32_t block_tokens);

// A key's first 8 bytes as a little-endian integer: a compact name of a block where a rare
// collision costs only a wrong guess (the router's placement, docs/serving.md), never data.
uint64_t KeyFingerprint(const BlockKey& key);

// Lower-case hex of the 32 bytes, and its inverse.
std::string KeyToHex(const BlockKey& key);
absl::StatusOr<BlockKey> KeyFromHex(absl::string_view hex);

// Interprets `bytes` (e.g. a protobuf bytes field) as a key; InvalidArgument unless 32 bytes.
absl::StatusOr<BlockKey> KeyFromBytes(absl::string_view bytes, absl::string_view what);
inline absl::string_view KeyBytes(const BlockKey& key) {
  return {reinterpret_cast<const char*>(key.data()), key.size()};
}

}  // namespace kvtier

#endif  // KVTIER_BLOCK_KEY_H_
