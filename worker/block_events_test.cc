// BlockEvents (worker/block_events.h): full reports for a new router, a restarted worker or a
// log that no longer reaches back; net changes otherwise; the BlockCache reports to it.
#include "worker/block_events.h"

#include <algorithm>
#include <vector>

#include "engine/page_allocator.h"
#include "gtest/gtest.h"
#include "kvtier/v1/worker.pb.h"
#include "worker/block_cache.h"

namespace kvtier::worker {
namespace {

BlockKey Key(uint8_t i) {
  BlockKey k{};
  k[0] = i;
  k[8] = 0xEE;  // beyond the fingerprint
  return k;
}

std::vector<uint64_t> Sorted(const google::protobuf::RepeatedField<uint64_t>& f) {
  std::vector<uint64_t> v(f.begin(), f.end());
  std::sort(v.begin(), v.end());
  return v;
}

TEST(BlockEventsTest, FingerprintIsTheKeysFirstEightBytes) {
  BlockKey k{};
  for (int i = 0; i < 32; ++i) k[i] = static_cast<uint8_t>(i + 1);
  EXPECT_EQ(KeyFingerprint(k), 0x0807060504030201u);
}

TEST(BlockEventsTest, FullThenNetChanges) {
  BlockEvents ev;
  ev.Stored(Key(1));
  ev.Stored(Key(2));
  v1::BlockReport full;
  ev.Report(/*epoch=*/0, /*since=*/0, &full);  // a new router
  EXPECT_TRUE(full.full());
  EXPECT_EQ(full.epoch(), ev.epoch());
  EXPECT_EQ(full.seq(), 2u);
  EXPECT_EQ(Sorted(full.stored()), (std::vector<uint64_t>{1, 2}));

  ev.Removed(Key(1));
  ev.Stored(Key(3));
  ev.Stored(Key(1));  // back again: net, it is held
  ev.Removed(Key(2));
  ev.Removed(Key(9));  // never held: no change
  v1::BlockReport delta;
  ev.Report(ev.epoch(), full.seq(), &delta);
  EXPECT_FALSE(delta.full());
  EXPECT_EQ(delta.seq(), 6u);
  EXPECT_EQ(Sorted(delta.stored()), (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(Sorted(delta.removed()), (std::vector<uint64_t>{2}));

  v1::BlockReport none;
  ev.Report(ev.epoch(), delta.seq(), &none);
  EXPECT_FALSE(none.full());
  EXPECT_EQ(none.stored_size() + none.removed_size(), 0);
  EXPECT_EQ(ev.held(), 2u);
}

TEST(BlockEventsTest, AnotherEpochOrALostLogGetsTheWholeSet) {
  BlockEvents ev;
  ev.Stored(Key(1));
  v1::BlockReport r;
  ev.Report(ev.epoch() + 2, 1, &r);  // a report of an earlier process
  EXPECT_TRUE(r.full());
  r.Clear();
  ev.Report(ev.epoch(), 5, &r);  // from the future
  EXPECT_TRUE(r.full());
  for (size_t i = 0; i < BlockEvents::kMaxLog; ++i) {
    ev.Removed(Key(1));
    ev.Stored(Key(1));
  }
  r.Clear();
  ev.Report(ev.epoch(), 1, &r);  // older than the log reaches
  EXPECT_TRUE(r.full());
  EXPECT_EQ(Sorted(r.stored()), (std::vector<uint64_t>{1}));
}

TEST(BlockEventsTest, TheBlockCacheReportsInsertsAndEvictions) {
  engine::PageAllocator allocator(4);
  BlockEvents ev;
  BlockCache cache(&allocator, &ev);
  std::vector<int32_t> pages = *cache.AllocatePages(2);
  ASSERT_TRUE(cache.Insert(Key(1), pages[0]));
  ASSERT_TRUE(cache.Insert(Key(2), pages[1]));
  EXPECT_EQ(ev.held(), 2u);
  cache.Release(pages);
  cache.EvictAll();
  EXPECT_EQ(ev.held(), 0u);
  v1::BlockReport r;
  ev.Report(ev.epoch(), 2, &r);
  EXPECT_EQ(Sorted(r.removed()), (std::vector<uint64_t>{1, 2}));
}

}  // namespace
}  // namespace kvtier::worker
