#include "worker/block_cache.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace kvtier::worker {
namespace {

BlockKey Key(int i) {
  BlockKey k{};
  k[0] = static_cast<uint8_t>(i);
  k[1] = static_cast<uint8_t>(i >> 8);
  return k;
}

std::vector<BlockKey> Keys(int from, int to) {
  std::vector<BlockKey> out;
  for (int i = from; i < to; ++i) out.push_back(Key(i));
  return out;
}

// Allocates n pages and caches them under keys 0..n-1; returns the pages (still referenced).
std::vector<int32_t> Fill(BlockCache& cache, int n, int first_key = 0) {
  auto pages = cache.AllocatePages(n);
  EXPECT_TRUE(pages.ok()) << pages.status();
  for (int i = 0; i < n; ++i) EXPECT_TRUE(cache.Insert(Key(first_key + i), (*pages)[i]));
  return *pages;
}

TEST(BlockCacheTest, AcquireFindsTheLongestPrefixAndCountsReferences) {
  engine::PageAllocator alloc(8);
  BlockCache cache(&alloc);
  std::vector<int32_t> pages = Fill(cache, 3);
  EXPECT_EQ(cache.cached_pages(), 3);
  EXPECT_EQ(cache.evictable_pages(), 0);

  // Keys 0,1,2 then a miss, then key 4 (not reached: prefixes only).
  std::vector<BlockKey> keys = Keys(0, 3);
  keys.push_back(Key(99));
  std::vector<int32_t> got = cache.Acquire(keys);
  EXPECT_EQ(got, pages);
  EXPECT_EQ(cache.refs(pages[0]), 2);
  EXPECT_EQ(cache.stats().hit_blocks, 3u);
  // A chain that misses its first key finds nothing.
  std::vector<BlockKey> other = {Key(99), Key(1)};
  EXPECT_TRUE(cache.Acquire(other).empty());

  cache.Release(got);    // the second user
  cache.Release(pages);  // the inserter
  EXPECT_EQ(cache.refs(pages[0]), 0);
  EXPECT_EQ(cache.evictable_pages(), 3);
  EXPECT_EQ(cache.cached_pages(), 3);
  EXPECT_EQ(alloc.free_pages(), 5);
  EXPECT_EQ(cache.available_pages(), 8);

  // Still cached with no user: a later request finds them.
  got = cache.Acquire(Keys(0, 3));
  EXPECT_EQ(got, pages);
  EXPECT_EQ(cache.evictable_pages(), 0);
  cache.Release(got);
}

TEST(BlockCacheTest, DuplicateInsertKeepsThePagePrivate) {
  engine::PageAllocator alloc(4);
  BlockCache cache(&alloc);
  std::vector<int32_t> a = Fill(cache, 1);
  auto b = cache.AllocatePages(1);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(cache.Insert(Key(0), (*b)[0]));
  EXPECT_FALSE(cache.IsCached((*b)[0]));
  cache.Release(*b);  // private: freed
  EXPECT_EQ(alloc.free_pages(), 3);
  cache.Release(a);  // cached: stays
  EXPECT_EQ(alloc.free_pages(), 3);
  EXPECT_EQ(cache.evictable_pages(), 1);
}

TEST(BlockCacheTest, EvictsLeastRecentlyReleasedFirstAndOnlyWhenShort) {
  engine::PageAllocator alloc(6);
  BlockCache cache(&alloc);
  std::vector<int32_t> p = Fill(cache, 4);  // keys 0..3
  // Released last block first (as the scheduler does): 3, 2, 1, 0.
  std::vector<int32_t> rev(p.rbegin(), p.rend());
  cache.Release(rev);
  EXPECT_EQ(alloc.free_pages(), 2);

  // Two free pages: no eviction needed.
  auto two = cache.AllocatePages(2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(cache.stats().evictions, 0u);
  // One more: evicts the least recently released, key 3 (the deepest block).
  auto one = cache.AllocatePages(1);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(cache.stats().evictions, 1u);
  EXPECT_EQ((*one)[0], p[3]);
  std::vector<int32_t> got = cache.Acquire(Keys(0, 4));
  EXPECT_EQ(got.size(), 3u);  // keys 0..2 remain
  cache.Release(got);         // released in order 0,1,2: now 0 is the oldest
  auto more = cache.AllocatePages(1);
  ASSERT_TRUE(more.ok());
  EXPECT_EQ((*more)[0], p[0]);
  EXPECT_TRUE(cache.Acquire(Keys(0, 1)).empty());
  cache.Release(*two);
  cache.Release(*one);
  cache.Release(*more);
}

TEST(BlockCacheTest, NeverEvictsReferencedPages) {
  engine::PageAllocator alloc(4);
  BlockCache cache(&alloc);
  std::vector<int32_t> held = Fill(cache, 2);  // referenced
  std::vector<int32_t> idle = Fill(cache, 1, 10);
  cache.Release(idle);
  EXPECT_EQ(cache.available_pages(), 2);  // 1 free + 1 evictable
  auto too_many = cache.AllocatePages(3);
  EXPECT_TRUE(absl::IsResourceExhausted(too_many.status()));
  EXPECT_EQ(cache.stats().evictions, 0u);  // nothing evicted by a failed allocation
  EXPECT_EQ(cache.cached_pages(), 3);
  auto two = cache.AllocatePages(2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(cache.stats().evictions, 1u);
  for (int32_t p : *two) EXPECT_TRUE(std::find(held.begin(), held.end(), p) == held.end());
  EXPECT_EQ(cache.Acquire(Keys(0, 2)), held);
  cache.Release(held);
  cache.Release(held);
  cache.Release(*two);
  cache.EvictAll();
  EXPECT_EQ(alloc.free_pages(), 4);
  EXPECT_EQ(cache.cached_pages(), 0);
}

TEST(BlockCacheTest, EvictedPageCanBeCachedAgainUnderAnotherKey) {
  engine::PageAllocator alloc(1);
  BlockCache cache(&alloc);
  std::vector<int32_t> p = Fill(cache, 1);
  cache.Release(p);
  auto again = cache.AllocatePages(1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0], p[0]);
  EXPECT_TRUE(cache.Insert(Key(7), (*again)[0]));
  EXPECT_TRUE(cache.Acquire(Keys(0, 1)).empty());
  EXPECT_EQ(cache.Acquire(Keys(7, 8)), p);
  cache.Release(p);
  cache.Release(p);
  EXPECT_EQ(cache.evictable_pages(), 1);
}

}  // namespace
}  // namespace kvtier::worker
