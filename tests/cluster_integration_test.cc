// `kvtier up` / `kvtier chat` / `kvtier down` end to end: a local cluster (store, prefill and
// decode workers, router) started by the CLI in a private run directory with free ports, a
// streamed chat through it, and concurrent conversations whose texts must not depend on the
// cache tier (greedy, CPU backend).
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/process.h"
#include "deploy/cluster.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace kvtier {
namespace {

using nlohmann::json;
using testing::MakeTempDir;

const std::string kBin = KVTIER_BIN_DIR;

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The model is generated once per test binary (by the first `kvtier up`) and shared.
std::string ModelDir() {
  return (std::filesystem::path(::testing::TempDir()) /
          absl::StrCat("kvtier_cluster_model_", getpid(), "/tiny"))
      .string();
}

// Removes the shared model directory at the end of the test binary.
class ModelDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(ModelDir()).parent_path(), ec);
  }
};
[[maybe_unused]] ::testing::Environment* const kModelDirCleanup =
    ::testing::AddGlobalTestEnvironment(new ModelDirCleanup);

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

class ClusterIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = MakeTempDir("cluster_" + name);
    run_dir_ = dir_ + "/run";
  }

  void TearDown() override {
    // Always stop whatever is left (a no-op after a successful `kvtier down`).
    Kvtier({"down", "--config", config_});
    if (!HasFailure()) {
      std::filesystem::remove_all(dir_);
    } else {
      for (const auto& e : std::filesystem::directory_iterator(run_dir_)) {
        if (e.path().extension() == ".log") {
          std::cerr << "---- " << e.path().filename() << "\n" << ReadAll(e.path()) << "\n";
        }
      }
    }
  }

  void WriteConfig(int prefill, int decode) {
    config_ = dir_ + "/cluster.yaml";
    std::ofstream f(config_);
    f << "run_dir: " << run_dir_ << "\n"
      << "ready_timeout_s: 30\nstop_grace_s: 5\n"
      << "model:\n  dir: " << ModelDir() << "\n  name: tiny-chat\n"
      << "store:\n  pool_bytes: 32MiB\n  slot_bytes: 64KiB\n  spill_capacity: 0\n"
      << "prefill: " << prefill << "\ndecode: " << decode << "\n"
      << "workers:\n  threads: 1\n  kv_cache_bytes: 16MiB\n  max_batch_tokens: 64\n"
      << "router:\n  port: 0\n  skip_prefill_below: 16\n";
  }

  // Runs build/bin/kvtier with `args`; bounded.
  CliResult Kvtier(const std::vector<std::string>& args, int timeout_s = 45) {
    CliResult r;
    const std::string log = absl::StrCat(dir_, "/cli-", ++cli_runs_, ".out");
    std::vector<std::string> argv = {kBin + "/kvtier"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto child = ChildProcess::Spawn(argv, {}, log);
    if (!child.ok()) {
      ADD_FAILURE() << child.status();
      return r;
    }
    std::optional<int> st = child->Wait(absl::Seconds(timeout_s));
    if (!st.has_value()) {
      ADD_FAILURE() << "kvtier " << args[0] << " did not finish in " << timeout_s << " s";
      child->Signal(SIGKILL, absl::Seconds(5));
    } else if (WIFEXITED(*st)) {
      r.exit_code = WEXITSTATUS(*st);
    }
    r.output = ReadAll(log);
    return r;
  }

  // `kvtier up`; returns the endpoint (https://127.0.0.1:PORT/v1).
  std::string Up() {
    CliResult r = Kvtier({"up", "--config", config_});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::smatch m;
    static const std::regex kEndpoint("(https://127\\.0\\.0\\.1:([0-9]+)/v1)");
    if (!std::regex_search(r.output, m, kEndpoint)) {
      ADD_FAILURE() << "no endpoint in:\n" << r.output;
      return "";
    }
    port_ = std::stoi(m[2]);
    // The API key `kvtier up` printed is the one of its 0600 file.
    const deploy::ClusterCredentials creds = deploy::CredentialsOf(run_dir_);
    api_key_ = ReadAll(creds.api_key_file);
    while (!api_key_.empty() && api_key_.back() == '\n') api_key_.pop_back();
    EXPECT_NE(r.output.find(api_key_), std::string::npos) << r.output;
    return m[1];
  }

  // An HTTPS client of the router that trusts the cluster's CA and sends its API key (none
  // with `key` false).
  std::unique_ptr<httplib::SSLClient> Client(bool key = true) const {
    auto cli = std::make_unique<httplib::SSLClient>("127.0.0.1", port_);
    cli->set_ca_cert_path(deploy::CredentialsOf(run_dir_).pki.ca_file.c_str());
    cli->enable_server_certificate_verification(true);
    if (key) cli->set_bearer_token_auth(api_key_.c_str());
    cli->set_read_timeout(30, 0);
    return cli;
  }

  std::vector<pid_t> Pids() {
    auto state = deploy::ReadClusterState(run_dir_);
    EXPECT_TRUE(state.ok() && state->has_value());
    std::vector<pid_t> pids;
    if (state.ok() && state->has_value()) {
      for (const auto& p : (*state)->processes) pids.push_back(p.pid);
    }
    return pids;
  }

  void DownAndCheck() {
    std::vector<pid_t> pids = Pids();
    CliResult r = Kvtier({"down", "--config", config_});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    for (pid_t pid : pids) EXPECT_FALSE(ProcessAlive(pid)) << "pid " << pid;
    EXPECT_FALSE(std::filesystem::exists(deploy::StateFilePath(run_dir_)));
  }

  std::string dir_, run_dir_, config_;
  std::string api_key_;
  int port_ = 0;
  int cli_runs_ = 0;
};

TEST_F(ClusterIntegrationTest, UpChatDown) {
  WriteConfig(1, 1);
  const std::string endpoint = Up();
  ASSERT_FALSE(endpoint.empty());
  std::vector<pid_t> pids = Pids();
  EXPECT_EQ(pids.size(), 4u);  // store, prefill-0, decode-0, router

  // HTTPS with the generated CA; /health is open, the API takes the generated key only.
  httplib::Result health = Client(/*key=*/false)->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  httplib::Result anonymous = Client(/*key=*/false)->Get("/v1/models");
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);
  httplib::Result models = Client()->Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200) << models->body;
  httplib::Client plain("127.0.0.1", port_);  // plain HTTP to the HTTPS port: no answer
  plain.set_read_timeout(5, 0);
  EXPECT_FALSE(plain.Get("/health"));
  // Keys and the token are private to the user; the store commands use them.
  for (const std::string& f : {deploy::CredentialsOf(run_dir_).api_key_file,
                               deploy::CredentialsOf(run_dir_).pki.service_token_file,
                               deploy::CredentialsOf(run_dir_).pki.key_file}) {
    EXPECT_EQ(std::filesystem::status(f).permissions() & std::filesystem::perms::all,
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write)
        << f;
  }
  auto state = deploy::ReadClusterState(run_dir_);
  ASSERT_TRUE(state.ok() && state->has_value());
  const std::string store = absl::StrCat("127.0.0.1:", (*state)->processes[0].port);
  CliResult stats = Kvtier({"store", "stats", "--store", store, "--run-dir", run_dir_});
  EXPECT_EQ(stats.exit_code, 0) << stats.output;
  CliResult plain_stats = Kvtier({"store", "stats", "--store", store, "--plaintext"});
  EXPECT_NE(plain_stats.exit_code, 0) << plain_stats.output;

  // A second `up` of the same run directory refuses.
  CliResult again = Kvtier({"up", "--config", config_});
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("already running"), std::string::npos) << again.output;

  CliResult chat = Kvtier(
      {"chat", "--url", endpoint, "--run-dir", run_dir_, "--turns", "3", "--max-tokens", "16"});
  ASSERT_EQ(chat.exit_code, 0) << chat.output;
  static const std::regex kTurn(
      "\\[turn ([0-9]+)\\] ttft_ms=[0-9.]+ tokens_per_s=[0-9.]+ prompt_tokens=([0-9]+) "
      "cached=([0-9]+)");
  int turns = 0;
  for (std::sregex_iterator it(chat.output.begin(), chat.output.end(), kTurn), end; it != end;
       ++it) {
    const int turn = std::stoi((*it)[1]);
    const int prompt = std::stoi((*it)[2]);
    const int cached = std::stoi((*it)[3]);
    ++turns;
    EXPECT_GT(prompt, 0);
    EXPECT_LE(cached, prompt);
    if (turn >= 2) {
      EXPECT_GT(cached, 0) << "turn " << turn << ":\n" << chat.output;
    }
  }
  EXPECT_EQ(turns, 3) << chat.output;

  DownAndCheck();
  // Down again: nothing to stop.
  EXPECT_NE(Kvtier({"down", "--config", config_}).exit_code, 0);
}

TEST_F(ClusterIntegrationTest, ConcurrentConversationsMatchRecompute) {
  WriteConfig(2, 2);
  const std::string endpoint = Up();
  ASSERT_FALSE(endpoint.empty());
  EXPECT_EQ(Pids().size(), 6u);

  const std::string system =
      "You are a helpful assistant of the kvtier project. You answer questions about caching, "
      "serving and the weather in short sentences. Always be polite, precise and brief.";
  constexpr int kConversations = 4, kTurns = 3;
  // texts[cache][conversation][turn]
  std::vector<std::vector<std::string>> texts[2];
  std::vector<std::string> errors[2];
  for (int cache = 1; cache >= 0; --cache) {
    texts[cache].assign(kConversations, {});
    errors[cache].assign(kConversations, "");
    std::vector<std::thread> threads;
    for (int c = 0; c < kConversations; ++c) {
      threads.emplace_back([&, c, cache] {
        std::unique_ptr<httplib::SSLClient> cli = Client();
        json messages = json::array({{{"role", "system"}, {"content", system}}});
        for (int t = 0; t < kTurns; ++t) {
          messages.push_back({{"role", "user"},
                              {"content", absl::StrCat("Conversation ", c, ", question ", t,
                                                       ": what is block ", c * 10 + t, "?")}});
          json req = {{"model", "tiny-chat"},
                      {"messages", messages},
                      {"max_tokens", 12},
                      {"temperature", 0},
                      {"cache", cache == 1}};
          httplib::Result r = cli->Post("/v1/chat/completions", req.dump(), "application/json");
          if (!r || r->status != 200) {
            errors[cache][c] = r ? absl::StrCat(r->status, " ", r->body) : "no response";
            return;
          }
          json body = json::parse(r->body, nullptr, false);
          if (body.is_discarded()) {
            errors[cache][c] = "bad JSON: " + r->body;
            return;
          }
          std::string text = body["choices"][0]["message"]["content"].get<std::string>();
          texts[cache][c].push_back(text);
          messages.push_back({{"role", "assistant"}, {"content", text}});
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int c = 0; c < kConversations; ++c) {
      ASSERT_TRUE(errors[cache][c].empty()) << "conversation " << c << ": " << errors[cache][c];
    }
  }
  for (int c = 0; c < kConversations; ++c) {
    ASSERT_EQ(texts[1][c].size(), static_cast<size_t>(kTurns));
    EXPECT_EQ(texts[1][c], texts[0][c]) << "conversation " << c;
  }
  DownAndCheck();
}

}  // namespace
}  // namespace kvtier
