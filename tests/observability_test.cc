// Observability of a running local cluster (docs/observability.md): a real cluster (store with
// spill, a prefill and a decode worker, the router; a generated tiny model on the CPU) started
// with StartCluster, a multi-turn chat through the router's HTTPS API, and every process's
// /metrics scraped and parsed (common/metrics_text.h) between the turns: the counters of the
// router, the store and the workers move as the chat runs, and turn 2 reuses cached K/V.
// Then `kvtier status --run-dir` as a real process (every process up; a stopped one and a
// killed one shown as down, the screen still bounded; the killed one restarted on its ports
// shown as up again), and the Grafana dashboard
// (deploy/grafana/kvtier.json): every metric its queries name is exported by the cluster.
#include <httplib.h>
#include <signal.h>

#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/metrics_text.h"
#include "common/process.h"
#include "common/tls.h"
#include "deploy/cluster.h"
#include "deploy/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace kvtier {
namespace {

using nlohmann::json;
using testing::MakeTempDir;

const std::string kBin = KVTIER_BIN_DIR;

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("observability");
    config_.run_dir = dir_ + "/run";
    config_.model_dir = dir_ + "/model";
    config_.model_name = "tiny-chat";
    config_.store_pool_bytes = "32MiB";
    config_.store_slot_bytes = "64KiB";
    config_.store_spill_capacity = "64MiB";
    config_.prefill_workers = 1;
    config_.decode_workers = 1;
    config_.worker_kv_cache_bytes = "16MiB";
    config_.worker_max_batch_tokens = 64;
    config_.router_port = 0;
    config_.router_skip_prefill_below = 16;
    config_.ready_timeout_s = 60;
    config_.stop_grace_s = 5;
    std::ostringstream log;
    absl::StatusOr<deploy::ClusterState> state = deploy::StartCluster(config_, kBin, log);
    ASSERT_TRUE(state.ok()) << state.status() << "\n" << log.str();
    state_ = *state;
    creds_ = deploy::CredentialsOf(state_.run_dir);
    absl::StatusOr<std::string> key = ReadSecretFile(creds_.api_key_file);
    ASSERT_TRUE(key.ok()) << key.status();
    api_key_ = *key;
  }

  void TearDown() override {
    // Always stop the cluster, also after a failed assertion.
    for (const deploy::ClusterProcess& p : state_.processes) kill(p.pid, SIGCONT);
    std::ostringstream log;
    absl::Status s = deploy::StopCluster(config_.run_dir, absl::Seconds(5), log);
    if (!state_.processes.empty()) {
      EXPECT_TRUE(s.ok()) << s << "\n" << log.str();
    }
    if (HasFailure()) {
      for (const deploy::ClusterProcess& p : state_.processes) {
        std::cerr << "---- " << p.name << "\n" << FileTail(p.log, 6000) << "\n";
      }
    } else {
      std::filesystem::remove_all(dir_);
    }
  }

  // name -> its parsed /metrics; a process that does not answer fails the test.
  std::map<std::string, ParsedMetrics> ScrapeAll() {
    std::map<std::string, ParsedMetrics> out;
    for (const deploy::ClusterProcess& p : state_.processes) {
      EXPECT_GT(p.metrics_port, 0) << p.name;
      absl::StatusOr<ParsedMetrics> m =
          deploy::ScrapeMetrics(deploy::TargetOf(p, creds_, api_key_), absl::Seconds(5));
      EXPECT_TRUE(m.ok()) << p.name << ": " << m.status();
      if (m.ok()) out[p.name] = *std::move(m);
    }
    return out;
  }

  // One non-streamed chat turn through the router; appends the reply to `messages`.
  void Turn(json* messages, const std::string& user) {
    messages->push_back({{"role", "user"}, {"content", user}});
    httplib::SSLClient cli("127.0.0.1", state_.processes.back().port);
    cli.set_ca_cert_path(creds_.pki.ca_file.c_str());
    cli.enable_server_certificate_verification(true);
    cli.set_bearer_token_auth(api_key_.c_str());
    cli.set_read_timeout(60, 0);
    json req = {
        {"model", "tiny-chat"}, {"messages", *messages}, {"max_tokens", 8}, {"temperature", 0}};
    httplib::Result r = cli.Post("/v1/chat/completions", req.dump(), "application/json");
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    ASSERT_EQ(r->status, 200) << r->body;
    json body = json::parse(r->body, nullptr, false);
    ASSERT_FALSE(body.is_discarded()) << r->body;
    messages->push_back(
        {{"role", "assistant"}, {"content", body["choices"][0]["message"]["content"]}});
  }

  // `kvtier status --run-dir` as a real process; bounded.
  CommandResult Status(int timeout_s = 30) {
    SpawnOptions o;
    o.argv = {kBin + "/kvtier", "status", "--run-dir", config_.run_dir, "--timeout", "1"};
    o.stderr_path = "&1";
    absl::StatusOr<CommandResult> r = RunCommand(o, absl::Seconds(timeout_s));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CommandResult{};
  }

  // Whether the status screen shows process `p` as up (`yes`) or down (`no`).
  static bool Shows(const std::string& screen, const deploy::ClusterProcess& p,
                    const std::string& up) {
    const std::regex row("(^|\n)" + p.name + " +" + std::to_string(p.pid) + " +" + up + " ");
    return std::regex_search(screen, row);
  }

  std::string dir_;
  deploy::ClusterConfig config_;
  deploy::ClusterState state_;
  deploy::ClusterCredentials creds_;
  std::string api_key_;
};

TEST_F(ObservabilityTest, CountersMoveStatusAndDashboard) {
  ASSERT_EQ(state_.processes.size(), 4u);  // store, prefill-0, decode-0, router
  const MetricLabels decode = {{"role", "decode"}};
  constexpr char kPrompt[] = "kvtier_worker_prompt_tokens_total";
  auto reused = [&](const ParsedMetrics& m) {
    return m.Sum(kPrompt, {{"role", "decode"}, {"source", "first_tier"}}) +
           m.Sum(kPrompt, {{"role", "decode"}, {"source", "store"}});
  };
  std::map<std::string, ParsedMetrics> before = ScrapeAll();
  ASSERT_EQ(before.size(), 4u);

  json messages = json::array(
      {{{"role", "system"},
        {"content",
         "You are the assistant of the kvtier observability test. You answer questions about "
         "caches, metrics and dashboards in short sentences, politely and precisely."}}});
  ASSERT_NO_FATAL_FAILURE(Turn(&messages, "What does a metrics endpoint serve?"));
  std::map<std::string, ParsedMetrics> one = ScrapeAll();
  ASSERT_EQ(one.size(), 4u);

  // Turn 1: every service counted it.
  EXPECT_GT(one["router"].Sum("kvtier_router_requests_total",
                              {{"endpoint", "chat_completions"}, {"status", "200"}}),
            before["router"].Sum("kvtier_router_requests_total",
                                 {{"endpoint", "chat_completions"}, {"status", "200"}}));
  EXPECT_GT(one["router"].Sum("kvtier_router_prompt_tokens_total"), 0);
  EXPECT_EQ(one["router"].Sum("kvtier_router_time_to_first_token_seconds_count"), 1);
  EXPECT_GT(one["store"].Sum("kvtier_store_lookups_total"),
            before["store"].Sum("kvtier_store_lookups_total"));
  EXPECT_GT(one["prefill-0"].Sum("kvtier_worker_store_blocks_total", {{"role", "prefill"}}), 0);
  EXPECT_GT(one["decode-0"].Sum(kPrompt, decode), 0);
  EXPECT_GT(one["decode-0"].Sum("kvtier_worker_generation_tokens_total", decode), 0);
  EXPECT_EQ(one["decode-0"].Sum("kvtier_worker_time_to_first_token_seconds_count", decode), 1);
  EXPECT_GT(one["decode-0"].Sum("kvtier_worker_requests_total", decode), 0);

  // Turns 2 and 3 reuse the conversation's K/V: from the decode worker's own pages or the store.
  ASSERT_NO_FATAL_FAILURE(Turn(&messages, "And what does a dashboard show from it?"));
  ASSERT_NO_FATAL_FAILURE(Turn(&messages, "Thank you, that is all."));
  std::map<std::string, ParsedMetrics> three = ScrapeAll();
  ASSERT_EQ(three.size(), 4u);
  EXPECT_GT(reused(three["decode-0"]), reused(one["decode-0"]));
  EXPECT_GT(three["decode-0"].Sum("kvtier_worker_time_to_first_token_seconds_count",
                                  {{"role", "decode"}, {"cache", "hit"}}),
            0);
  EXPECT_EQ(three["decode-0"].Sum("kvtier_worker_time_to_first_token_seconds_count", decode), 3);
  EXPECT_GT(three["decode-0"].Sum("kvtier_worker_inter_token_latency_seconds_count", decode), 0);
  EXPECT_GT(three["decode-0"].Sum("kvtier_worker_generation_tokens_total", decode),
            one["decode-0"].Sum("kvtier_worker_generation_tokens_total", decode));
  EXPECT_GT(three["router"].Sum("kvtier_router_cached_tokens_total"), 0);
  EXPECT_EQ(three["router"].Sum("kvtier_router_time_to_first_token_seconds_count"), 3);
  EXPECT_GT(three["store"].Sum("kvtier_store_hit_blocks_total"), 0);
  EXPECT_GT(three["store"].Sum("kvtier_store_bytes_in_total"), 0);

  // The dashboard names only metrics the cluster exports (a histogram's _bucket, _sum and
  // _count are samples of its family).
  std::set<std::string> exported;
  for (const auto& [name, m] : three) {
    for (const MetricSample& s : m.samples) exported.insert(s.name);
    for (const std::string& f : m.Families()) exported.insert(f);
  }
  const std::string dashboard_path = std::string(KVTIER_SOURCE_DIR) + "/deploy/grafana/kvtier.json";
  json dashboard = json::parse(FileTail(dashboard_path, std::string::npos), nullptr, false);
  ASSERT_FALSE(dashboard.is_discarded()) << dashboard_path;
  EXPECT_EQ(dashboard.value("title", ""), "kvtier");
  const std::regex metric_name("kvtier_[A-Za-z0-9_:]+");
  int queries = 0;
  std::set<std::string> named;
  std::function<void(const json&)> walk = [&](const json& panels) {
    for (const json& panel : panels) {
      if (panel.contains("panels")) walk(panel["panels"]);
      if (!panel.contains("targets")) continue;
      for (const json& target : panel["targets"]) {
        const std::string expr = target.value("expr", "");
        ++queries;
        for (std::sregex_iterator it(expr.begin(), expr.end(), metric_name), end; it != end; ++it) {
          named.insert(it->str());
        }
      }
    }
  };
  walk(dashboard["panels"]);
  EXPECT_GT(queries, 20);
  EXPECT_GT(named.size(), 30u);
  for (const std::string& n : named) {
    EXPECT_TRUE(exported.count(n) > 0) << "the dashboard names " << n << ", no process exports it";
  }

  // `kvtier status`: every process up.
  CommandResult status = Status();
  EXPECT_TRUE(status.ok()) << status.output;
  for (const deploy::ClusterProcess& p : state_.processes) {
    EXPECT_TRUE(Shows(status.output, p, "yes")) << p.name << ":\n" << status.output;
  }
  EXPECT_NE(status.output.find("4/4 processes up"), std::string::npos) << status.output;

  // A stopped process (it accepts connections but never answers) is down, and the screen
  // still comes within the scrape timeout; a killed one is down too.
  const deploy::ClusterProcess& prefill = state_.processes[1];
  const deploy::ClusterProcess& decode_p = state_.processes[2];
  ASSERT_EQ(prefill.name, "prefill-0");
  ASSERT_EQ(decode_p.name, "decode-0");
  ASSERT_EQ(kill(prefill.pid, SIGSTOP), 0);
  ASSERT_EQ(kill(decode_p.pid, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return !ProcessAlive(decode_p.pid); }, absl::Seconds(10)));
  const absl::Time t0 = absl::Now();
  status = Status();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(15));
  kill(prefill.pid, SIGCONT);
  EXPECT_TRUE(status.ok()) << status.output;
  EXPECT_TRUE(Shows(status.output, prefill, "no")) << status.output;
  EXPECT_TRUE(Shows(status.output, decode_p, "no")) << status.output;
  EXPECT_NE(status.output.find("not running"), std::string::npos) << status.output;
  EXPECT_TRUE(Shows(status.output, state_.processes[0], "yes")) << status.output;
  EXPECT_NE(status.output.find("2/4 processes up"), std::string::npos) << status.output;

  // The killed worker started again (the soak's restart) keeps its ports, so the state file
  // still finds its metrics.
  const int metrics_port = decode_p.metrics_port;
  absl::Status restarted = deploy::RestartClusterProcess(&state_, "decode-0", absl::Seconds(30));
  ASSERT_TRUE(restarted.ok()) << restarted;
  EXPECT_EQ(decode_p.metrics_port, metrics_port);
  absl::StatusOr<std::optional<deploy::ClusterState>> recorded =
      deploy::ReadClusterState(config_.run_dir);
  ASSERT_TRUE(recorded.ok() && recorded->has_value());
  EXPECT_EQ((*recorded)->processes[2].metrics_port, metrics_port);
  EXPECT_EQ((*recorded)->processes[2].pid, decode_p.pid);
  status = Status();
  for (const deploy::ClusterProcess& p : state_.processes) {
    EXPECT_TRUE(Shows(status.output, p, "yes")) << p.name << ":\n" << status.output;
  }
}

}  // namespace
}  // namespace kvtier
