// EtcdClient against a real etcd (EtcdProcess) on loopback.
#include "membership/etcd_client.h"

#include <httplib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "membership/etcd_process.h"

namespace kvtier::membership {
namespace {

class EtcdClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One etcd per test process (ctest runs each test in a process of its own, in parallel).
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/etcd_client_test.", getpid()));
    std::filesystem::remove_all(*dir_);
    absl::StatusOr<EtcdProcess> etcd = EtcdProcess::Start({.dir = *dir_});
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = new EtcdProcess(*std::move(etcd));
  }
  static void TearDownTestSuite() {
    delete etcd_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  std::unique_ptr<EtcdClient> Client(std::vector<std::string> endpoints = {}) {
    if (endpoints.empty()) endpoints = {etcd_->endpoint()};
    absl::StatusOr<std::unique_ptr<EtcdClient>> c = EtcdClient::Create({.endpoints = endpoints});
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  static std::string* dir_;
  static EtcdProcess* etcd_;
};
std::string* EtcdClientTest::dir_ = nullptr;
EtcdProcess* EtcdClientTest::etcd_ = nullptr;

TEST_F(EtcdClientTest, CreateRefusesBadEndpoints) {
  EXPECT_EQ(EtcdClient::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* e : {"127.0.0.1:2379", "http://127.0.0.1", "http://:2379", "ftp://h:1"}) {
    EXPECT_EQ(EtcdClient::Create({.endpoints = {e}}).status().code(),
              absl::StatusCode::kInvalidArgument)
        << e;
  }
}

TEST_F(EtcdClientTest, PutGetPrefixDeleteRoundTripKeepsBytesAndStaysInsideThePrefix) {
  std::unique_ptr<EtcdClient> c = Client();
  const std::string binary("v\0\xff\n\"", 5);
  ASSERT_TRUE(c->Put("/rt/a/1", "one").ok());
  ASSERT_TRUE(c->Put("/rt/a/2", binary).ok());
  ASSERT_TRUE(c->Put("/rt/ab", "sibling").ok());
  absl::StatusOr<EtcdClient::Range> r = c->GetPrefix("/rt/a/");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->kvs.size(), 2u);
  EXPECT_EQ(r->kvs[0].key, "/rt/a/1");
  EXPECT_EQ(r->kvs[0].value, "one");
  EXPECT_EQ(r->kvs[1].value, binary);
  EXPECT_GT(r->revision, 0);
  ASSERT_TRUE(c->Delete("/rt/a/1").ok());
  r = c->GetPrefix("/rt/a/");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->kvs.size(), 1u);
  EXPECT_EQ(r->kvs[0].key, "/rt/a/2");
}

TEST_F(EtcdClientTest, LeasedKeysGoWithTheirLease) {
  std::unique_ptr<EtcdClient> c = Client();
  absl::StatusOr<int64_t> lease = c->GrantLease(absl::Seconds(5));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(c->Put("/lease/k", "v", *lease).ok());
  EXPECT_TRUE(c->KeepAlive(*lease).ok());
  absl::StatusOr<EtcdClient::Range> r = c->GetPrefix("/lease/");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->kvs.size(), 1u);
  EXPECT_EQ(r->kvs[0].lease, *lease);
  ASSERT_TRUE(c->RevokeLease(*lease).ok());
  absl::Status again = c->RevokeLease(*lease);
  EXPECT_TRUE(again.ok()) << "revoking a revoked lease is not an error: " << again;
  EXPECT_EQ(c->KeepAlive(*lease).code(), absl::StatusCode::kNotFound);
  r = c->GetPrefix("/lease/");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->kvs.empty());
  // A put under a lease that is gone fails and writes nothing.
  EXPECT_FALSE(c->Put("/lease/k", "v", *lease).ok());
}

TEST_F(EtcdClientTest, WatchSeesPutsAndDeletesInOrderAndStopsOnCancel) {
  std::unique_ptr<EtcdClient> c = Client();
  absl::StatusOr<EtcdClient::Range> start = c->GetPrefix("/w/");
  ASSERT_TRUE(start.ok());
  std::vector<WatchEvent> seen;
  absl::Mutex mu;
  absl::Status result = absl::UnknownError("not run");
  std::thread watcher([&] {
    result = c->Watch("/w/", start->revision + 1, absl::Seconds(30),
                      [&](const std::vector<WatchEvent>& events, int64_t) {
                        absl::MutexLock l(&mu);
                        seen.insert(seen.end(), events.begin(), events.end());
                      });
  });
  std::unique_ptr<EtcdClient> writer = Client();
  ASSERT_TRUE(writer->Put("/w/x", "1").ok());
  ASSERT_TRUE(writer->Put("/other", "not seen").ok());
  ASSERT_TRUE(writer->Delete("/w/x").ok());
  auto count = [&] {
    absl::MutexLock l(&mu);
    return seen.size();
  };
  EXPECT_TRUE(WaitFor([&] { return count() >= 2; }, absl::Seconds(10)));
  const absl::Time t0 = absl::Now();
  c->CancelWatch();
  watcher.join();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  EXPECT_TRUE(result.ok()) << result;
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_FALSE(seen[0].deleted);
  EXPECT_EQ(seen[0].kv.key, "/w/x");
  EXPECT_EQ(seen[0].kv.value, "1");
  EXPECT_TRUE(seen[1].deleted);
  EXPECT_EQ(seen[1].kv.key, "/w/x");
}

TEST_F(EtcdClientTest, CancelBeforeTheWatchStartsStopsIt) {
  std::unique_ptr<EtcdClient> c = Client();
  c->CancelWatch();
  const absl::Time t0 = absl::Now();
  EXPECT_TRUE(c->Watch("/c/", 1, absl::Seconds(30), [](auto&, int64_t) {}).ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
}

TEST_F(EtcdClientTest, AQuietWatchEndsWithDeadlineExceeded) {
  std::unique_ptr<EtcdClient> c = Client();
  absl::StatusOr<EtcdClient::Range> start = c->GetPrefix("/quiet/");
  ASSERT_TRUE(start.ok());
  EXPECT_EQ(c->Watch("/quiet/", start->revision + 1, absl::Milliseconds(700), [](auto&, int64_t) {})
                .code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(EtcdClientTest, AWatchFromACompactedRevisionIsOutOfRange) {
  std::unique_ptr<EtcdClient> c = Client();
  ASSERT_TRUE(c->Put("/compact/k", "1").ok());
  absl::StatusOr<int64_t> rev = c->Put("/compact/k", "2");
  ASSERT_TRUE(rev.ok());
  httplib::Client raw(etcd_->endpoint());
  httplib::Result r = raw.Post("/v3/kv/compaction", absl::StrCat("{\"revision\":\"", *rev, "\"}"),
                               "application/json");
  ASSERT_TRUE(r && r->status == 200) << (r ? r->body : httplib::to_string(r.error()));
  EXPECT_EQ(c->Watch("/compact/", 1, absl::Seconds(10), [](auto&, int64_t) {}).code(),
            absl::StatusCode::kOutOfRange);
}

TEST_F(EtcdClientTest, ADeadEndpointIsSkippedAndNoEndpointIsUnavailable) {
  absl::StatusOr<int> dead = FreeTcpPort();
  ASSERT_TRUE(dead.ok());
  const std::string dead_url = absl::StrCat("http://127.0.0.1:", *dead);
  std::unique_ptr<EtcdClient> both = Client({dead_url, etcd_->endpoint()});
  EXPECT_TRUE(both->Put("/fallback", "x").ok());
  std::unique_ptr<EtcdClient> none = Client({dead_url});
  const absl::Time t0 = absl::Now();
  absl::Status s = none->Put("/fallback", "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find(dead_url), std::string::npos) << s;
  EXPECT_EQ(none->Watch("/f/", 1, absl::Seconds(30), [](auto&, int64_t) {}).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
}

}  // namespace
}  // namespace kvtier::membership
