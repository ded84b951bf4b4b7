// Registration and MemberWatcher against a real etcd (EtcdProcess), including etcd going away
// and coming back on the same port.
#include "membership/membership.h"

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "membership/etcd_process.h"

namespace kvtier::membership {
namespace {

Member StoreMember(const std::string& id, double load = 0) {
  return {.role = "store",
          .id = id,
          .address = "10.0.0.1:7000",
          .data_address = "10.0.0.1",
          .metrics_address = "10.0.0.1:9100",
          .capacity_bytes = 1 << 30,
          .load = load};
}

TEST(MemberCodecTest, RoundTripsAndRefusesBadNames) {
  const Member m = StoreMember("node-1:7000");
  absl::StatusOr<Member> back = DecodeMember(EncodeMember(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(MemberKey("/kvtier", m), "/kvtier/members/store/node-1:7000");
  for (const char* id : {"", "a/b", "a b", "\xc3\xa9"}) {
    Member bad = m;
    bad.id = id;
    EXPECT_EQ(DecodeMember(EncodeMember(bad)).status().code(), absl::StatusCode::kInvalidArgument)
        << id;
  }
  EXPECT_FALSE(DecodeMember("{").ok());
  EXPECT_FALSE(DecodeMember("[]").ok());
  EXPECT_FALSE(DecodeMember(R"({"role":"store","id":"x","address":"a:1","load":"high"})").ok());
}

class MembershipTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.dir = ::testing::TempDir() + "/membership_test_" +
                   ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(options_.dir);
    // Fixed ports, so that a restarted etcd answers where the clients look.
    for (int* port : {&options_.client_port, &options_.peer_port}) {
      absl::StatusOr<int> p = FreeTcpPort();
      ASSERT_TRUE(p.ok());
      *port = *p;
    }
    StartEtcd();
  }
  void TearDown() override {
    etcd_.reset();
    if (!HasFailure()) std::filesystem::remove_all(options_.dir);
  }
  void StartEtcd() {
    absl::StatusOr<EtcdProcess> etcd = EtcdProcess::Start(options_);
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::make_unique<EtcdProcess>(*std::move(etcd));
  }
  std::unique_ptr<EtcdClient> Client() {
    return *EtcdClient::Create(
        {.endpoints = {absl::StrCat("http://127.0.0.1:", options_.client_port)},
         .timeout = absl::Seconds(1)});
  }
  static bool Has(const std::vector<Member>& set, const Member& m) {
    return std::find(set.begin(), set.end(), m) != set.end();
  }

  EtcdProcessOptions options_;
  std::unique_ptr<EtcdProcess> etcd_;
};

TEST_F(MembershipTest, MembersAppearUpdateAndLeaveAtOnceWhenStopped) {
  std::vector<size_t> published;
  absl::Mutex mu;
  std::unique_ptr<MemberWatcher> w = MemberWatcher::Start(
      Client(), "/kvtier", "store",
      [&](const std::vector<Member>& set) {
        absl::MutexLock l(&mu);
        published.push_back(set.size());
      },
      nullptr);
  absl::StatusOr<std::unique_ptr<Registration>> a =
      Registration::Start(Client(), "/kvtier", StoreMember("a"), absl::Seconds(3));
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<std::unique_ptr<Registration>> b =
      Registration::Start(Client(), "/kvtier", StoreMember("b"), absl::Seconds(3));
  ASSERT_TRUE(b.ok());
  // Another role under the same prefix is not this watcher's.
  Member decode = StoreMember("d");
  decode.role = "decode";
  absl::StatusOr<std::unique_ptr<Registration>> d =
      Registration::Start(Client(), "/kvtier", decode, absl::Seconds(3));
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(w->WaitUntil([](auto& m) { return m.size() == 2; }, absl::Seconds(10)));
  EXPECT_TRUE(w->connected());
  EXPECT_EQ(w->members()[0].id, "a");
  EXPECT_EQ(w->members()[1], StoreMember("b"));

  // A new load is written at the next renewal (ttl / 3).
  (*a)->Update(StoreMember("a", 0.75));
  EXPECT_TRUE(
      w->WaitUntil([](auto& m) { return Has(m, StoreMember("a", 0.75)); }, absl::Seconds(5)));

  // Stopping revokes the lease: gone well before the ttl.
  const absl::Time t0 = absl::Now();
  b->reset();
  EXPECT_TRUE(w->WaitUntil([](auto& m) { return m.size() == 1; }, absl::Seconds(2)));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  absl::MutexLock l(&mu);
  ASSERT_FALSE(published.empty());
  EXPECT_EQ(published.back(), 1u);
}

TEST_F(MembershipTest, AMemberThatStopsRenewingExpiresAfterItsTtl) {
  std::unique_ptr<MemberWatcher> w =
      MemberWatcher::Start(Client(), "/kvtier", "store", nullptr, nullptr);
  // A member whose process died: its key, under a lease nobody renews.
  std::unique_ptr<EtcdClient> c = Client();
  absl::StatusOr<int64_t> lease = c->GrantLease(absl::Seconds(2));
  ASSERT_TRUE(lease.ok());
  const Member dead = StoreMember("dead");
  ASSERT_TRUE(c->Put(MemberKey("/kvtier", dead), EncodeMember(dead), *lease).ok());
  ASSERT_TRUE(w->WaitUntil([](auto& m) { return m.size() == 1; }, absl::Seconds(5)));
  EXPECT_TRUE(w->WaitUntil([](auto& m) { return m.empty(); }, absl::Seconds(8)));
}

TEST_F(MembershipTest, BadValuesUnderThePrefixAreIgnored) {
  std::unique_ptr<EtcdClient> c = Client();
  ASSERT_TRUE(c->Put("/kvtier/members/store/junk", "{not json").ok());
  ASSERT_TRUE(c->Put("/kvtier/members/store/other-id", EncodeMember(StoreMember("x"))).ok());
  ASSERT_TRUE(c->Put("/kvtier/members/store/good", EncodeMember(StoreMember("good"))).ok());
  std::unique_ptr<MemberWatcher> w =
      MemberWatcher::Start(Client(), "/kvtier", "store", nullptr, nullptr);
  ASSERT_TRUE(w->WaitUntil([](auto& m) { return !m.empty(); }, absl::Seconds(5)));
  EXPECT_EQ(w->members(), std::vector<Member>{StoreMember("good")});
  // A member overwritten with garbage is dropped.
  ASSERT_TRUE(c->Put("/kvtier/members/store/good", "garbage").ok());
  EXPECT_TRUE(w->WaitUntil([](auto& m) { return m.empty(); }, absl::Seconds(5)));
}

TEST_F(MembershipTest, AnEtcdOutageKeepsTheLastSetAndEverythingRecoversWhenItReturns) {
  MetricsRegistry metrics;
  std::unique_ptr<MemberWatcher> w =
      MemberWatcher::Start(Client(), "/kvtier", "store", nullptr, &metrics);
  absl::StatusOr<std::unique_ptr<Registration>> a =
      Registration::Start(Client(), "/kvtier", StoreMember("a"), absl::Seconds(3));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(w->WaitUntil([](auto& m) { return m.size() == 1; }, absl::Seconds(10)));
  EXPECT_TRUE(WaitFor([&] { return (*a)->registered(); }, absl::Seconds(5)));

  etcd_->process().Signal(SIGKILL, absl::Seconds(5));
  EXPECT_TRUE(WaitFor([&] { return !w->connected(); }, absl::Seconds(10)));
  EXPECT_EQ(w->members(), std::vector<Member>{StoreMember("a")}) << "the last set is served";
  EXPECT_NE(metrics.RenderText().find("kvtier_membership_etcd_up{role=\"store\"} 0"),
            std::string::npos)
      << metrics.RenderText();
  // Longer than the lease's ttl: the lease may expire; the registration writes it again.
  absl::SleepFor(absl::Seconds(4));
  EXPECT_EQ(w->members().size(), 1u);

  StartEtcd();
  EXPECT_TRUE(WaitFor([&] { return w->connected(); }, absl::Seconds(10)));
  EXPECT_TRUE(w->WaitUntil([](auto& m) { return m.size() == 1; }, absl::Seconds(10)));
  EXPECT_NE(metrics.RenderText().find("kvtier_membership_etcd_up{role=\"store\"} 1"),
            std::string::npos);
  // And a member that joins now is seen.
  absl::StatusOr<std::unique_ptr<Registration>> b =
      Registration::Start(Client(), "/kvtier", StoreMember("b"), absl::Seconds(3));
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(w->WaitUntil([](auto& m) { return m.size() == 2; }, absl::Seconds(10)));
  // The first registration is still alive a few ttls on (renewed, not expired).
  absl::SleepFor(absl::Seconds(4));
  EXPECT_TRUE(Has(w->members(), StoreMember("a")));
}

TEST_F(MembershipTest, RegistrationRefusesBadInput) {
  EXPECT_EQ(Registration::Start(Client(), "/kvtier", StoreMember("a/b"), absl::Seconds(3))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Registration::Start(Client(), "/kvtier", StoreMember("a"), absl::Seconds(1)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::membership
