// kvtier-store processes joining and leaving a real etcd (docs/membership.md): registered once
// serving with their address, metrics address and pool; gone at once after SIGTERM, one ttl
// after kill -9; a bad etcd endpoint refused at start.
#include <csignal>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "common/synthetic_block.h"
#include "gtest/gtest.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "membership/etcd_process.h"
#include "membership/membership.h"
#include "tests/test_keys.h"
#include "tests/test_util.h"

namespace kvtier {
namespace {

using membership::Member;

class MembershipIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/membership_integration_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    absl::StatusOr<membership::EtcdProcess> etcd = membership::EtcdProcess::Start({.dir = dir_});
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::make_unique<membership::EtcdProcess>(*std::move(etcd));
    watcher_ = membership::MemberWatcher::Start(
        *membership::EtcdClient::Create({.endpoints = {etcd_->endpoint()}}), "/kvtier", "store",
        nullptr, nullptr);
  }
  void TearDown() override {
    watcher_.reset();
    etcd_.reset();
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  StoreProcessOptions Store(const std::string& name, int ttl_ms) {
    StoreProcessOptions o;
    o.name = name;
    o.pool_bytes = "16MiB";
    o.slot_bytes = "64KiB";
    o.extra_args = {"--membership-etcd=" + etcd_->endpoint(),
                    absl::StrCat("--membership-ttl-ms=", ttl_ms)};
    return o;
  }
  bool WaitMembers(size_t n, absl::Duration timeout) {
    return watcher_->WaitUntil([n](const std::vector<Member>& m) { return m.size() == n; },
                               timeout);
  }

  std::string dir_;
  std::unique_ptr<membership::EtcdProcess> etcd_;
  std::unique_ptr<membership::MemberWatcher> watcher_;
};

TEST_F(MembershipIntegrationTest, StoresRegisterAndLeaveAtOnceOnSigterm) {
  absl::StatusOr<StoreProcess> a = StoreProcess::Start(dir_, Store("a", 30000));
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<StoreProcess> b = StoreProcess::Start(dir_, Store("b", 30000));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(WaitMembers(2, absl::Seconds(10)));
  bool found = false;
  for (const Member& m : watcher_->members()) {
    if (m.address != a->address()) continue;
    found = true;
    EXPECT_EQ(m.id, a->address());
    EXPECT_EQ(m.metrics_address, absl::StrCat("127.0.0.1:", a->metrics_port()));
    EXPECT_EQ(m.capacity_bytes, 16 << 20);
    EXPECT_GE(m.load, 0.0);
    EXPECT_LE(m.load, 1.0);
  }
  EXPECT_TRUE(found) << "store a at " << a->address() << " is not registered";
  // A ttl of 30 s, gone within 5: the store revoked its lease on SIGTERM.
  const absl::Time t0 = absl::Now();
  a->process().Terminate(absl::Seconds(20));
  EXPECT_TRUE(WaitMembers(1, absl::Seconds(5)));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  EXPECT_EQ(watcher_->members()[0].address, b->address());
}

TEST_F(MembershipIntegrationTest, AKilledStoreIsGoneAfterItsTtl) {
  absl::StatusOr<StoreProcess> a = StoreProcess::Start(dir_, Store("a", 2000));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(WaitMembers(1, absl::Seconds(10)));
  a->process().Signal(SIGKILL, absl::Seconds(5));
  EXPECT_TRUE(WaitMembers(1, absl::Seconds(1))) << "gone before its ttl";
  EXPECT_TRUE(WaitMembers(0, absl::Seconds(10)));
}

TEST_F(MembershipIntegrationTest, ABadEtcdEndpointIsRefusedAtStart) {
  StoreProcessOptions o = Store("bad", 2000);
  o.extra_args = {"--membership-etcd=127.0.0.1:2379"};  // no scheme
  o.start_timeout = absl::Seconds(10);
  absl::StatusOr<StoreProcess> s = StoreProcess::Start(dir_, o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("etcd endpoint '127.0.0.1:2379'"), std::string::npos)
      << s.status();
}

// A store client's node set changing under it (SetStores, as the membership watch drives it):
// stores joining and leaving cost misses, never errors or wrong bytes.
TEST_F(MembershipIntegrationTest, StoreNodesJoiningAndLeavingCostOnlyMisses) {
  absl::StatusOr<StoreProcess> a = StoreProcess::Start(dir_, Store("a", 30000));
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<StoreProcess> b = StoreProcess::Start(dir_, Store("b", 30000));
  ASSERT_TRUE(b.ok()) << b.status();
  StoreClientOptions co;
  co.stores = {a->address()};
  co.tls.plaintext = true;
  absl::StatusOr<std::unique_ptr<StoreClient>> client = StoreClient::Create(co);
  ASSERT_TRUE(client.ok()) << client.status();
  StoreClient& c = **client;
  constexpr size_t kBytes = 64 << 10;
  const std::vector<BlockKey> keys = testing::TestKeys(7, 32);
  const NamespaceId ns = testing::TestNamespace();
  const std::vector<BlockKey> parents = ChainParents(ns, keys);
  testing::SyntheticBlocks blocks(keys, kBytes);
  const std::vector<const void*>& src = blocks.src;
  // Every block read back is the key's own; returns the prefix length.
  auto get = [&]() -> size_t {
    testing::SyntheticBlocks read(keys, kBytes);
    read.Clear();
    absl::StatusOr<size_t> n = c.Get(ns, keys, read.dst, kBytes);
    EXPECT_TRUE(n.ok()) << n.status();
    if (!n.ok()) return 0;
    for (size_t i = 0; i < *n; ++i) {
      EXPECT_TRUE(IsSyntheticBlock(keys[i], read.data[i].data(), kBytes)) << "block " << i;
    }
    return *n;
  };
  auto lookup = [&] {
    absl::StatusOr<size_t> n = c.Lookup(ns, keys);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : 0;
  };
  const PutResult first = *c.Put(ns, keys, parents, src, kBytes);
  ASSERT_EQ(first.stored, keys.size());
  EXPECT_EQ(first.stored_mapped, first.stored) << "a same-host store's pool is written in place";
  ASSERT_EQ(lookup(), keys.size());

  // B joins: the keys it now owns are misses until written again.
  c.SetStores({a->address(), b->address()});
  const size_t after_join = lookup();
  EXPECT_LT(after_join, keys.size()) << "32 keys over two nodes: some must move to b";
  EXPECT_EQ(get(), after_join);
  PutResult again = *c.Put(ns, keys, parents, src, kBytes);
  EXPECT_GT(again.stored, 0u);
  EXPECT_EQ(again.stored + again.present, keys.size());
  EXPECT_EQ(lookup(), keys.size());
  EXPECT_EQ(get(), keys.size());
  EXPECT_EQ(c.Nodes().size(), 2u);

  // A leaves: its keys are misses; B's still hit.
  c.SetStores({b->address()});
  EXPECT_LT(lookup(), keys.size());
  EXPECT_EQ(get(), lookup());

  // No node at all: misses, and writes skipped, not errors.
  c.SetStores({});
  EXPECT_EQ(lookup(), 0u);
  EXPECT_EQ(get(), 0u);
  EXPECT_EQ(c.Put(ns, keys, parents, src, kBytes)->skipped, keys.size());

  // Both back: every block is where it was, read over new connections to a.
  c.SetStores({b->address(), a->address()});
  EXPECT_EQ(lookup(), keys.size());
  EXPECT_EQ(get(), keys.size());
}

}  // namespace
}  // namespace kvtier
