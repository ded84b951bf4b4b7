// Scaling through membership (docs/membership.md, docs/serving.md "Draining"): a real etcd, a
// store, a prefill worker, decode workers and a router that all find each other through etcd
// (no static address lists). Under a steady load of greedy requests, a decode worker that joins
// receives traffic, and a decode worker that is drained (SIGTERM) leaves without one request
// failing; every answer equals the first answer to the same prompt.
#include <httplib.h>
#include <sys/wait.h>

#include <csignal>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/metrics_text.h"
#include "common/process.h"
#include "deploy/status.h"
#include "engine/model_config.h"
#include "engine/testing/model_writer.h"
#include "engine/testing/tokenizer_writer.h"
#include "gtest/gtest.h"
#include "membership/etcd_process.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "text/chat_template.h"

namespace kvtier {
namespace {

using json = nlohmann::json;

constexpr char kModelName[] = "tiny-scale";

class ScalingIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("scaling");
    model_dir_ = dir_ + "/model";
    const engine::ModelConfig config = *engine::PresetConfig("tiny");
    ASSERT_TRUE(testing::WriteRandomModel(config, 7, engine::DType::kF32, model_dir_).ok());
    ASSERT_TRUE(testing::WriteTokenizer(config, text::ChatFormat::kLlama3, model_dir_).ok());
    absl::StatusOr<membership::EtcdProcess> etcd = membership::EtcdProcess::Start({.dir = dir_});
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::make_unique<membership::EtcdProcess>(*std::move(etcd));
  }
  void TearDown() override {
    servers_.clear();
    etcd_.reset();
    testing::RemoveDirOrPrintLogs(
        dir_, HasFailure(),
        {"store.log", "prefill.log", "decode1.log", "decode2.log", "router.log"});
  }

  std::vector<std::string> Membership() const {
    return {"--membership-etcd=" + etcd_->endpoint(), "--membership-ttl-ms=3000"};
  }
  // Starts `binary` as `name` with membership and `args`; fails the test on error.
  ServerProcess* Start(const std::string& binary, const std::string& name,
                       std::vector<std::string> args) {
    args.insert(args.end(), {"--plaintext", "--listen=127.0.0.1:0"});
    for (const std::string& a : Membership()) args.push_back(a);
    absl::StatusOr<ServerProcess> p = ServerProcess::Start(binary, args, dir_, name);
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    servers_[name] = std::make_unique<ServerProcess>(*std::move(p));
    return servers_[name].get();
  }
  ServerProcess* StartWorker(const std::string& binary, const std::string& name) {
    return Start(binary, name,
                 {"--model-dir=" + model_dir_, "--model-name=" + std::string(kModelName),
                  "--threads=1", "--kv-cache-bytes=16MiB", "--max-batch-tokens=64",
                  "--max-batch-seqs=8", "--drain-timeout-ms=60000"});
  }
  // Requests the worker `w` finished, from its metrics.
  double Served(ServerProcess* w) {
    absl::StatusOr<ParsedMetrics> m =
        deploy::ScrapeMetrics({.port = w->metrics_port()}, absl::Seconds(5));
    return m.ok() ? m->Sum("kvtier_worker_e2e_request_latency_seconds_count") : -1;
  }

  std::string dir_;
  std::string model_dir_;
  std::unique_ptr<membership::EtcdProcess> etcd_;
  std::map<std::string, std::unique_ptr<ServerProcess>> servers_;
};

TEST_F(ScalingIntegrationTest, DecodeWorkersJoinAndDrainUnderLoadWithoutAFailedRequest) {
  ASSERT_NE(Start("kvtier-store", "store", {"--pool-bytes=16MiB", "--slot-bytes=64KiB"}), nullptr);
  ASSERT_NE(StartWorker("kvtier-prefill", "prefill"), nullptr);
  ServerProcess* d1 = StartWorker("kvtier-decode", "decode1");
  ASSERT_NE(d1, nullptr);
  // The router has no static worker list: everything comes from etcd.
  ServerProcess* router =
      Start("kvtier-router", "router",
            {"--model-dir=" + model_dir_, "--model-name=" + std::string(kModelName),
             "--skip-prefill-below=16", "--health-timeout-ms=500"});
  ASSERT_NE(router, nullptr);
  const int port = router->grpc_port();  // the router's ready file names its HTTP port so
  ASSERT_TRUE(WaitFor(
      [&] {
        httplib::Client c("127.0.0.1", port);
        httplib::Result r = c.Get("/health");
        return r && r->status == 200;
      },
      absl::Seconds(20)))
      << "the router never found a decode worker through etcd";

  // The load: 3 clients, each cycling over its prompts; an answer must equal the first answer
  // to its prompt (greedy), and every request must succeed.
  std::mutex mu;
  std::map<std::string, std::string> first_answer;
  std::vector<std::string> failures;
  int served = 0;
  absl::Notification stop;
  auto client = [&](int id) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    for (int i = 0; !stop.HasBeenNotified(); ++i) {
      const std::string prompt = absl::StrCat("client ", id, " says hello number ", i % 4,
                                              " to a long shared system of words and blocks");
      const json req = {
          {"model", kModelName}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}};
      httplib::Result r = c.Post("/v1/completions", req.dump(), "application/json");
      std::lock_guard<std::mutex> lock(mu);
      if (!r || r->status != 200) {
        failures.push_back(r ? absl::StrCat(r->status, " ", r->body) : "no response");
        continue;
      }
      const std::string text = json::parse(r->body)["choices"][0]["text"];
      auto [it, inserted] = first_answer.emplace(prompt, text);
      if (!inserted && it->second != text) failures.push_back("different answer to: " + prompt);
      ++served;
    }
  };
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) clients.emplace_back(client, i);
  auto served_now = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return served;
  };
  EXPECT_TRUE(WaitFor([&] { return served_now() >= 6; }, absl::Seconds(60)));

  // A second decode worker joins under load and receives traffic.
  ServerProcess* d2 = StartWorker("kvtier-decode", "decode2");
  ASSERT_NE(d2, nullptr);
  EXPECT_TRUE(WaitFor([&] { return Served(d2) >= 3; }, absl::Seconds(60)))
      << "the new decode worker received no traffic";

  // The first one drains: it leaves, finishes what it runs, exits 0; nothing fails.
  const double d1_before = Served(d1);
  EXPECT_GT(d1_before, 0);
  ASSERT_EQ(::kill(d1->process().pid(), SIGTERM), 0);
  std::optional<int> st = d1->process().Wait(absl::Seconds(60));
  ASSERT_TRUE(st.has_value()) << "the drained worker did not exit";
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << DescribeWaitStatus(*st);
  const int after_drain = served_now();
  EXPECT_TRUE(WaitFor([&] { return served_now() >= after_drain + 6; }, absl::Seconds(60)))
      << "serving did not go on with the remaining worker";

  stop.Notify();
  for (std::thread& t : clients) t.join();
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures.front();
  std::cerr << served << " requests served, " << first_answer.size() << " distinct prompts\n";
}

}  // namespace
}  // namespace kvtier
