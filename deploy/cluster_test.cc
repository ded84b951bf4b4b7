// The cluster config of `kvtier up` / `kvtier down`: the shipped YAML files, nested keys, flags
// over YAML, errors. The cluster itself is tests/cluster_integration_test.cc's.
#include "deploy/cluster.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::deploy {
namespace {

using ::testing::HasSubstr;

std::string Yaml(const std::string& text) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/kvtier_cluster_test_", getpid(), ".yaml");
  std::ofstream(path) << text;
  return path;
}

TEST(ClusterConfigTest, ShippedConfigsLoad) {
  absl::StatusOr<ClusterConfig> c =
      LoadClusterConfig(std::string(KVTIER_SOURCE_DIR) + "/deploy/local/cluster.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->run_dir, ".kvtier-run");
  EXPECT_EQ(c->model_shape, "tiny");
  EXPECT_EQ(c->store_pool_bytes, "256MiB");
  EXPECT_EQ(c->store_slot_bytes, "64KiB");
  EXPECT_EQ(c->worker_kv_cache_bytes, "64MiB");
  EXPECT_EQ(c->worker_max_batch_tokens, 256);
  EXPECT_TRUE(c->worker_keep_blocks);
  EXPECT_EQ(c->router_port, 8080);
  EXPECT_EQ(c->router_skip_prefill_below, 256);
  EXPECT_EQ(c->stop_grace_s, 10);

  c = LoadClusterConfig(std::string(KVTIER_SOURCE_DIR) + "/tests/gpu/cluster-llama3-8b.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->backend, "cuda");
  EXPECT_EQ(c->model_dtype, "bf16");
  EXPECT_EQ(c->worker_kv_cache_bytes, "12GiB");
  EXPECT_EQ(c->router_port, 0);

  EXPECT_EQ(c->store_nodes, 1);
  EXPECT_FALSE(c->etcd);
  EXPECT_FALSE(c->netns);

  // The multi-host cluster on one machine (docs/serving.md).
  c = LoadClusterConfig(std::string(KVTIER_SOURCE_DIR) + "/deploy/netns/cluster.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->run_dir, ".kvtier-netns");
  EXPECT_EQ(c->store_nodes, 3);
  EXPECT_EQ(c->prefill_workers, 2);
  EXPECT_EQ(c->decode_workers, 2);
  EXPECT_TRUE(c->etcd);
  EXPECT_TRUE(c->netns);
  EXPECT_EQ(c->netns_prefix, "kvtier");
  EXPECT_EQ(c->netns_subnet, "10.213.0");

  c = LoadClusterConfig("");
  ASSERT_TRUE(c.ok()) << c.status();  // no file: the defaults
  EXPECT_EQ(c->decode_workers, 1);
  EXPECT_EQ(c->store_nodes, 1);
  EXPECT_FALSE(c->etcd);
  EXPECT_FALSE(c->netns);
}

TEST(ClusterConfigTest, ErrorsNameTheKey) {
  absl::StatusOr<ClusterConfig> c = LoadClusterConfig(Yaml("store:\n  pool_byts: 1GiB\n"));
  EXPECT_THAT(c.status().message(), HasSubstr("unknown key 'store.pool_byts'"));
  c = LoadClusterConfig(Yaml("workers:\n  kv_cache_bytes: lots\n"));
  EXPECT_THAT(c.status().message(), HasSubstr("workers.kv_cache_bytes: not a size"));
  c = LoadClusterConfig(Yaml("decode: 0\n"));
  EXPECT_THAT(c.status().message(), HasSubstr("decode (--decode): must be in [1, 16]"));
  c = LoadClusterConfig(Yaml("store:\n  nodes: 0\n"));
  EXPECT_THAT(c.status().message(), HasSubstr("store.nodes (--store-nodes): must be in [1, 16]"));
  c = LoadClusterConfig(Yaml("model:\n  dtype: f8\n"));
  EXPECT_THAT(c.status().message(), HasSubstr("model.dtype (--model-dtype)"));
  EXPECT_EQ(LoadClusterConfig("/nonexistent/cluster.yaml").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ClusterConfigTest, FlagsOverrideTheYaml) {
  ClusterFlags flags;
  const std::string config = Yaml("run_dir: /tmp/a\nrouter:\n  port: 8080\nprefill: 2\n");
  absl::StatusOr<ClusterConfig> c =
      flags.Parse({"--config", config, "--router-port", "0", "--run-dir", "/tmp/b"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->router_port, 0);
  EXPECT_EQ(c->run_dir, "/tmp/b");
  EXPECT_EQ(c->prefill_workers, 2);
  ClusterFlags more;
  c = more.Parse({"--netns", "--netns-prefix", "kvtx", "--etcd", "--store-nodes", "3"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->netns);
  EXPECT_EQ(c->netns_prefix, "kvtx");
  EXPECT_TRUE(c->etcd);
  EXPECT_EQ(c->store_nodes, 3);
}

}  // namespace
}  // namespace kvtier::deploy
