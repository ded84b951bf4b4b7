#include "kvtier/block_key.h"

#include <algorithm>
#include <numeric>

#include "common/checksum.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

NamespaceId DefaultNs() { return ComputeNamespace(NamespaceParams{}); }

TEST(BlockKeyTest, NamespaceVectors) {
  EXPECT_EQ(KeyToHex(DefaultNs()),
            "cb58502ce0fb5fef814fcf1ee5e85fbde880219e283bf9d43b5541260eb0cdb8");
  NamespaceParams p;
  std::iota(p.model_fingerprint.begin(), p.model_fingerprint.end(), 0);
  p.kv_dtype = "fp16";
  p.block_tokens = 32;
  p.tenant_salt = "tenant-a";
  EXPECT_EQ(KeyToHex(ComputeNamespace(p)),
            "95c4c18666a436ad4ea5e8ea5a8c4ed0ade2125fe113f66976b7edf083f4142b");
}

TEST(BlockKeyTest, TenantNamespaceVectorAndSeparation) {
  EXPECT_EQ(TenantNamespace(DefaultNs(), ""), DefaultNs());  // no API keys: as before
  EXPECT_EQ(KeyToHex(TenantNamespace(DefaultNs(), "tenant-a")),
            "9f08c1a92abaa36b5cb7c0467fc394254729aa417d3215c5014238f59761aa1f");
  const std::vector<TokenId> tokens(32, 7);
  const auto a = ComputeBlockKeys(TenantNamespace(DefaultNs(), "a"), tokens, 16);
  const auto b = ComputeBlockKeys(TenantNamespace(DefaultNs(), "b"), tokens, 16);
  const auto none = ComputeBlockKeys(DefaultNs(), tokens, 16);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NE(a[i], b[i]);
    EXPECT_NE(a[i], none[i]);
  }
}

TEST(BlockKeyTest, KeyVectors) {
  std::vector<TokenId> tokens(40);
  std::iota(tokens.begin(), tokens.end(), 0);
  auto keys = ComputeBlockKeys(DefaultNs(), tokens, 16);
  ASSERT_EQ(keys.size(), 2u);  // the 8-token tail has no key
  EXPECT_EQ(KeyToHex(keys[0]), "187acc469ff06c389873128b9fd35f4958dddd705f5848e333e3ecaaacc00b43");
  EXPECT_EQ(KeyToHex(keys[1]), "badc4711c01863ed4175f260042d82a5a52dbc4c4a08a819a3b58ee995acf35c");

  // The key hashes ids as u32: the vector of docs/block-key.md holds 0xFFFFFFFF.
  std::vector<TokenId> edge = {128000, static_cast<TokenId>(0xFFFFFFFFu), 0, 7};
  auto k2 = ComputeBlockKeys(DefaultNs(), edge, 2);
  ASSERT_EQ(k2.size(), 2u);
  EXPECT_EQ(KeyToHex(k2[0]), "73a8e0ad992b9201526875a6b036027ee55af4764641b48ec60d17f80062a8a9");
  EXPECT_EQ(KeyToHex(k2[1]), "58a2634376c1045159256cda6f489fae57d4d26064b017f40319d1f3271b811d");
}

TEST(BlockKeyTest, EveryNamespaceFieldMatters) {
  const NamespaceId base = DefaultNs();
  NamespaceParams p;
  p.model_fingerprint[31] = 1;
  EXPECT_NE(ComputeNamespace(p), base);
  p = {};
  p.kv_dtype = "fp16";
  EXPECT_NE(ComputeNamespace(p), base);
  p = {};
  p.block_tokens = 32;
  EXPECT_NE(ComputeNamespace(p), base);
  p = {};
  p.layout_version = 2;
  EXPECT_NE(ComputeNamespace(p), base);
  p = {};
  p.tenant_salt = "x";
  EXPECT_NE(ComputeNamespace(p), base);
}

TEST(BlockKeyTest, PrefixSharingAndChaining) {
  std::vector<TokenId> a(48, 5), b(48, 5);
  b[40] = 6;  // differs in the third block only
  auto ka = ComputeBlockKeys(DefaultNs(), a, 16);
  auto kb = ComputeBlockKeys(DefaultNs(), b, 16);
  EXPECT_EQ(ka[0], kb[0]);
  EXPECT_EQ(ka[1], kb[1]);
  EXPECT_NE(ka[2], kb[2]);
  EXPECT_EQ(ka[1], ChainBlockKey(ka[0], absl::MakeConstSpan(a).subspan(16, 16)));
  EXPECT_TRUE(ComputeBlockKeys(DefaultNs(), a, 0).empty());
}

TEST(BlockKeyTest, HexRoundTripAndErrors) {
  const BlockKey k = DefaultNs();
  auto back = KeyFromHex(KeyToHex(k));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, k);
  EXPECT_EQ(KeyFromHex("abc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyFromHex(std::string(64, 'g')).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyFromBytes("short", "key").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChecksumTest, Xxh3KnownValues) {
  // xxh3_64 of the empty input with seed 0 (from the xxHash reference).
  EXPECT_EQ(BlockChecksum("", 0), 0x2D06800538D394C2ull);
  std::string a(1000, 'a'), b = a;
  b[999] = 'b';
  EXPECT_NE(BlockChecksum(a.data(), a.size()), BlockChecksum(b.data(), b.size()));
}

TEST(ChecksumTest, CopyingChecksumsMatchOneShot) {
  for (size_t size : {0ul, 1ul, 4096ul, 65536ul, 65537ul, (2ul << 20) + 3}) {
    std::vector<uint8_t> src(size), dst(size, 0);
    for (size_t i = 0; i < size; ++i) src[i] = static_cast<uint8_t>(i * 131 + 7);
    EXPECT_EQ(CopyAndChecksum(dst.data(), src.data(), size), BlockChecksum(src.data(), size))
        << size;
    EXPECT_EQ(src, dst);
    std::vector<uint8_t> streamed(size + 7, 0);  // an unaligned destination
    EXPECT_EQ(ChecksumAndStreamCopy(streamed.data() + 7, src.data(), size),
              BlockChecksum(src.data(), size));
    EXPECT_TRUE(std::equal(src.begin(), src.end(), streamed.begin() + 7));  // src may be null
  }
}

}  // namespace
}  // namespace kvtier
