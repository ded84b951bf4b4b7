// SHA-256 (FIPS 180-4) through OpenSSL's EVP interface, with the little-endian and
// length-prefixed helpers that kvtier's hashed formats use (docs/block-key.md, docs/engine.md).
//
// One object per digest; not thread-safe; move-less (owns an EVP context).
#ifndef KVTIER_COMMON_SHA256_H_
#define KVTIER_COMMON_SHA256_H_

#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "kvtier/block_key.h"

namespace kvtier {

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    KVTIER_CHECK(ctx_ != nullptr && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1,
                 "OpenSSL SHA-256 init failed");
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size) { EVP_DigestUpdate(ctx_, data, size); }
  // v as 4 bytes little-endian.
  void UpdateU32(uint32_t v) {
    uint8_t le[4];
    for (int i = 0; i < 4; ++i) le[i] = static_cast<uint8_t>(v >> (8 * i));
    Update(le, sizeof(le));
  }
  // v as 8 bytes little-endian (two's complement).
  void UpdateI64(int64_t v) {
    uint8_t le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i));
    Update(le, sizeof(le));
  }
  // u32 length, then the bytes.
  void UpdateString(absl::string_view s) {
    UpdateU32(static_cast<uint32_t>(s.size()));
    Update(s.data(), s.size());
  }
  BlockKey Final() {
    BlockKey out;
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, out.data(), &len);
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

}  // namespace kvtier

#endif  // KVTIER_COMMON_SHA256_H_
