#include "router/worker_pool.h"

#include <numeric>
#include <optional>
#include <vector>

#include "gtest/gtest.h"
#include "router/fake_worker_client.h"

namespace kvtier::router {
namespace {

constexpr uint32_t kBlock = 4;

NamespaceId Namespace(uint8_t fingerprint) {
  NamespaceParams p;
  p.model_fingerprint[0] = fingerprint;
  p.block_tokens = kBlock;
  return ComputeNamespace(p);
}

std::vector<TokenId> Tokens(size_t n, TokenId first) {
  std::vector<TokenId> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

class WorkerPoolTest : public ::testing::Test {
 protected:
  WorkerPoolTest() : fleet_(RouterOptions(), 2, 2, Namespace(1), kBlock, 128, &metrics_) {
    pool().Refresh();
  }

  WorkerPool& pool() { return *fleet_.pool; }

  // The decode worker AcquireDecode picks for `prompt` (released at once), and its match.
  std::pair<int, size_t> Pick(const std::vector<TokenId>& prompt) {
    PromptKeys keys(prompt);
    std::optional<WorkerPool::Lease> lease = pool().AcquireDecode(keys, {});
    if (!lease.has_value()) return {-1, 0};
    return {lease->index(), lease->matched_tokens()};
  }

  void Remember(int worker, const std::vector<TokenId>& prompt,
                const std::vector<TokenId>& generated = {}) {
    PromptKeys keys(prompt);
    pool().Remember(worker, keys, generated);
  }

  double Gauge(const char* name, const std::string& worker, const char* role) {
    return metrics_.AddGauge(name, "", {{"worker", worker}, {"role", role}})->Value();
  }

  MetricsRegistry metrics_;
  FakeFleet fleet_;
};

TEST_F(WorkerPoolTest, PrefersTheLongestRememberedPrefixThenTheFewestInFlight) {
  const std::vector<TokenId> prompt = Tokens(20, 100);  // 5 blocks
  // Nothing remembered: the first worker, then the one with fewer requests in flight.
  PromptKeys keys(prompt);
  std::optional<WorkerPool::Lease> first = pool().AcquireDecode(keys, {});
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->index(), 0);
  EXPECT_EQ(first->matched_tokens(), 0u);
  EXPECT_EQ(Gauge("kvtier_router_worker_in_flight", "decode-0", "decode"), 1);
  std::optional<WorkerPool::Lease> second = pool().AcquireDecode(keys, {});
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->index(), 1);
  first.reset();
  second.reset();
  EXPECT_EQ(Gauge("kvtier_router_worker_in_flight", "decode-0", "decode"), 0);

  // Worker 1 holds the prompt: it wins even with more requests in flight.
  Remember(1, prompt);
  std::optional<WorkerPool::Lease> busy = pool().AcquireDecode(keys, {});
  ASSERT_TRUE(busy.has_value());
  EXPECT_EQ(busy->index(), 1);
  EXPECT_EQ(busy->matched_tokens(), 20u);
  EXPECT_EQ(Pick(prompt), std::make_pair(1, size_t{20}));
  // Two blocks held do not outweigh one request in flight (placement_load_weight 2): a tie,
  // which the idle worker takes.
  std::vector<TokenId> other = Tokens(10, 100);
  other.resize(20, 7);
  EXPECT_EQ(Pick(other).first, 0);
  busy.reset();
  // Idle again: a prompt sharing two blocks and a half.
  EXPECT_EQ(Pick(other), std::make_pair(1, size_t{8}));
  // A prompt worker 1 does not hold goes to the idle worker 0.
  EXPECT_EQ(Pick(Tokens(20, 900)), std::make_pair(0, size_t{0}));
  // Excluded workers are not picked.
  std::optional<WorkerPool::Lease> excluded = pool().AcquireDecode(keys, {1});
  ASSERT_TRUE(excluded.has_value());
  EXPECT_EQ(excluded->index(), 0);
}

// Facts first (docs/serving.md, "Placement"): the blocks a decode worker reports holding place
// a prompt there without the router having sent it; a report that no longer lists them, and
// forgets what the router remembered before it was asked, moves the prompt back to the tie.
TEST_F(WorkerPoolTest, PlacesByTheBlocksAWorkerReports) {
  const std::vector<TokenId> prompt = Tokens(20, 100);  // 5 blocks
  const std::vector<BlockKey> keys = ComputeBlockKeys(Namespace(1), prompt, kBlock);
  v1::WorkerInfo info = WorkerInfoFor(WorkerRole::kDecode, Namespace(1), kBlock, 128);
  info.mutable_blocks()->set_epoch(7);
  info.mutable_blocks()->set_full(true);
  for (size_t i = 0; i < 3; ++i) info.mutable_blocks()->add_stored(KeyFingerprint(keys[i]));
  fleet_.decode[1]->set_info(info);
  pool().Refresh();
  EXPECT_EQ(Pick(prompt), std::make_pair(1, size_t{12}));  // the 3 leading blocks reported

  // Remembered after a request there, then a report asked for later without them: gone.
  Remember(1, prompt);
  EXPECT_EQ(Pick(prompt), std::make_pair(1, size_t{20}));
  absl::SleepFor(absl::Milliseconds(2));
  info.mutable_blocks()->clear_stored();
  fleet_.decode[1]->set_info(info);
  pool().Refresh();
  EXPECT_EQ(Pick(prompt), std::make_pair(0, size_t{0}));
}

TEST_F(WorkerPoolTest, RemembersThePromptWithTheGeneratedTokens) {
  const std::vector<TokenId> prompt = Tokens(6, 100);
  const std::vector<TokenId> generated = Tokens(11, 500);
  Remember(1, prompt, generated);
  // The next turn: the conversation so far plus a new message. 17 tokens = 4 full blocks held.
  std::vector<TokenId> next = prompt;
  next.insert(next.end(), generated.begin(), generated.end());
  const std::vector<TokenId> more = Tokens(9, 800);
  next.insert(next.end(), more.begin(), more.end());
  EXPECT_EQ(Pick(next), std::make_pair(1, size_t{16}));
}

TEST_F(WorkerPoolTest, AWorkerThatStopsAnsweringIsMarkedDownSkippedAndForgotten) {
  const std::vector<TokenId> prompt = Tokens(20, 100);
  Remember(0, prompt);
  ASSERT_EQ(Pick(prompt), std::make_pair(0, size_t{20}));
  EXPECT_EQ(pool().DecodeWorkersUp(), 2);

  fleet_.decode[0]->set_up(false);
  pool().Refresh();
  EXPECT_EQ(pool().DecodeWorkersUp(), 1);
  EXPECT_EQ(Gauge("kvtier_router_worker_up", "decode-0", "decode"), 0);
  EXPECT_EQ(Gauge("kvtier_router_worker_up", "decode-1", "decode"), 1);
  EXPECT_EQ(Pick(prompt), std::make_pair(1, size_t{0}));

  fleet_.decode[1]->set_up(false);
  pool().Refresh();
  EXPECT_EQ(pool().DecodeWorkersUp(), 0);
  EXPECT_EQ(Pick(prompt).first, -1);
  EXPECT_EQ(pool().MaxContext(), 0);

  // Back up: what it held before is forgotten (it may have restarted).
  fleet_.decode[0]->set_up(true);
  pool().Refresh();
  EXPECT_EQ(pool().DecodeWorkersUp(), 1);
  EXPECT_EQ(Pick(prompt), std::make_pair(0, size_t{0}));
}

TEST_F(WorkerPoolTest, MarkDownLastsUntilTheNextRefresh) {
  const std::vector<TokenId> prompt = Tokens(20, 100);
  Remember(0, prompt);
  pool().MarkDown(0);
  EXPECT_EQ(pool().DecodeWorkersUp(), 1);
  EXPECT_EQ(Gauge("kvtier_router_worker_up", "decode-0", "decode"), 0);
  EXPECT_EQ(Pick(prompt).first, 1);
  pool().Refresh();
  EXPECT_EQ(pool().DecodeWorkersUp(), 2);
  EXPECT_EQ(Pick(prompt), std::make_pair(0, size_t{0}));
}

TEST_F(WorkerPoolTest, ANamespaceOrBlockSizeChangeForgetsTheKeys) {
  const std::vector<TokenId> prompt = Tokens(20, 100);
  auto answer = [&](uint8_t ns, uint32_t block_tokens) {
    fleet_.decode[1]->set_info(
        WorkerInfoFor(WorkerRole::kDecode, Namespace(ns), block_tokens, 128));
    pool().Refresh();
  };
  Remember(1, prompt);
  pool().Refresh();  // the same answer: the keys stay
  ASSERT_EQ(Pick(prompt), std::make_pair(1, size_t{20}));

  // Another namespace and back: what was sent there before is forgotten.
  answer(2, kBlock);
  EXPECT_EQ(Pick(prompt), std::make_pair(0, size_t{0}));
  answer(1, kBlock);
  EXPECT_EQ(Pick(prompt), std::make_pair(0, size_t{0}));

  // Keys remembered after the change are matched.
  Remember(1, prompt);
  EXPECT_EQ(Pick(prompt), std::make_pair(1, size_t{20}));

  // Another block size and back.
  answer(1, 2 * kBlock);
  EXPECT_EQ(Pick(prompt), std::make_pair(0, size_t{0}));
  answer(1, kBlock);
  EXPECT_EQ(Pick(prompt), std::make_pair(0, size_t{0}));
}

TEST_F(WorkerPoolTest, TheContextIsTheSmallestOfTheLiveDecodeWorkers) {
  EXPECT_EQ(pool().MaxContext(), 128);
  fleet_.decode[1]->set_info(WorkerInfoFor(WorkerRole::kDecode, Namespace(1), kBlock, 64));
  pool().Refresh();
  EXPECT_EQ(pool().MaxContext(), 64);
  fleet_.decode[1]->set_up(false);
  pool().Refresh();
  EXPECT_EQ(pool().MaxContext(), 128);
}

TEST_F(WorkerPoolTest, PrefillGoesToTheLeastLoadedLiveWorker) {
  std::optional<WorkerPool::Lease> a = pool().AcquirePrefill();
  std::optional<WorkerPool::Lease> b = pool().AcquirePrefill();
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_EQ(a->index(), 0);
  EXPECT_EQ(b->index(), 1);
  EXPECT_EQ(&b->client(), fleet_.prefill[1]);
  EXPECT_EQ(Gauge("kvtier_router_worker_in_flight", "prefill-1", "prefill"), 1);
  a.reset();
  std::optional<WorkerPool::Lease> c = pool().AcquirePrefill();
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->index(), 0);
  c.reset();
  b.reset();

  fleet_.prefill[0]->set_up(false);
  pool().Refresh();
  std::optional<WorkerPool::Lease> d = pool().AcquirePrefill();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->index(), 1);
  d.reset();
  fleet_.prefill[1]->set_up(false);
  pool().Refresh();
  EXPECT_FALSE(pool().AcquirePrefill().has_value());
}

TEST_F(WorkerPoolTest, TheRefreshThreadNoticesAWorkerGoingDownAndStopEndsIt) {
  pool().Start();
  fleet_.decode[0]->set_up(false);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (pool().DecodeWorkersUp() != 1 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(pool().DecodeWorkersUp(), 1);
  pool().Stop();
  EXPECT_TRUE(pool().stopping());
  // Stopped: the workers' calls are cancelled, and a refresh no longer changes the states.
  EXPECT_EQ(fleet_.decode[1]->GetWorkerInfo({}, absl::Seconds(1)).status().code(),
            absl::StatusCode::kCancelled);
  pool().Refresh();
  EXPECT_EQ(pool().DecodeWorkersUp(), 1);
}

}  // namespace
}  // namespace kvtier::router
