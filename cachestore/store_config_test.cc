#include "cachestore/store_config.h"

#include <fstream>

#include "common/parse_bytes.h"
#include "gtest/gtest.h"

namespace kvtier::cachestore {
namespace {

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ParseBytesTest, UnitsAndErrors) {
  EXPECT_EQ(*ParseBytes("123"), 123u);
  EXPECT_EQ(*ParseBytes("64KiB"), 64u << 10);
  EXPECT_EQ(*ParseBytes("2MiB"), 2u << 20);
  EXPECT_EQ(*ParseBytes("1.5GiB"), 3ull << 29);
  EXPECT_EQ(*ParseBytes(" 4g "), 4ull << 30);
  EXPECT_FALSE(ParseBytes("").ok());
  EXPECT_FALSE(ParseBytes("MiB").ok());
  EXPECT_FALSE(ParseBytes("12 parsecs").ok());
}

TEST(StoreConfigTest, ExampleConfigLoads) {
  auto c = LoadStoreConfig(std::string(KVTIER_SOURCE_DIR) + "/deploy/store.example.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:50051");
  EXPECT_EQ(c->pool_bytes, 1ull << 30);
  EXPECT_EQ(c->store.slot_bytes, 2u << 20);
  EXPECT_EQ(c->store.lease_timeout, absl::Seconds(30));
  ASSERT_TRUE(FinalizeStoreConfig(&*c).ok());
  EXPECT_EQ(c->store.slot_count, 512u);
}

TEST(StoreConfigTest, ClearErrors) {
  auto unknown = LoadStoreConfig(WriteFile("unknown.yaml", "pool_byts: 1GiB\n"));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("unknown key 'pool_byts'"), std::string::npos);
  auto bad_size = LoadStoreConfig(WriteFile("bad.yaml", "slot_bytes: lots\n"));
  EXPECT_EQ(bad_size.status().code(), absl::StatusCode::kInvalidArgument);
  auto not_yaml = LoadStoreConfig(WriteFile("broken.yaml", "listen: [unclosed\n"));
  EXPECT_EQ(not_yaml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(LoadStoreConfig("/nonexistent/kvtier.yaml").ok());

  StoreConfig tiny;
  tiny.tls.plaintext = true;
  tiny.pool_bytes = 1 << 20;
  tiny.store.slot_bytes = 2 << 20;
  EXPECT_EQ(FinalizeStoreConfig(&tiny).code(), absl::StatusCode::kInvalidArgument);
  StoreConfig spill;
  spill.tls.plaintext = true;
  spill.store.spill_dir = "/tmp/x";
  EXPECT_EQ(FinalizeStoreConfig(&spill).code(), absl::StatusCode::kInvalidArgument);
  // A freed slot may be written until its reservation would have expired.
  auto short_quarantine =
      LoadStoreConfig(WriteFile("quarantine.yaml",
                                "tls:\n  plaintext: true\nreservation_timeout_ms: 30000\n"
                                "slot_quarantine_ms: 5000\n"));
  ASSERT_TRUE(short_quarantine.ok()) << short_quarantine.status();
  absl::Status q = FinalizeStoreConfig(&*short_quarantine);
  EXPECT_EQ(q.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.message().find("slot_quarantine_ms"), std::string::npos) << q;
}

TEST(StoreConfigTest, LimitsAndDataInterfaceLoad) {
  auto c = LoadStoreConfig(WriteFile("limits.yaml",
                                     "tls:\n  plaintext: true\n"
                                     "data_interface: lo\nslot_quarantine_ms: 60000\n"
                                     "max_namespaces: 7\nmax_open_per_client: 9\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(FinalizeStoreConfig(&*c).ok());
  EXPECT_EQ(c->data_interface, "lo");
  EXPECT_EQ(c->store.slot_quarantine, absl::Seconds(60));
  EXPECT_EQ(c->store.max_namespaces, 7u);
  EXPECT_EQ(c->store.max_open_per_client, 9u);
}

// A store with neither TLS files nor plain text configured refuses to start, saying why.
TEST(StoreConfigTest, NeitherTlsNorPlaintextIsAnError) {
  StoreConfig c;
  absl::Status s = FinalizeStoreConfig(&c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--plaintext"), std::string::npos) << s;
  c.tls.plaintext = true;
  EXPECT_TRUE(FinalizeStoreConfig(&c).ok());
  c.tls.service_token_file = "/t";  // plain text sends no token: both is a contradiction
  EXPECT_EQ(FinalizeStoreConfig(&c).code(), absl::StatusCode::kInvalidArgument);
  c.tls.plaintext = false;
  c.tls.cert_file = "/c";
  c.tls.key_file = "/k";
  EXPECT_TRUE(FinalizeStoreConfig(&c).ok());
  c.tls.mutual = true;  // client certificates need the CA that signs them
  EXPECT_NE(FinalizeStoreConfig(&c).message().find("tls.ca_file"), std::string::npos);
}

}  // namespace
}  // namespace kvtier::cachestore
