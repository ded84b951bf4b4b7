#include "worker/worker_options.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kvtier::worker {
namespace {

class WorkerOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/kvtier_worker_options_", getpid());
    std::filesystem::create_directories(dir_ + "/model");
    std::ofstream(dir_ + "/model/config.json") << "{}";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& yaml) {
    const std::string p = dir_ + "/c.yaml";
    std::ofstream(p) << yaml;
    return p;
  }
  absl::StatusOr<WorkerOptions> Parse(std::vector<std::string> args) {
    WorkerFlags flags("decode");
    args.push_back("--plaintext");  // TLS: WorkerOptionsTest.TlsOrPlaintext
    return flags.Parse(args);
  }
  std::string dir_;
};

TEST_F(WorkerOptionsTest, YamlThenFlagsOverride) {
  const std::string cfg = Write(absl::StrCat("model_dir: ", dir_, "/model\n",
                                             "stores: [127.0.0.1:7000, 127.0.0.1:7001]\n"
                                             "kv_cache_bytes: 8MiB\nthreads: 2\n"
                                             "max_batch_tokens: 128\n"));
  auto o = Parse({"--config", cfg, "--threads", "1", "--listen", "0.0.0.0:0"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->stores.size(), 2u);
  EXPECT_EQ(o->kv_cache_bytes, 8 << 20);
  EXPECT_EQ(o->threads, 1);
  EXPECT_EQ(o->listen, "0.0.0.0:0");
  EXPECT_EQ(o->max_batch_tokens, 128);
  EXPECT_EQ(o->model_name, "model");
  EXPECT_EQ(ToEngineOptions(*o).kv_cache_bytes, 8 << 20);
}

TEST_F(WorkerOptionsTest, RoleDefaults) {
  auto o = Parse({"--model-dir", dir_ + "/model"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->listen, "127.0.0.1:50062");
  EXPECT_TRUE(o->stores.empty());
  EXPECT_EQ(DefaultWorkerOptions("prefill").listen, "127.0.0.1:50061");
  EXPECT_EQ(o->metrics_listen, "127.0.0.1:0");
}

TEST_F(WorkerOptionsTest, MetricsListen) {
  auto o = Parse({"--model-dir", dir_ + "/model", "--metrics-listen", "0.0.0.0:9200"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->metrics_listen, "0.0.0.0:9200");
  o = Parse({"--model-dir", dir_ + "/model", "--metrics-listen", "off"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->metrics_listen, "");  // off
  o = Parse({"--config", Write(absl::StrCat("model_dir: ", dir_, "/model\n",
                                            "metrics_listen: 127.0.0.1:9300\n"))});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->metrics_listen, "127.0.0.1:9300");
  o = Parse({"--model-dir", dir_ + "/model", "--metrics-listen", "9200"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("metrics_listen"), std::string::npos) << o.status();
}

TEST_F(WorkerOptionsTest, TlsOrPlaintext) {
  WorkerFlags none("prefill");
  absl::StatusOr<WorkerOptions> o = none.Parse({"--model-dir", dir_ + "/model"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("--plaintext"), std::string::npos) << o.status();
  WorkerFlags tls("prefill");
  o = tls.Parse({"--model-dir", dir_ + "/model", "--tls-cert-file=/c", "--tls-key-file=/k",
                 "--service-token-file=/t", "--tls-ca-file=/ca", "--tls-mutual=true",
                 "--tls-client-cert-file=/cc", "--tls-client-key-file=/ck"});
  ASSERT_TRUE(o.ok()) << o.status();
  StoreClientOptions s = ToStoreClientOptions(*o);  // the store calls use the same files
  EXPECT_EQ(s.tls.ca_file, "/ca");
  EXPECT_EQ(s.tls.client_cert_file, "/cc");
  EXPECT_EQ(s.tls.service_token_file, "/t");
  WorkerFlags no_ca("prefill");  // a client must verify the servers it calls
  o = no_ca.Parse({"--model-dir", dir_ + "/model", "--tls-cert-file=/c", "--tls-key-file=/k",
                   "--service-token-file=/t"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("tls.ca_file"), std::string::npos) << o.status();
}

TEST_F(WorkerOptionsTest, ClearErrors) {
  auto expect_error = [&](std::vector<std::string> args, const std::string& needle) {
    auto o = Parse(std::move(args));
    ASSERT_FALSE(o.ok());
    EXPECT_NE(o.status().message().find(needle), std::string::npos) << o.status();
  };
  expect_error({}, "model_dir is required");
  expect_error({"--model-dir", dir_}, "has no config.json");
  expect_error({"--model-dir", dir_ + "/model", "--backend", "tpu"}, "backend");
  expect_error({"--model-dir", dir_ + "/model", "--store", "nohost"}, "stores");
  expect_error({"--model-dir", dir_ + "/model", "--kv-cache-bytes", "lots"}, "--kv-cache-bytes");
  expect_error({"--model-dir", dir_ + "/model", "--max-batch-seqs", "600"}, "max_batch_seqs");
  expect_error({"--model-dir", dir_ + "/model", "--log-level", "loud"}, "log_level");
  expect_error({"--config", Write("modeldir: x\n")}, "unknown key 'modeldir'");
}

}  // namespace
}  // namespace kvtier::worker
