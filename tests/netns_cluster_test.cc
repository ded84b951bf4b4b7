// A multi-host cluster on one machine under faults (issue 11, "Tests under a running multi-turn
// workload"): `kvtier up --config deploy/netns/cluster.yaml` (scaled down: small pools, its own
// namespace prefix and subnet) starts etcd, 3 store nodes, 2 prefill and 2 decode workers and
// the router, each on a host of its own (a network namespace, deploy/netns.h), UCX over TCP
// between them. Conversations run through the router the whole time (greedy; every turn is sent
// with the cache off first, the recompute, then with it on, and the two must be the same text),
// while the test, one after the other:
//   - kills one store node with SIGKILL: no request fails, no token differs (only misses);
//   - starts it again, empty: it joins through etcd and new keys land on it (the workers and
//     the router take their peers from etcd, not from lists);
//   - cuts another store's link: requests keep succeeding, each within a bound, and fall back
//     to recompute; then restores it;
//   - adds netem loss and delay to that store's link, where the kernel has netem;
//   - kills etcd and starts it again: serving continues, the live servers are registered again;
//   - kills a decode worker with SIGKILL: once the router has noticed, no request fails (it
//     marks a worker down after a failed call or a failed WorkerInfo poll, once a second, and
//     retries a request that failed before any text was streamed once on another worker).
// `kvtier down` in TearDown, also on failure; no namespace is left behind.
//
// Skipped where namespaces cannot be made (not root, no iproute2) or etcd is missing, and in
// sanitizer trees.
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/metrics_text.h"
#include "common/process.h"
#include "deploy/cluster.h"
#include "deploy/netns.h"
#include "deploy/status.h"
#include "engine/testing/test_util.h"
#include "gtest/gtest.h"
#include "membership/etcd_client.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace kvtier {
namespace {

using nlohmann::json;

const std::string kBin = KVTIER_BIN_DIR;
constexpr char kPrefix[] = "kvtnc";
constexpr char kSubnet[] = "10.213.9";
// Longest a request may take while a store's link is cut (the workers' store deadlines are 2 s
// per control call and 10 s per transfer batch: docs/serving.md).
constexpr absl::Duration kCutBound = absl::Seconds(10);

std::string Output(std::vector<std::string> argv, absl::Duration timeout = absl::Seconds(120)) {
  SpawnOptions o;
  o.argv = std::move(argv);
  o.stderr_path = "&1";
  absl::StatusOr<CommandResult> r = RunCommand(o, timeout);
  if (!r.ok()) return "FAILED: " + r.status().ToString();
  return r->ok() ? r->output
                 : absl::StrCat("FAILED (", DescribeWaitStatus(r->wait_status), "): ", r->output);
}

// One request of the workload.
struct Outcome {
  int conversation = 0, turn = 0;
  bool cache = false;
  absl::Time start, end;
  bool ok = false;
  std::string text;  // or the error
  int cached_tokens = 0;
};

class NetnsClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (absl::Status st = deploy::NetnsTopology::Available(); !st.ok()) GTEST_SKIP() << st;
    // Nine processes under faults, with bounds on request times: it runs in the gcc tree (CI
    // step 1, docs/testing.md); under a sanitizer it would only cost CI minutes.
    if (testing::kSanitized) GTEST_SKIP() << "runs in the unsanitized tree";
    if (absl::StartsWith(Output({"etcd", "--version"}), "FAILED")) {
      GTEST_SKIP() << "no etcd (Debian's etcd-server: deploy/install-deps.sh)";
    }
    dir_ = testing::MakeTempDir("netns_cluster");
    run_dir_ = dir_ + "/run";
  }

  void TearDown() override {
    if (dir_.empty()) return;  // skipped
    stop_ = true;
    for (std::thread& t : clients_) t.join();
    // Always stop whatever is left (a no-op after a successful `kvtier down`).
    Output({kBin + "/kvtier", "down", "--run-dir", run_dir_, "--stop-grace-s", "5"});
    EXPECT_FALSE(absl::StrContains(Output({"ip", "netns", "list"}), std::string(kPrefix) + "-"));
    EXPECT_FALSE(absl::StrContains(Output({"ip", "link", "show"}), std::string(kPrefix) + "br"));
    std::vector<std::string> logs;
    for (const char* name : {"etcd/etcd", "store-0", "store-1", "store-2", "prefill-0", "prefill-1",
                             "decode-0", "decode-1", "router"}) {
      logs.push_back(absl::StrCat("run/", name, ".log"));
    }
    testing::RemoveDirOrPrintLogs(dir_, HasFailure(), logs);
  }

  // `kvtier up` of deploy/netns/cluster.yaml, scaled down; the state it recorded.
  void Up() {
    const std::string out = Output({kBin + "/kvtier",
                                    "up",
                                    "--config",
                                    std::string(KVTIER_SOURCE_DIR) + "/deploy/netns/cluster.yaml",
                                    "--run-dir",
                                    run_dir_,
                                    "--netns-prefix",
                                    kPrefix,
                                    "--netns-subnet",
                                    kSubnet,
                                    "--store-pool-bytes",
                                    "32MiB",
                                    "--workers-kv-cache-bytes",
                                    "16MiB",
                                    "--workers-max-batch-tokens",
                                    "64",
                                    "--router-skip-prefill-below",
                                    "16",
                                    "--ready-timeout-s",
                                    "90",
                                    "--stop-grace-s",
                                    "5"});
    ASSERT_FALSE(absl::StartsWith(out, "FAILED")) << out;
    absl::StatusOr<std::optional<deploy::ClusterState>> state = deploy::ReadClusterState(run_dir_);
    ASSERT_TRUE(state.ok() && state->has_value()) << out;
    state_ = **state;
    ASSERT_EQ(state_.processes.size(), 9u);  // etcd, 3 stores, 2 + 2 workers, router
    ASSERT_EQ(state_.netns_prefix, kPrefix);
    // The endpoint is the router's host, on the bridge's subnet.
    EXPECT_EQ(state_.endpoint, absl::StrCat("https://", kSubnet, ".9:8080/v1")) << out;
    EXPECT_TRUE(absl::StrContains(out, state_.endpoint)) << out;
    for (const char* ns : {"etcd", "store0", "store1", "store2", "prefill0", "prefill1", "decode0",
                           "decode1", "router"}) {
      EXPECT_TRUE(
          absl::StrContains(Output({"ip", "netns", "list"}), absl::StrCat(kPrefix, "-", ns)))
          << ns;
    }
    api_key_ = *ReadSecretFile(deploy::CredentialsOf(run_dir_).api_key_file);
  }

  const deploy::ClusterProcess& Process(const std::string& name) {
    for (const deploy::ClusterProcess& p : state_.processes) {
      if (p.name == name) return p;
    }
    ADD_FAILURE() << "no process " << name;
    return state_.processes.front();
  }

  void Kill(const std::string& name) {
    const pid_t pid = Process(name).pid;
    ASSERT_EQ(kill(pid, SIGKILL), 0) << name;
    // `kvtier up` started it and exited: it is not our child, and gone once /proc says so.
    EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(pid); }, absl::Seconds(10))) << name;
  }

  std::unique_ptr<httplib::SSLClient> Client() const {
    const deploy::ClusterProcess* router = nullptr;
    for (const deploy::ClusterProcess& p : state_.processes) {
      if (p.name == "router") router = &p;
    }
    auto cli = std::make_unique<httplib::SSLClient>(router->host, router->port);
    cli->set_ca_cert_path(deploy::CredentialsOf(run_dir_).pki.ca_file.c_str());
    cli->enable_server_certificate_verification(true);
    cli->set_bearer_token_auth(api_key_.c_str());
    cli->set_connection_timeout(5, 0);
    cli->set_read_timeout(60, 0);
    return cli;
  }

  Outcome Send(httplib::SSLClient& cli, const json& messages, bool cache, int conv, int turn) {
    Outcome o;
    o.conversation = conv;
    o.turn = turn;
    o.cache = cache;
    const json req = {{"model", state_.model_name},
                      {"messages", messages},
                      {"max_tokens", 8},
                      {"temperature", 0},
                      {"cache", cache}};
    o.start = absl::Now();
    httplib::Result r = cli.Post("/v1/chat/completions", req.dump(), "application/json");
    o.end = absl::Now();
    if (!r || r->status != 200) {
      o.text = r ? absl::StrCat("HTTP ", r->status, " ", r->body)
                 : "no response: " + httplib::to_string(r.error());
      return o;
    }
    const json body = json::parse(r->body, nullptr, false);
    if (body.is_discarded() || !body.contains("choices")) {
      o.text = "bad body: " + r->body;
      return o;
    }
    o.ok = true;
    o.text = body["choices"][0]["message"]["content"].get<std::string>();
    o.cached_tokens =
        body["usage"].value("prompt_tokens_details", json::object()).value("cached_tokens", 0);
    return o;
  }

  // One client thread: conversations of up to 10 turns, one after the other, until stop_.
  void RunClient(int index) {
    std::unique_ptr<httplib::SSLClient> cli = Client();
    for (int conv = index; !stop_; conv += 100) {
      json messages = json::array(
          {{{"role", "system"},
            {"content", "You are the kvtier test assistant. Answer briefly and politely."}}});
      for (int turn = 1; turn <= 10 && !stop_; ++turn) {
        messages.push_back({{"role", "user"},
                            {"content", absl::StrCat("Conversation ", conv, ", question ", turn,
                                                     ": where is block ", conv * 7 + turn, "?")}});
        const Outcome off = Send(*cli, messages, /*cache=*/false, conv, turn);
        Record(off);
        if (!off.ok) break;  // a new conversation
        const Outcome on = Send(*cli, messages, /*cache=*/true, conv, turn);
        Record(on);
        if (on.ok && on.text != off.text) {
          std::lock_guard<std::mutex> l(mu_);
          wrong_.push_back(absl::StrCat("conversation ", conv, " turn ", turn, ": cache on ",
                                        json(on.text).dump(), ", recompute ",
                                        json(off.text).dump()));
        }
        messages.push_back({{"role", "assistant"}, {"content", off.text}});
      }
    }
  }

  void Record(const Outcome& o) {
    std::lock_guard<std::mutex> l(mu_);
    outcomes_.push_back(o);
  }

  // Waits (bounded by `timeout`) until `n` cache-on requests that started after `since` have
  // answered; false on timeout.
  bool AwaitTurns(absl::Time since, int n, absl::Duration timeout) {
    return WaitFor(
        [&] {
          std::lock_guard<std::mutex> l(mu_);
          return std::count_if(outcomes_.begin(), outcomes_.end(), [&](const Outcome& o) {
                   return o.cache && o.ok && o.start >= since;
                 }) >= n;
        },
        timeout);
  }

  // The requests that overlapped [t0, t1].
  std::vector<Outcome> During(absl::Time t0, absl::Time t1) {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<Outcome> out;
    for (const Outcome& o : outcomes_) {
      if (o.start <= t1 && o.end >= t0) out.push_back(o);
    }
    return out;
  }

  int DecodeWorkersUp() {
    std::unique_ptr<httplib::SSLClient> cli = Client();
    cli->set_read_timeout(2, 0);
    httplib::Result r = cli->Get("/health");
    if (!r) return -1;
    const json body = json::parse(r->body, nullptr, false);
    return body.is_object() ? body.value("decode_workers_up", -1) : -1;
  }

  std::string dir_, run_dir_, api_key_;
  deploy::ClusterState state_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> clients_;
  std::mutex mu_;
  std::vector<Outcome> outcomes_;   // mu_
  std::vector<std::string> wrong_;  // mu_
};

TEST_F(NetnsClusterTest, FaultsUnderAMultiTurnWorkload) {
  const absl::Time t_begin = absl::Now();
  ASSERT_NO_FATAL_FAILURE(Up());
  std::cerr << "cluster up in " << absl::FormatDuration(absl::Now() - t_begin) << "\n";
  absl::StatusOr<deploy::NetnsTopology> hosts = deploy::ClusterTopology(state_);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  EXPECT_EQ(hosts->Address("router"), absl::StrCat(kSubnet, ".9"));
  // `kvtier status` reaches every process at its host's address (etcd included).
  const std::string status = Output({kBin + "/kvtier", "status", "--run-dir", run_dir_});
  EXPECT_TRUE(absl::StrContains(status, "9/9 processes up")) << status;
  // A second cluster with the same namespace prefix is refused: it would delete this one's.
  const std::string again =
      Output({kBin + "/kvtier", "up", "--run-dir", dir_ + "/run2", "--model-dir",
              run_dir_ + "/models/tiny", "--netns", "--netns-prefix", kPrefix, "--netns-subnet",
              kSubnet, "--router-port", "0"});
  EXPECT_TRUE(absl::StrContains(again, "another topology uses the prefix")) << again;
  EXPECT_TRUE(absl::StrContains(Output({kBin + "/kvtier", "status", "--run-dir", run_dir_}),
                                "9/9 processes up"));
  for (int i = 0; i < 3; ++i) clients_.emplace_back([this, i] { RunClient(i); });
  ASSERT_TRUE(AwaitTurns(t_begin, 6, absl::Seconds(60))) << "the workload does not run";

  // 1. A store node dies: misses only.
  const absl::Time t_store_kill = absl::Now();
  Kill("store-2");
  ASSERT_TRUE(AwaitTurns(t_store_kill, 6, absl::Seconds(60)));

  // 1b. A store node joins (store-2 again, empty, on its host): the workers, which take their
  // stores from etcd, place new keys on it.
  ASSERT_TRUE(deploy::RestartClusterProcess(&state_, "store-2", absl::Seconds(30)).ok());
  auto store2_blocks = [&] {
    absl::StatusOr<ParsedMetrics> m = deploy::ScrapeMetrics(
        deploy::TargetOf(Process("store-2"), deploy::CredentialsOf(run_dir_), ""),
        absl::Seconds(5));
    return m.ok() ? m->Sum("kvtier_store_blocks", {{"tier", "memory"}}) : -1;
  };
  EXPECT_TRUE(WaitFor([&] { return store2_blocks() > 0; }, absl::Seconds(60)))
      << "no block reached the store node that joined";

  // 2. Another store's link is cut (its host is unreachable, connections hang), then restored.
  const absl::Time t_cut = absl::Now();
  ASSERT_TRUE(hosts->SetLinkUp("store1", false).ok());
  const bool cut_served = AwaitTurns(t_cut, 4, absl::Seconds(60));
  const absl::Time t_uncut = absl::Now();
  ASSERT_TRUE(hosts->SetLinkUp("store1", true).ok());
  EXPECT_TRUE(cut_served) << "no request was answered while store1 was cut off";
  ASSERT_TRUE(AwaitTurns(t_uncut, 4, absl::Seconds(60)));

  // 3. Loss and delay on that link, where the kernel has netem.
  absl::Status netem = hosts->SetNetem("store1", absl::Milliseconds(50), 10);
  if (absl::IsFailedPrecondition(netem)) {
    std::cerr << "netem part skipped: " << netem << "\n";
  } else {
    ASSERT_TRUE(netem.ok()) << netem;
    EXPECT_TRUE(AwaitTurns(absl::Now(), 4, absl::Seconds(60))) << "nothing served under netem";
    ASSERT_TRUE(hosts->ClearNetem("store1").ok());
  }

  // 4. etcd restarts: serving goes on, and the live servers are registered again.
  Kill("etcd");
  const absl::Time t_etcd = absl::Now();
  ASSERT_TRUE(AwaitTurns(t_etcd, 2, absl::Seconds(60))) << "nothing served without etcd";
  absl::Status restarted = deploy::RestartClusterProcess(&state_, "etcd", absl::Seconds(30));
  ASSERT_TRUE(restarted.ok()) << restarted;
  auto etcd = membership::EtcdClient::Create(
      {.endpoints = {absl::StrCat("http://", Process("etcd").address())}});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  // Every live server registers again (members of every role under /kvtier/members/).
  auto registered = [&](const std::string& name) {
    auto range = (*etcd)->GetPrefix("/kvtier/members/");
    if (!range.ok()) return false;
    for (const auto& kv : range->kvs) {
      if (absl::StrContains(kv.value, "\"" + Process(name).address() + "\"")) return true;
    }
    return false;
  };
  for (const char* name :
       {"store-0", "store-1", "prefill-0", "prefill-1", "decode-0", "decode-1"}) {
    EXPECT_TRUE(WaitFor([&] { return registered(name); }, absl::Seconds(30))) << name;
  }
  ASSERT_TRUE(AwaitTurns(absl::Now(), 4, absl::Seconds(60)));

  // Between hosts, blocks move over UCX (TCP through the bridge), never through a mapped pool.
  double ucx = 0, mapped = 0;
  for (const char* name : {"prefill-0", "prefill-1", "decode-0", "decode-1"}) {
    absl::StatusOr<ParsedMetrics> m = deploy::ScrapeMetrics(
        deploy::TargetOf(Process(name), deploy::CredentialsOf(run_dir_), ""), absl::Seconds(5));
    ASSERT_TRUE(m.ok()) << name << ": " << m.status();
    for (const char* family :
         {"kvtier_worker_store_blocks_total", "kvtier_worker_fetch_blocks_total"}) {
      ucx += m->Sum(family, {{"path", "ucx"}});
      mapped += m->Sum(family, {{"path", "mapped"}});
    }
  }
  EXPECT_GT(ucx, 0);
  EXPECT_EQ(mapped, 0);

  // 5. A decode worker dies: requests in flight on it may fail; once the router has noticed,
  // none does.
  const absl::Time t_decode_kill = absl::Now();
  Kill("decode-0");
  ASSERT_TRUE(WaitFor([&] { return DecodeWorkersUp() == 1; }, absl::Seconds(30)));
  const absl::Time t_noticed = absl::Now();
  ASSERT_TRUE(AwaitTurns(t_noticed, 6, absl::Seconds(60)));
  stop_ = true;
  for (std::thread& t : clients_) t.join();
  clients_.clear();

  // Every response matched its recompute, and nothing failed outside the decode worker's death.
  std::lock_guard<std::mutex> l(mu_);
  EXPECT_TRUE(wrong_.empty()) << wrong_.size() << " wrong, the first: " << wrong_.front();
  int compared = 0, cached = 0, failed = 0;
  absl::Duration worst_cut = absl::ZeroDuration(), worst = absl::ZeroDuration();
  for (const Outcome& o : outcomes_) {
    compared += o.cache && o.ok;
    cached += o.cache && o.cached_tokens > 0;
    worst = std::max(worst, o.end - o.start);
    if (o.start <= t_uncut && o.end >= t_cut) worst_cut = std::max(worst_cut, o.end - o.start);
    if (o.ok) continue;
    ++failed;
    // In flight when decode-0 died, or started before the router noticed.
    EXPECT_TRUE(o.end >= t_decode_kill && o.start <= t_noticed)
        << "conversation " << o.conversation << " turn " << o.turn
        << (o.cache ? "" : " (cache off)") << " failed at +"
        << absl::FormatDuration(o.start - t_begin) << ": " << o.text;
  }
  EXPECT_LT(worst_cut, kCutBound) << "a request took that long while store1 was cut off";
  EXPECT_GT(cached, 0) << "the tier served nothing";
  std::cerr << "requests " << outcomes_.size() << ", compared " << compared << ", with cached "
            << "tokens " << cached << ", failed " << failed << " (decode-0 killed; router "
            << "noticed after " << absl::FormatDuration(t_noticed - t_decode_kill) << "); link cut "
            << absl::FormatDuration(t_uncut - t_cut) << ", worst request "
            << "during it " << absl::FormatDuration(worst_cut) << ", worst overall "
            << absl::FormatDuration(worst) << "; test "
            << absl::FormatDuration(absl::Now() - t_begin) << "\n";
}

}  // namespace
}  // namespace kvtier
