#include "kvtier/block_key.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/sha256.h"

namespace kvtier {
namespace {

constexpr absl::string_view kNamespaceTag = "kvtier-namespace-v1";
constexpr absl::string_view kTenantTag = "kvtier-tenant-v1";

}  // namespace

NamespaceId ComputeNamespace(const NamespaceParams& p) {
  Sha256 h;
  h.Update(kNamespaceTag.data(), kNamespaceTag.size());
  h.Update(p.model_fingerprint.data(), p.model_fingerprint.size());
  h.UpdateString(p.kv_dtype);
  h.UpdateU32(p.block_tokens);
  h.UpdateU32(p.layout_version);
  h.UpdateString(p.tenant_salt);
  return h.Final();
}

NamespaceId TenantNamespace(const NamespaceId& ns, absl::string_view tenant) {
  if (tenant.empty()) return ns;
  Sha256 h;
  h.Update(kTenantTag.data(), kTenantTag.size());
  h.Update(ns.data(), ns.size());
  h.UpdateString(tenant);
  return h.Final();
}

BlockKey ChainBlockKey(const BlockKey& prev, absl::Span<const TokenId> tokens) {
  Sha256 h;
  h.Update(prev.data(), prev.size());
  for (TokenId t : tokens) h.UpdateU32(static_cast<uint32_t>(t));
  return h.Final();
}

std::vector<BlockKey> ComputeBlockKeys(const NamespaceId& ns, absl::Span<const TokenId> tokens,
                                       uint32_t block_tokens) {
  std::vector<BlockKey> keys;
  if (block_tokens == 0) return keys;
  const size_t n = tokens.size() / block_tokens;
  keys.reserve(n);
  BlockKey prev = ns;
  for (size_t i = 0; i < n; ++i) {
    prev = ChainBlockKey(prev, tokens.subspan(i * block_tokens, block_tokens));
    keys.push_back(prev);
  }
  return keys;
}

uint64_t KeyFingerprint(const BlockKey& key) {
  uint64_t fp = 0;
  for (int i = 7; i >= 0; --i) fp = (fp << 8) | key[i];
  return fp;
}

std::string KeyToHex(const BlockKey& key) { return absl::BytesToHexString(KeyBytes(key)); }

absl::StatusOr<BlockKey> KeyFromHex(absl::string_view hex) {
  if (hex.size() != 2 * kBlockKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a key is 64 hex digits, got ", hex.size(), " characters"));
  }
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat("not a hex key: '", hex, "'"));
    }
  }
  return KeyFromBytes(absl::HexStringToBytes(hex), "key");
}

absl::StatusOr<BlockKey> KeyFromBytes(absl::string_view bytes, absl::string_view what) {
  if (bytes.size() != kBlockKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be ", kBlockKeyBytes, " bytes, got ", bytes.size()));
  }
  BlockKey key;
  std::copy(bytes.begin(), bytes.end(), key.begin());
  return key;
}

}  // namespace kvtier
