#include "router/placement.h"

#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace kvtier::router {
namespace {

BlockKey Key(uint8_t b) {
  BlockKey k{};
  k[0] = b;
  return k;
}

TEST(PlacementTest, LongestPrefixWinsWhenLoadIsEven) {
  std::vector<PlacementCandidate> c = {{1, 0}, {3, 0}, {2, 0}};
  EXPECT_EQ(PickWorker(c, 2), 1);
  // Without a load weight, the longest prefix wins however busy its worker is.
  std::vector<PlacementCandidate> busy = {{1, 0}, {3, 5}, {2, 0}};
  EXPECT_EQ(PickWorker(busy, 0), 1);
}

TEST(PlacementTest, LoadOutweighsAShortPrefix) {
  // 3 held blocks against 2 requests in flight at 2 blocks each: the idle worker wins.
  std::vector<PlacementCandidate> c = {{3, 2}, {0, 0}};
  EXPECT_EQ(PickWorker(c, 2), 1);
  // 40 held blocks (a long conversation) are worth waiting behind 2 requests.
  std::vector<PlacementCandidate> longer = {{40, 2}, {0, 0}};
  EXPECT_EQ(PickWorker(longer, 2), 0);
}

TEST(PlacementTest, TiesGoToFewestInFlightThenFirst) {
  std::vector<PlacementCandidate> c = {{6, 3}, {2, 1}, {2, 1}, {1, 1}};
  EXPECT_EQ(PickWorker(c, 2), 1);  // scores 0, 0, 0, -1: fewest in flight
  std::vector<PlacementCandidate> none = {{0, 2}, {0, 0}};
  EXPECT_EQ(PickWorker(none, 2), 1);
  EXPECT_EQ(PickWorker({}, 2), -1);
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

std::vector<TokenId> Iota(size_t n, TokenId first) {
  std::vector<TokenId> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(PromptKeysTest, KeysPerNamespaceAreTheBlockKeysComputedOnce) {
  const NamespaceId a = Key(1);
  const NamespaceId b = Key(2);
  const std::vector<TokenId> prompt = Iota(10, 100);
  PromptKeys keys(prompt);
  const std::vector<BlockKey>& ka = keys.Get(a, 4);
  EXPECT_EQ(ka, ComputeBlockKeys(a, prompt, 4));
  EXPECT_EQ(ka.size(), 2u);
  EXPECT_EQ(keys.Get(b, 4), ComputeBlockKeys(b, prompt, 4));
  EXPECT_EQ(keys.Get(a, 5), ComputeBlockKeys(a, prompt, 5));
  EXPECT_NE(keys.Get(a, 4), keys.Get(b, 4));
  EXPECT_EQ(&keys.Get(a, 4), &ka);  // the same vector: not computed again
}

TEST(PromptKeysTest, ExtendContinuesTheChainOverThePartialBlockAndTheGeneratedTokens) {
  const NamespaceId ns = Key(7);
  const std::vector<TokenId> prompt = Iota(10, 100);  // two full blocks of 4, two tokens over
  const std::vector<TokenId> generated = Iota(9, 500);
  std::vector<TokenId> all = prompt;
  all.insert(all.end(), generated.begin(), generated.end());  // 19 tokens: four full blocks
  PromptKeys keys(prompt);
  const std::vector<BlockKey> extended = keys.Extend(ns, 4, generated);
  EXPECT_EQ(extended, ComputeBlockKeys(ns, all, 4));
  EXPECT_EQ(extended.size(), 4u);
  EXPECT_TRUE(keys.Extend(ns, 16, Iota(5, 1)).empty());  // 15 tokens: no full block
  // A prompt with no full block of its own.
  const std::vector<TokenId> short_prompt = Iota(3, 100);
  PromptKeys short_keys(short_prompt);
  std::vector<TokenId> short_all = short_prompt;
  short_all.insert(short_all.end(), generated.begin(), generated.end());
  EXPECT_EQ(short_keys.Extend(ns, 4, generated), ComputeBlockKeys(ns, short_all, 4));
}

}  // namespace
}  // namespace kvtier::router
