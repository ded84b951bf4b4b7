#include "router/placement.h"

#include <vector>

#include "gtest/gtest.h"

namespace kvtier::router {
namespace {

BlockKey Key(uint8_t b) {
  BlockKey k{};
  k[0] = b;
  return k;
}

TEST(PlacementTest, LongestPrefixWins) {
  std::vector<PlacementCandidate> c = {{1, 0}, {3, 5}, {2, 0}};
  EXPECT_EQ(PickWorker(c), 1);
}

TEST(PlacementTest, TiesGoToFewestInFlightThenFirst) {
  std::vector<PlacementCandidate> c = {{2, 3}, {2, 1}, {2, 1}, {1, 0}};
  EXPECT_EQ(PickWorker(c), 1);
  std::vector<PlacementCandidate> none = {{0, 2}, {0, 0}};
  EXPECT_EQ(PickWorker(none), 1);
  EXPECT_EQ(PickWorker({}), -1);
}

TEST(PlacementTest, MatchIsAPrefix) {
  KeyLru lru(10);
  lru.Touch(Key(1));
  lru.Touch(Key(2));
  lru.Touch(Key(4));
  const std::vector<BlockKey> keys = {Key(1), Key(2), Key(3), Key(4)};
  EXPECT_EQ(lru.MatchPrefix(keys), 2u);
  const std::vector<BlockKey> other = {Key(9), Key(1)};
  EXPECT_EQ(lru.MatchPrefix(other), 0u);
}

TEST(PlacementTest, LruIsBounded) {
  KeyLru lru(3);
  for (uint8_t i = 1; i <= 3; ++i) lru.Touch(Key(i));
  lru.Touch(Key(1));  // refreshes 1: 2 is now the oldest
  lru.Touch(Key(4));
  EXPECT_EQ(lru.size(), 3u);
  EXPECT_TRUE(lru.Contains(Key(1)));
  EXPECT_FALSE(lru.Contains(Key(2)));
  EXPECT_TRUE(lru.Contains(Key(3)));
  EXPECT_TRUE(lru.Contains(Key(4)));
  for (uint8_t i = 10; i < 100; ++i) lru.Touch(Key(i));
  EXPECT_EQ(lru.size(), 3u);
}

}  // namespace
}  // namespace kvtier::router
