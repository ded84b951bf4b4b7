// MappedPrefix, the RAII handle of leased in-place blocks (include/kvtier/store_client.h),
// ChainParents, and the bounds check of every offset a store answers (CheckSlotRange). The
// client over real stores is tested by tests/store_integration_test.cc.
#include "kvtier/store_client.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "cachestore/store_node.h"
#include "common/checksum.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

constexpr size_t kBlockBytes = 1 << 20;  // 1 MiB: 24 blocks are spread over several threads

// `n` blocks of distinct bytes and a MappedPrefix over them whose release counts calls and
// answers `held`.
class MappedPrefixTest : public ::testing::Test {
 protected:
  MappedPrefix Make(size_t n, bool held = true, size_t stored = 0) {
    data_.resize(n);
    std::vector<const uint8_t*> blocks;
    std::vector<uint64_t> sums;
    for (size_t i = 0; i < n; ++i) {
      data_[i].assign(kBlockBytes, static_cast<uint8_t>(i + 1));
      blocks.push_back(data_[i].data());
      sums.push_back(BlockChecksum(data_[i].data(), kBlockBytes));
    }
    return MappedPrefix(std::move(blocks), std::move(sums), std::max(stored, n), kBlockBytes,
                        /*verify_threads=*/4, [this, held] {
                          ++releases_;
                          return held;
                        });
  }

  std::vector<std::vector<uint8_t>> data_;
  int releases_ = 0;
};

TEST_F(MappedPrefixTest, DestructionReleasesTheLeasesOnce) {
  {
    MappedPrefix m = Make(3, /*held=*/true, /*stored=*/5);
    EXPECT_EQ(m.size(), 3u);
    EXPECT_EQ(m.stored(), 5u);
    EXPECT_EQ(m.blocks()[1], data_[1].data());
    EXPECT_EQ(releases_, 0);
  }
  EXPECT_EQ(releases_, 1);
}

TEST_F(MappedPrefixTest, ReleaseReportsAnExpiredLeaseAndEmptiesTheHandle) {
  MappedPrefix m = Make(2, /*held=*/false);
  EXPECT_FALSE(m.Release());
  EXPECT_EQ(releases_, 1);
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.stored(), 0u);
  EXPECT_TRUE(m.Release());  // nothing left to release
  EXPECT_EQ(releases_, 1);
  EXPECT_TRUE(MappedPrefix().Release());
}

TEST_F(MappedPrefixTest, MovesHandTheLeasesOverAndAssignmentReleasesTheOldOnes) {
  MappedPrefix a = Make(2);
  MappedPrefix b(std::move(a));
  EXPECT_EQ(a.size(), 0u);  // moved-from: empty
  EXPECT_EQ(b.size(), 2u);
  a = Make(1);  // `a` held nothing: no release
  EXPECT_EQ(releases_, 0);
  b = std::move(a);  // b's leases go first
  EXPECT_EQ(releases_, 1);
  EXPECT_EQ(b.size(), 1u);
  b = MappedPrefix();
  EXPECT_EQ(releases_, 2);
}

TEST_F(MappedPrefixTest, VerifyCountsTheLeadingBlocksThatMatchTheirChecksums) {
  MappedPrefix m = Make(24);
  EXPECT_EQ(m.Verify(), 24u);
  data_[17][kBlockBytes / 2] ^= 1;  // the store's slot changed under the lease
  data_[20][0] ^= 1;
  EXPECT_EQ(m.Verify(), 17u);
}

// A worker maps the store's pool and copies to and from `base + offset`: an offset or size the
// store answers is used only inside one slot of the pool GetInfo described.
TEST(CheckSlotRangeTest, OnlyRangesInsideOneSlotOfThePoolPass) {
  v1::GetInfoResponse info;
  info.set_slot_bytes(64 << 10);
  info.set_slot_count(8);
  info.set_pool_bytes(512 << 10);
  const uint64_t slot = 64 << 10;
  EXPECT_TRUE(CheckSlotRange(info, 0, slot).ok());
  EXPECT_TRUE(CheckSlotRange(info, 7 * slot, slot).ok());
  EXPECT_TRUE(CheckSlotRange(info, 3 * slot, 100).ok());        // a smaller block in its slot
  EXPECT_FALSE(CheckSlotRange(info, 8 * slot, slot).ok());      // past the last slot
  EXPECT_FALSE(CheckSlotRange(info, 7 * slot, slot + 1).ok());  // larger than a slot
  EXPECT_FALSE(CheckSlotRange(info, slot / 2, slot).ok());      // across two slots
  EXPECT_FALSE(CheckSlotRange(info, 3 * slot, 0).ok());
  EXPECT_FALSE(CheckSlotRange(info, UINT64_MAX - slot + 1, slot).ok());  // would wrap around
  EXPECT_FALSE(CheckSlotRange(info, uint64_t{1} << 63, slot).ok());
  EXPECT_EQ(CheckSlotRange(info, 9 * slot, slot).code(), absl::StatusCode::kInternal);
  info.set_slot_bytes(0);  // a pool GetInfo did not describe
  EXPECT_FALSE(CheckSlotRange(info, 0, 1).ok());
}

TEST(ChainParentsTest, EachKeysParentIsThePreviousKeyAndTheFirstOnesIsPrev) {
  BlockKey ns{}, a{}, b{}, c{};
  a[0] = 1;
  b[0] = 2;
  c[0] = 3;
  EXPECT_EQ(ChainParents(ns, {a, b, c}), (std::vector<BlockKey>{ns, a, b}));
  EXPECT_EQ(ChainParents(c, {a}), (std::vector<BlockKey>{c}));
  EXPECT_TRUE(ChainParents(ns, {}).empty());
}

}  // namespace
}  // namespace kvtier
