// The store client's fan-out over real kvtier-store processes (docs/store-protocol.md,
// "Fan-out"): the nodes of one Lookup, Get or Put are called in parallel, so nodes that stop
// answering (SIGSTOP) cost one deadline per call, not one per node, and still only misses.
#include <signal.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/synthetic_block.h"
#include "gtest/gtest.h"
#include "kvtier/store_client.h"
#include "tests/test_keys.h"
#include "tests/test_util.h"

namespace kvtier {
namespace {

using testing::SyntheticBlocks;
using testing::TestKeys;
using testing::TestNamespace;

constexpr size_t kBlock = 64 * 1024;
constexpr absl::Duration kDeadline = absl::Milliseconds(1500);
// One deadline, and 60% more for a loaded machine; two stalled nodes called one after the
// other take at least 2 x kDeadline.
constexpr absl::Duration kBound = absl::Milliseconds(2400);

TEST(StoreFanoutTest, TwoStalledNodesOfThreeCostOneDeadlineNotTwo) {
  const std::string dir = testing::MakeTempDir("store_fanout");
  std::vector<StoreProcess> stores;
  std::vector<std::string> addresses;
  for (const char* name : {"a", "b", "c"}) {
    StoreProcessOptions so;
    so.name = name;
    so.metrics = false;
    so.stop_grace = absl::Seconds(2);
    absl::StatusOr<StoreProcess> s = StoreProcess::Start(dir, so);
    ASSERT_TRUE(s.ok()) << s.status();
    addresses.push_back(s->address());
    stores.push_back(std::move(*s));
  }
  // Whatever happens below, the stopped stores go on (and are then stopped for good).
  absl::Cleanup resume = [&] {
    for (StoreProcess& s : stores) kill(s.process().pid(), SIGCONT);
  };

  StoreClientOptions o;
  o.stores = addresses;
  o.tls.plaintext = true;  // the test stores serve plain text
  o.rpc_timeout = kDeadline;
  o.transfer_timeout = kDeadline;
  o.retry_after = absl::Milliseconds(50);
  absl::StatusOr<std::unique_ptr<StoreClient>> client = StoreClient::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();

  const std::vector<BlockKey> keys = TestKeys(120, 48);
  SyntheticBlocks blocks(keys, kBlock);
  absl::StatusOr<PutResult> put = (*client)->Put(
      TestNamespace(), keys, ChainParents(TestNamespace(), keys), blocks.src, kBlock);
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_EQ(put->stored, keys.size());

  // Where each key lives: a client of one store at a time.
  std::vector<int> node_of(keys.size(), -1);
  for (int n = 0; n < 3; ++n) {
    StoreClientOptions one = o;
    one.stores = {addresses[n]};
    auto probe = StoreClient::Create(one);
    ASSERT_TRUE(probe.ok()) << probe.status();
    for (size_t i = 0; i < keys.size(); ++i) {
      if (*(*probe)->Lookup(TestNamespace(), {keys[i]}) == 1) node_of[i] = n;
    }
  }
  size_t first_stalled = keys.size(), on_a = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_NE(node_of[i], -1) << "key " << i << " is on no store";
    if (node_of[i] != 0 && first_stalled == keys.size()) first_stalled = i;
    if (node_of[i] == 0) ++on_a;
  }
  ASSERT_GT(on_a, 0u);
  ASSERT_LT(first_stalled, keys.size());

  // b and c stop answering; a keeps serving.
  for (int n : {1, 2}) ASSERT_EQ(kill(stores[n].process().pid(), SIGSTOP), 0);

  blocks.Clear();
  absl::Time t0 = absl::Now();
  absl::StatusOr<size_t> got = (*client)->Get(TestNamespace(), keys, blocks.dst, kBlock);
  absl::Duration took = absl::Now() - t0;
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, first_stalled);
  EXPECT_LT(took, kBound) << "Get waited for the stalled nodes one after the other";
  for (size_t i = 0; i < *got; ++i) {
    EXPECT_TRUE(IsSyntheticBlock(keys[i], blocks.data[i].data(), kBlock)) << i;
  }

  absl::SleepFor(absl::Milliseconds(100));  // past retry_after: the stalled nodes are tried
  t0 = absl::Now();
  absl::StatusOr<size_t> seen = (*client)->Lookup(TestNamespace(), keys);
  took = absl::Now() - t0;
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(*seen, first_stalled);
  EXPECT_LT(took, kBound) << "Lookup waited for the stalled nodes one after the other";

  absl::SleepFor(absl::Milliseconds(100));
  const std::vector<BlockKey> more = TestKeys(121, 48);
  SyntheticBlocks more_blocks(more, kBlock);
  t0 = absl::Now();
  put = (*client)->Put(TestNamespace(), more, ChainParents(TestNamespace(), more), more_blocks.src,
                       kBlock);
  took = absl::Now() - t0;
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_GT(put->stored, 0u);  // a's share
  EXPECT_EQ(put->stored + put->skipped + put->present, more.size());
  EXPECT_LT(took, kBound) << "Put waited for the stalled nodes one after the other";

  std::move(resume).Invoke();
  stores.clear();
  testing::RemoveDirOrPrintLogs(dir, ::testing::Test::HasFailure(), {"a.log", "b.log", "c.log"});
}

}  // namespace
}  // namespace kvtier
