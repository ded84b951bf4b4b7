// libFuzzer target: block keys and namespaces (include/kvtier/block_key.h) from outside input:
// keys as hex text (the `kvtier store` admin commands) and as protobuf bytes (every store RPC),
// namespace parameters (model fingerprint, dtype, tenant salt), token ids of any value and
// block sizes. Checks: hex parses iff it is 64 hex digits and prints back lower-cased; bytes
// parse iff there are 32; two parameter sets give one namespace iff they are equal (the
// encoding is unambiguous); ComputeBlockKeys gives one key per full block, each the chain of
// the one before, and a prefix of the tokens gives a prefix of the keys.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "kvtier/block_key.h"

namespace kvtier {
namespace {

NamespaceParams Params(FuzzedDataProvider& in) {
  NamespaceParams p;
  const std::string fingerprint = in.ConsumeBytesAsString(in.ConsumeIntegralInRange(0, 32));
  std::copy(fingerprint.begin(), fingerprint.end(), p.model_fingerprint.begin());
  p.kv_dtype = in.ConsumeRandomLengthString(16);
  p.block_tokens = in.ConsumeIntegral<uint32_t>();
  p.layout_version = in.ConsumeIntegral<uint32_t>();
  p.tenant_salt = in.ConsumeRandomLengthString(16);
  return p;
}

bool Equal(const NamespaceParams& a, const NamespaceParams& b) {
  return a.model_fingerprint == b.model_fingerprint && a.kv_dtype == b.kv_dtype &&
         a.block_tokens == b.block_tokens && a.layout_version == b.layout_version &&
         a.tenant_salt == b.tenant_salt;
}

void Check(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const std::string text = in.ConsumeRandomLengthString(80);
  absl::StatusOr<BlockKey> hex = KeyFromHex(text);
  bool is_hex = text.size() == 2 * kBlockKeyBytes;
  for (char c : text) is_hex = is_hex && absl::ascii_isxdigit(static_cast<unsigned char>(c));
  if (hex.ok() != is_hex) std::abort();
  if (hex.ok() && KeyToHex(*hex) != absl::AsciiStrToLower(text)) std::abort();
  absl::StatusOr<BlockKey> bytes = KeyFromBytes(text, "key");
  if (bytes.ok() != (text.size() == kBlockKeyBytes)) std::abort();
  if (bytes.ok() && KeyBytes(*bytes) != text) std::abort();

  const NamespaceParams a = Params(in);
  NamespaceParams b = in.ConsumeBool() ? a : Params(in);
  if (in.ConsumeBool()) std::swap(b.kv_dtype, b.tenant_salt);  // same bytes, other fields
  const NamespaceId ns = ComputeNamespace(a);
  if ((ns == ComputeNamespace(b)) != Equal(a, b)) std::abort();

  const uint32_t block_tokens = in.ConsumeIntegralInRange<uint32_t>(0, 40);
  std::vector<TokenId> tokens;
  while (in.remaining_bytes() >= sizeof(TokenId)) tokens.push_back(in.ConsumeIntegral<TokenId>());
  const std::vector<BlockKey> keys = ComputeBlockKeys(ns, tokens, block_tokens);
  const size_t blocks = block_tokens == 0 ? 0 : tokens.size() / block_tokens;
  if (keys.size() != blocks) std::abort();
  BlockKey prev = ns;
  for (size_t i = 0; i < blocks; ++i) {
    prev = ChainBlockKey(prev, absl::MakeConstSpan(tokens).subspan(i * block_tokens, block_tokens));
    if (keys[i] != prev) std::abort();
  }
  if (!tokens.empty()) {
    const std::vector<BlockKey> head =
        ComputeBlockKeys(ns, absl::MakeConstSpan(tokens).first(tokens.size() / 2), block_tokens);
    if (!std::equal(head.begin(), head.end(), keys.begin())) std::abort();
  }
}

}  // namespace
}  // namespace kvtier

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::Check(data, size);
  return 0;
}
