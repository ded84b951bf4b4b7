#include "router/router_options.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace kvtier::router {
namespace {

class RouterOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Per process: ctest runs each test of this suite as its own process, in parallel.
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("router_options_test_" + std::to_string(getpid())) / "my-model";
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "tokenizer.json") << "{}";
  }
  void TearDown() override { std::filesystem::remove_all(dir_.parent_path()); }

  absl::StatusOr<RouterOptions> Parse(std::vector<std::string> args) {
    RouterFlags flags;
    args.push_back("--plaintext");  // TLS: RouterOptionsTest.TlsNeedsApiKeys
    return flags.Parse(args);
  }

  std::filesystem::path dir_;
};

TEST_F(RouterOptionsTest, DefaultsAndFlags) {
  absl::StatusOr<RouterOptions> o =
      Parse({"--model-dir=" + dir_.string(), "--decode=127.0.0.1:1", "--decode=127.0.0.1:2"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_name, "my-model");
  EXPECT_EQ(o->decode_workers.size(), 2u);
  EXPECT_EQ(o->skip_prefill_below, 64);
  EXPECT_TRUE(o->cache);
  EXPECT_EQ(o->default_max_tokens, 256);
  EXPECT_EQ(o->chat_format, "auto");
  EXPECT_EQ(o->max_prompt_bytes, 0);
  EXPECT_EQ(o->max_choices, 64);
  EXPECT_EQ(o->max_queued_requests, 256);
  EXPECT_EQ(o->max_body_bytes, int64_t{16} << 20);
  EXPECT_FALSE(Parse({"--model-dir=" + dir_.string(), "--decode=h:1", "--max-choices=0"}).ok());
  o = Parse({"--model-dir=" + dir_.string(), "--decode=h:1", "--max-prompt-bytes=1MiB",
             "--max-queued-requests=8"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->max_prompt_bytes, 1 << 20);
  EXPECT_EQ(o->max_queued_requests, 8);
}

TEST_F(RouterOptionsTest, YamlThenFlagsOverride) {
  const std::string yaml = (dir_.parent_path() / "r.yaml").string();
  std::ofstream(yaml) << "model_dir: " << dir_.string()
                      << "\ndecode_workers: [\"h:1\"]\nprefill_workers: h:2\n"
                         "cache: false\nskip_prefill_below: 10\nmodel_name: x\n";
  absl::StatusOr<RouterOptions> o = Parse({"--config=" + yaml, "--skip-prefill-below=3"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->cache);
  EXPECT_EQ(o->skip_prefill_below, 3);
  EXPECT_EQ(o->model_name, "x");
  ASSERT_EQ(o->prefill_workers.size(), 1u);
  EXPECT_EQ(o->prefill_workers[0], "h:2");
}

TEST_F(RouterOptionsTest, TlsNeedsApiKeys) {
  const std::vector<std::string> base = {"--model-dir=" + dir_.string(), "--decode=h:1"};
  auto parse = [](std::vector<std::string> args) { return RouterFlags().Parse(args); };
  absl::StatusOr<RouterOptions> o = parse(base);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("--plaintext"), std::string::npos) << o.status();
  std::vector<std::string> tls = base;
  for (const char* f : {"--tls-cert-file=/c", "--tls-key-file=/k", "--tls-ca-file=/ca",
                        "--service-token-file=/t"}) {
    tls.push_back(f);
  }
  o = parse(tls);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("api_keys_file"), std::string::npos) << o.status();
  tls.push_back("--api-keys-file=/keys");
  o = parse(tls);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->api_keys_file, "/keys");
  EXPECT_FALSE(o->tls.plaintext);
  // The router's API is public: no --tls-mutual there.
  tls.push_back("--tls-mutual=true");
  EXPECT_FALSE(parse(tls).ok());
}

TEST_F(RouterOptionsTest, Errors) {
  EXPECT_FALSE(Parse({"--decode=h:1"}).ok());                  // no model dir
  EXPECT_FALSE(Parse({"--model-dir=" + dir_.string()}).ok());  // no decode worker
  EXPECT_FALSE(Parse({"--model-dir=" + dir_.string(), "--decode=nohost"}).ok());
  EXPECT_FALSE(Parse({"--model-dir=" + dir_.string(), "--decode=h:1", "--chat-format=jinja"}).ok());
  const std::string yaml = (dir_.parent_path() / "bad.yaml").string();
  std::ofstream(yaml) << "bogus: 1\n";
  absl::StatusOr<RouterOptions> o = Parse({"--config=" + yaml});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("bogus"), std::string::npos);
}

}  // namespace
}  // namespace kvtier::router
