#include "bench/soak_bench.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "common/process.h"
#include "common/status_macros.h"
#include "common/synthetic_block.h"
#include "deploy/cluster.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace kvtier::bench {
namespace {

using nlohmann::json;

constexpr double kMiB = 1024.0 * 1024.0;
// A failed request is sent again this many times at most, 1 s more apart each time.
constexpr int kAttempts = 5;
// A request that overlaps a worker's kill and restart, or ends within this long after it, may
// fail (a stream cut after its first text cannot be moved to another worker).
constexpr double kFaultGraceS = 10;
// Probe prefixes: blocks per prefix, bytes per block, one prefix every this many seconds.
constexpr int kProbeBlocks = 4;
constexpr size_t kProbeBlockBytes = 16 * 1024;
constexpr double kProbeIntervalS = 2;
// RSS: sampled this often; warm-up excluded from the growth check; growth allowed.
constexpr double kRssIntervalS = 2;
constexpr double kRssGrowth = 1.25;
constexpr double kRssSlackBytes = 16 * kMiB;
// The first fault comes after this long.
constexpr double kWarmupS = 5;
// Bound on a restarted process's start.
constexpr absl::Duration kRestartTimeout = absl::Seconds(60);

const std::vector<std::string> kFaultKinds = {"store-kill", "store-stop", "worker-kill",
                                              "conn-kill"};

// System prompts: conversations c % 3 == 0 and 1 share one of the first two, c % 3 == 2 have
// none.
const char* const kSystems[] = {
    "You are a helpful assistant of the kvtier project. You answer questions about caching, "
    "serving and the weather in short sentences, and never invent facts.",
    "You are a terse librarian. Answer every question with the title of a book and one line "
    "about why it fits, and nothing else at all."};

double Seconds(int64_t from_ns) { return (MonoNowNs() - from_ns) * 1e-9; }

// ---------------------------------------------------------------------------------------------
// The router's OpenAI API

struct Reply {
  bool ok = false;  // a complete 200 answer
  std::string error;
  std::string text;
  std::string finish_reason;
  int64_t completion_tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
};

void ReadUsage(const json& j, Reply* r) {
  if (!j.contains("usage") || !j["usage"].is_object()) return;
  const json& u = j["usage"];
  r->prompt_tokens = u.value("prompt_tokens", int64_t{0});
  r->completion_tokens = u.value("completion_tokens", int64_t{0});
  if (u.contains("prompt_tokens_details") && u["prompt_tokens_details"].is_object()) {
    r->cached_tokens = u["prompt_tokens_details"].value("cached_tokens", int64_t{0});
  }
}

// How the soak reaches its cluster, which `kvtier up`'s code started with TLS, the service token
// and an API key (docs/security.md): the router's CA and the key, the store's credentials.
struct ClusterAccess {
  std::string ca_file;
  std::string api_key;
  std::shared_ptr<grpc::ChannelCredentials> store_creds;
};

// POSTs `request` to /v1/chat/completions, streamed (SSE, read to [DONE]) or not. With `drop`
// (streamed only) the client closes the connection once the first text arrived.
Reply Chat(int port, const ClusterAccess& access, json request, bool stream, bool drop) {
  Reply r;
  request["stream"] = stream;
  if (stream) request["stream_options"] = {{"include_usage", true}};
  httplib::SSLClient client("127.0.0.1", port);
  client.set_ca_cert_path(access.ca_file.c_str());
  client.enable_server_certificate_verification(true);
  client.set_bearer_token_auth(access.api_key.c_str());
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(60, 0);
  client.set_write_timeout(10, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = request.dump();
  req.set_header("Content-Type", "application/json");

  int status = 0;
  std::string body, pending;
  bool done = false;
  auto handle_line = [&](absl::string_view line) {
    if (!absl::ConsumePrefix(&line, "data:")) return;
    line = absl::StripLeadingAsciiWhitespace(line);
    if (line == "[DONE]") {
      done = true;
      return;
    }
    json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || j.contains("error")) {
      if (r.error.empty()) r.error = absl::StrCat("SSE event: ", line.substr(0, 300));
      return;
    }
    ReadUsage(j, &r);
    if (!j.contains("choices") || !j["choices"].is_array()) return;
    for (const json& c : j["choices"]) {
      if (c.contains("delta") && c["delta"].is_object() && c["delta"].contains("content") &&
          c["delta"]["content"].is_string()) {
        r.text += c["delta"]["content"].get<std::string>();
      }
      if (c.contains("finish_reason") && c["finish_reason"].is_string()) {
        r.finish_reason = c["finish_reason"].get<std::string>();
      }
    }
  };
  req.response_handler = [&](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (!stream || status != 200) {
      body.append(data, n);
      return true;
    }
    pending.append(data, n);
    for (size_t pos; (pos = pending.find('\n')) != std::string::npos; pending.erase(0, pos + 1)) {
      handle_line(absl::StripTrailingAsciiWhitespace(absl::string_view(pending.data(), pos)));
    }
    return !(drop && !r.text.empty());
  };
  httplib::Result res = client.send(req);
  if (!res) {
    r.error = absl::StrCat("HTTP: ", httplib::to_string(res.error()));
    return r;
  }
  if (res->status != 200) {
    r.error = absl::StrCat("HTTP ", res->status, ": ", body.substr(0, 300));
    return r;
  }
  if (stream) {
    handle_line(absl::StripTrailingAsciiWhitespace(pending));
    if (r.error.empty() && (!done || r.finish_reason.empty())) {
      r.error = absl::StrCat("incomplete stream (done=", done, ", finish_reason '", r.finish_reason,
                             "')");
    }
  } else {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("choices") || !j["choices"].is_array() ||
        j["choices"].empty() || !j["choices"][0].contains("message")) {
      r.error = "bad response body: " + body.substr(0, 300);
    } else {
      const json& c = j["choices"][0];
      r.text = c["message"].value("content", "");
      r.finish_reason = c.value("finish_reason", "");
      ReadUsage(j, &r);
    }
  }
  r.ok = r.error.empty();
  return r;
}

// ---------------------------------------------------------------------------------------------
// The store's control plane (Stats, GetInfo), for the checks

// One unary call of the store's control plane, bounded by 2 s.
template <typename Request, typename Response>
absl::StatusOr<Response> StoreCall(const std::string& address, const ClusterAccess& access,
                                   grpc::Status (v1::CacheStore::Stub::*call)(grpc::ClientContext*,
                                                                              const Request&,
                                                                              Response*)) {
  auto stub = v1::CacheStore::NewStub(grpc::CreateChannel(address, access.store_creds));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  Response r;
  grpc::Status s = (stub.get()->*call)(&ctx, Request(), &r);
  if (!s.ok()) return absl::UnavailableError("store: " + s.error_message());
  return r;
}

absl::StatusOr<v1::StatsResponse> StoreStats(const std::string& address,
                                             const ClusterAccess& access) {
  return StoreCall(address, access, &v1::CacheStore::Stub::Stats);
}

// Blocks that left the store for good by eviction: dropped from memory without a disk copy,
// or dropped from the spill tier.
uint64_t EvictedForGood(const v1::StatsResponse& s) { return s.evictions() + s.spill_drops(); }

// ---------------------------------------------------------------------------------------------
// Shared state of one soak

struct FaultEvent {
  std::string kind;  // store-kill, store-stop, worker-kill, conn-kill, drop, crash
  std::string target;
  double start_s = 0, end_s = 0;
  std::string detail;
};

struct Probe {
  int generation = 0;  // the store process it was written to (0: the first)
  std::vector<BlockKey> keys;
  uint64_t evicted_before = 0;  // EvictedForGood before its Put
  bool checked = false;
};

struct RssSample {
  double t_s = 0;
  uint64_t bytes = 0;
};

class Soak {
 public:
  Soak(const SoakBenchOptions& o, deploy::ClusterState state, int64_t start_ns)
      : o_(o), state_(std::move(state)), start_ns_(start_ns) {}

  absl::Status Init();
  // Runs the workload, the injector, the probe writer and the monitor; returns when the
  // workload's time is up and every thread has stopped.
  void Run();
  // The end checks and the report; the exit code.
  int Finish();

 private:
  double Now() const { return Seconds(start_ns_); }
  double fault_end_s() const { return std::max(0.0, o_.seconds - o_.quiet_seconds); }
  bool FaultsActive() const { return Now() < fault_end_s(); }
  std::string StoreAddress() { return absl::StrCat("127.0.0.1:", Find("store")->port); }
  deploy::ClusterProcess* Find(const std::string& name) {
    for (deploy::ClusterProcess& p : state_.processes) {
      if (p.name == name) return &p;
    }
    return nullptr;
  }
  void SleepFor(double s) {
    const double until = Now() + s;
    while (!stop_ && Now() < until) absl::SleepFor(absl::Milliseconds(50));
  }
  // A fault starts now (it explains failures from now on: see Explained); EndFault logs it.
  size_t BeginFault(const std::string& kind, const std::string& target);
  void EndFault(size_t index, const std::string& detail);
  // Whether a worker's kill and restart, a reset of its connections or a crash overlapped
  // [t0, t1] or ended less than kFaultGraceS before t0.
  bool Explained(double t0, double t1);

  // Clients.
  void Client(int index);
  void Conversation(int conv, std::mt19937_64& rng);
  Reply Send(const json& request, bool stream, int conv, int turn);

  // Faults. Each runs with cluster_mu_ held.
  void Injector();
  absl::Status Kill(const std::string& name);
  absl::Status Restart(const std::string& name);
  void StopStore(double seconds);

  // Probes.
  void ProbeWriter();
  void WriteProbe();
  void CheckProbes(int generation);

  // RSS and crashes.
  void Monitor();

  const SoakBenchOptions& o_;
  std::mutex cluster_mu_;  // state_, generation_, probes_, rss_, and every fault
  deploy::ClusterState state_;
  const int64_t start_ns_;
  std::string model_;
  int port_ = 0;
  int generation_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> next_conv_{0};

  std::mutex mu_;                           // what follows
  std::map<std::string, Reply> reference_;  // request JSON → its cache-off reply
  std::vector<FaultEvent> faults_;
  std::vector<std::string> wrong_;        // the first mismatches
  std::vector<std::string> unexplained_;  // the first unexplained failures
  int64_t requests_ = 0, compared_ = 0, wrong_count_ = 0, failed_attempts_ = 0,
          explained_failures_ = 0, unexplained_count_ = 0, abandoned_ = 0, drops_ = 0;
  int64_t prompt_tokens_ = 0, cached_tokens_ = 0, crashes_ = 0, restart_failures_ = 0;

  // Probes (cluster_mu_).
  std::unique_ptr<StoreClient> probe_client_;
  NamespaceId probe_ns_{};
  std::vector<Probe> probes_;
  int64_t probes_uncommitted_ = 0, probes_complete_ = 0, probes_explained_ = 0, probes_lost_ = 0;
  std::vector<std::string> lost_;

  ClusterAccess access_;                               // set by Init
  std::map<std::string, std::vector<RssSample>> rss_;  // by process name (cluster_mu_)
};

absl::Status Soak::Init() {
  model_ = state_.model_name;
  port_ = Find("router")->port;
  const deploy::ClusterCredentials creds = deploy::CredentialsOf(state_.run_dir);
  access_.ca_file = creds.pki.ca_file;
  KVTIER_ASSIGN_OR_RETURN(access_.api_key, ReadSecretFile(creds.api_key_file));
  KVTIER_ASSIGN_OR_RETURN(access_.store_creds, MakeChannelCredentials(creds.pki.Options()));
  StoreClientOptions so;
  so.stores = {StoreAddress()};
  so.tls = creds.pki.Options();
  so.retry_after = absl::Milliseconds(200);
  KVTIER_ASSIGN_OR_RETURN(probe_client_, StoreClient::Create(so));
  NamespaceParams np;
  np.tenant_salt = absl::StrCat("kvtier-bench soak probes ", getpid(), " ", start_ns_);
  probe_ns_ = ComputeNamespace(np);
  return absl::OkStatus();
}

size_t Soak::BeginFault(const std::string& kind, const std::string& target) {
  std::lock_guard<std::mutex> l(mu_);
  faults_.push_back({kind, target, Now(), std::numeric_limits<double>::infinity(), ""});
  return faults_.size() - 1;
}

void Soak::EndFault(size_t index, const std::string& detail) {
  std::lock_guard<std::mutex> l(mu_);
  FaultEvent& e = faults_[index];
  e.end_s = Now();
  e.detail = detail;
  spdlog::info("soak t={:.1f}s {} {} ({:.1f} s){}{}", e.start_s, e.kind, e.target,
               e.end_s - e.start_s, e.detail.empty() ? "" : ": ", e.detail);
}

bool Soak::Explained(double t0, double t1) {
  std::lock_guard<std::mutex> l(mu_);
  for (const FaultEvent& f : faults_) {
    // Store faults explain nothing: the tier's failures must cost misses, never an error.
    const bool worker = f.kind == "worker-kill" || f.kind == "crash" ||
                        (f.kind == "conn-kill" && f.target != "store");
    if (worker && f.start_s <= t1 && f.end_s + kFaultGraceS >= t0) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Clients

void Soak::Client(int index) {
  std::mt19937_64 rng(o_.seed * 7919 + uint64_t(index));
  while (!stop_ && Now() < o_.seconds) Conversation(next_conv_++ % o_.conversations, rng);
}

void Soak::Conversation(int conv, std::mt19937_64& rng) {
  // The script depends on the seed and the conversation only, so a replay sends the same
  // requests (the remembered cache-off replies serve again, and the tier has their blocks).
  std::mt19937_64 script(o_.seed * 1000003 + uint64_t(conv));
  json messages = json::array();
  if (conv % 3 != 2) messages.push_back({{"role", "system"}, {"content", kSystems[conv % 3]}});
  for (int turn = 1; turn <= o_.turns; ++turn) {
    if (stop_ || Now() >= o_.seconds) return;
    std::string text = absl::StrCat("Conversation ", conv, " turn ", turn, ":");
    const int words = 6 + int(script() % 25);
    for (int i = 0; i < words; ++i) absl::StrAppend(&text, " ", kWords[script() % kNumWords]);
    messages.push_back({{"role", "user"}, {"content", text + "?"}});
    json request = {{"model", model_},
                    {"messages", messages},
                    {"max_tokens", 4 + int(script() % 21)},
                    {"temperature", 0}};
    const std::string key = request.dump();

    Reply expected;
    bool known;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = reference_.find(key);
      known = it != reference_.end();
      if (known) expected = it->second;
    }
    if (!known) {
      json off = request;
      off["cache"] = false;
      expected = Send(off, /*stream=*/false, conv, turn);
      if (!expected.ok) return;
      std::lock_guard<std::mutex> l(mu_);
      reference_.emplace(key, expected);
    }

    const bool stream = rng() % 2 == 0;
    if (stream && FaultsActive() &&
        std::uniform_real_distribution<double>(0, 1)(rng) < o_.drop_rate) {
      const size_t fault = BeginFault("drop", absl::StrCat("conversation ", conv, " turn ", turn));
      Reply cut = Chat(port_, access_, request, /*stream=*/true, /*drop=*/true);
      {
        std::lock_guard<std::mutex> l(mu_);
        ++requests_;
        ++drops_;
      }
      EndFault(fault, cut.ok ? "answer complete before the first text was read"
                             : absl::StrCat("closed after ", cut.text.size(), " bytes of text"));
    }
    Reply got = Send(request, stream, conv, turn);
    if (!got.ok) return;
    {
      std::lock_guard<std::mutex> l(mu_);
      ++compared_;
      prompt_tokens_ += got.prompt_tokens;
      cached_tokens_ += got.cached_tokens;
      if (got.text != expected.text || got.finish_reason != expected.finish_reason ||
          got.completion_tokens != expected.completion_tokens) {
        ++wrong_count_;
        if (wrong_.size() < 5) {
          wrong_.push_back(absl::StrFormat(
              "conversation %d turn %d (%s, %d cached tokens): got %s (%s, %d tokens), "
              "recompute %s (%s, %d tokens)",
              conv, turn, stream ? "streamed" : "not streamed", got.cached_tokens,
              json(got.text).dump(), got.finish_reason, got.completion_tokens,
              json(expected.text).dump(), expected.finish_reason, expected.completion_tokens));
          spdlog::error("soak: WRONG RESPONSE {}", wrong_.back());
        }
      }
    }
    // The history goes on with the recompute's reply: a replay sends the same requests.
    messages.push_back({{"role", "assistant"}, {"content", expected.text}});
  }
}

Reply Soak::Send(const json& request, bool stream, int conv, int turn) {
  Reply r;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    const double t0 = Now();
    r = Chat(port_, access_, request, stream, /*drop=*/false);
    const double t1 = Now();
    const bool explained = !r.ok && Explained(t0, t1);
    {
      std::lock_guard<std::mutex> l(mu_);
      ++requests_;
      if (r.ok) return r;
      ++failed_attempts_;
      if (explained) {
        ++explained_failures_;
      } else {
        ++unexplained_count_;
        if (unexplained_.size() < 5) {
          unexplained_.push_back(absl::StrFormat(
              "t=%.1f-%.1fs conversation %d turn %d%s (attempt %d): %s", t0, t1, conv, turn,
              request.contains("cache") ? " cache off" : "", attempt, r.error));
          spdlog::error("soak: unexplained failure {}", unexplained_.back());
        }
      }
    }
    SleepFor(attempt);
    if (stop_) break;
  }
  std::lock_guard<std::mutex> l(mu_);
  ++abandoned_;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Faults

absl::Status Soak::Kill(const std::string& name) {
  deploy::ClusterProcess* p = Find(name);
  if (kill(p->pid, SIGKILL) != 0) {
    return absl::InternalError(absl::StrCat("kill -9 ", name, " (pid ", p->pid, ") failed"));
  }
  // Our child (StartCluster spawned it): reap it, bounded.
  WaitFor([&] { return waitpid(p->pid, nullptr, WNOHANG) != 0; }, absl::Seconds(10));
  return absl::OkStatus();
}

absl::Status Soak::Restart(const std::string& name) {
  absl::Status s = deploy::RestartClusterProcess(&state_, name, kRestartTimeout);
  if (!s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    ++restart_failures_;
  }
  return s;
}

// The sockets connected to 127.0.0.1:`port` (`ss -K`: SOCK_DESTROY sends the peer a reset).
absl::Status KillConnections(int port) {
  SpawnOptions o;
  o.argv = {"ss", "-K", "dst", "127.0.0.1", "dport", "=", absl::StrCat(":", port)};
  o.stderr_path = "&1";
  KVTIER_ASSIGN_OR_RETURN(CommandResult r, RunCommand(o, absl::Seconds(5)));
  if (!r.ok()) return absl::InternalError("ss -K failed: " + r.output.substr(0, 300));
  return absl::OkStatus();
}

// Whether KillConnections works here (root with CAP_NET_ADMIN, a kernel with SOCK_DESTROY):
// tried on a loopback connection of our own.
bool CanKillConnections() {
  auto tcp = [] { return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); };
  const int listener = tcp(), client = tcp();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  bool killed = false;
  if (listener >= 0 && client >= 0 &&
      bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      listen(listener, 1) == 0 &&
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
      connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const int accepted = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    char c;
    killed = KillConnections(ntohs(addr.sin_port)).ok() && recv(client, &c, 1, MSG_DONTWAIT) < 0 &&
             errno != EAGAIN && errno != EWOULDBLOCK;
    if (accepted >= 0) close(accepted);
  }
  if (listener >= 0) close(listener);
  if (client >= 0) close(client);
  return killed;
}

void Soak::StopStore(double seconds) {
  const pid_t pid = Find("store")->pid;
  kill(pid, SIGSTOP);
  absl::SleepFor(absl::Seconds(seconds));
  kill(pid, SIGCONT);
}

void Soak::Injector() {
  std::mt19937_64 rng(o_.seed * 31337 + 1);
  std::vector<std::string> workers;
  for (const deploy::ClusterProcess& p : state_.processes) {
    if (absl::StartsWith(p.name, "prefill-") || absl::StartsWith(p.name, "decode-")) {
      workers.push_back(p.name);
    }
  }
  SleepFor(std::min(kWarmupS, fault_end_s()));
  while (!stop_ && FaultsActive() && !o_.faults.empty()) {
    std::exponential_distribution<double> gap(1.0 / o_.fault_interval_s);
    SleepFor(std::clamp(gap(rng), 1.0, 3 * o_.fault_interval_s));
    if (stop_ || !FaultsActive()) break;
    const std::string kind = o_.faults[rng() % o_.faults.size()];
    std::lock_guard<std::mutex> l(cluster_mu_);
    // The target first: the fault is recorded before it happens.
    std::string target = "store";
    if (kind == "worker-kill") target = workers[rng() % workers.size()];
    if (kind == "conn-kill") {  // a worker or the store
      const size_t i = rng() % (workers.size() + 1);
      if (i < workers.size()) target = workers[i];
    }
    if (kind == "store-kill") CheckProbes(generation_);  // the end of this store process's life
    const size_t fault = BeginFault(kind, target);
    std::string detail;
    absl::Status s;
    if (kind == "store-kill") {
      s = Kill("store");
      ++generation_;
      if (s.ok()) s = Restart("store");
    } else if (kind == "conn-kill") {
      // The connections to a worker (the router's) or to the store (the workers' control
      // plane, and the soak's probe client).
      s = KillConnections(Find(target)->port);
    } else if (kind == "store-stop") {
      const double secs = std::uniform_real_distribution<double>(1, o_.stop_max_s)(rng);
      StopStore(secs);
      detail = absl::StrFormat("SIGSTOP for %.1f s", secs);
    } else {
      s = Kill(target);
      if (s.ok()) s = Restart(target);
    }
    EndFault(fault, s.ok() ? detail : std::string(s.message()));
  }
}

// ---------------------------------------------------------------------------------------------
// Probes: "no committed block is lost except by eviction" (docs/testing.md, "Soak")

void Soak::ProbeWriter() {
  while (!stop_ && Now() < o_.seconds) {
    {
      std::lock_guard<std::mutex> l(cluster_mu_);
      WriteProbe();
    }
    SleepFor(kProbeIntervalS);
  }
}

void Soak::WriteProbe() {
  absl::StatusOr<v1::StatsResponse> before = StoreStats(StoreAddress(), access_);
  if (!before.ok()) return;  // no baseline, no probe
  Probe p;
  p.generation = generation_;
  p.evicted_before = EvictedForGood(*before);
  const TokenId id = static_cast<TokenId>(probes_.size() + probes_uncommitted_);
  std::vector<std::vector<uint8_t>> data;
  std::vector<const void*> blocks;
  BlockKey prev = probe_ns_;
  for (TokenId b = 0; b < kProbeBlocks; ++b) {
    const TokenId tokens[] = {id, b};
    p.keys.push_back(ChainBlockKey(prev, tokens));
    prev = p.keys.back();
    data.emplace_back(kProbeBlockBytes);
    FillSyntheticBlock(p.keys.back(), data.back().data(), kProbeBlockBytes);
    blocks.push_back(data.back().data());
  }
  const std::vector<BlockKey> parents = ChainParents(probe_ns_, p.keys);
  absl::StatusOr<PutResult> put =
      probe_client_->Put(probe_ns_, p.keys, parents, blocks, kProbeBlockBytes);
  if (put.ok() && put->stored == kProbeBlocks) {
    probes_.push_back(std::move(p));
  } else {
    ++probes_uncommitted_;  // a store just restarted, no space: not committed, not checked
  }
}

void Soak::CheckProbes(int generation) {
  std::vector<std::vector<uint8_t>> data(kProbeBlocks, std::vector<uint8_t>(kProbeBlockBytes));
  std::vector<void*> buffers;
  for (auto& d : data) buffers.push_back(d.data());
  auto read = [&](const Probe& p) -> size_t {
    absl::StatusOr<size_t> n = probe_client_->Get(probe_ns_, p.keys, buffers, kProbeBlockBytes);
    size_t good = 0;
    while (n.ok() && good < *n &&
           IsSyntheticBlock(p.keys[good], data[good].data(), kProbeBlockBytes)) {
      ++good;
    }
    return good;
  };
  for (Probe& p : probes_) {
    if (p.checked || p.generation != generation) continue;
    p.checked = true;
    size_t found = read(p);
    if (found < kProbeBlocks) {  // our client may have marked the node down: once more
      absl::SleepFor(absl::Milliseconds(400));
      found = std::max(found, read(p));
    }
    if (found == kProbeBlocks) {
      ++probes_complete_;
      continue;
    }
    absl::StatusOr<v1::StatsResponse> after = StoreStats(StoreAddress(), access_);
    const uint64_t evicted = after.ok() ? EvictedForGood(*after) - p.evicted_before : 0;
    if (after.ok() && evicted >= kProbeBlocks - found) {
      ++probes_explained_;
      continue;
    }
    ++probes_lost_;
    if (lost_.size() < 5) {
      lost_.push_back(absl::StrFormat(
          "probe %s (store process %d): %d of %d blocks read back, %s blocks evicted for good "
          "since its write",
          KeyToHex(p.keys[0]).substr(0, 12), generation, found, kProbeBlocks,
          after.ok() ? absl::StrCat(evicted)
                     : "? (" + std::string(after.status().message()) + ")"));
      spdlog::error("soak: LOST BLOCKS {}", lost_.back());
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RSS and crashes

uint64_t RssBytes(pid_t pid) {
  const std::string status = FileTail(absl::StrCat("/proc/", pid, "/status"), std::string::npos);
  const size_t at = status.find("VmRSS:");
  uint64_t kb = 0;
  if (at == std::string::npos) return 0;
  absl::string_view v = absl::string_view(status).substr(at + 6);
  v = absl::StripLeadingAsciiWhitespace(v.substr(0, v.find(" kB")));
  return absl::SimpleAtoi(v, &kb) ? kb * 1024 : 0;
}

void Soak::Monitor() {
  Progress progress("soak", o_.progress_s, [this] {
    std::lock_guard<std::mutex> l(mu_);
    return ProgressCounts{
        requests_ - failed_attempts_, failed_attempts_,
        absl::StrFormat("%d compared, %d wrong, %d unexplained, %d faults", compared_, wrong_count_,
                        unexplained_count_, faults_.size())};
  });
  while (!stop_) {
    {
      std::lock_guard<std::mutex> l(cluster_mu_);
      const double t = Now();
      for (deploy::ClusterProcess& p : state_.processes) {
        if (ProcessAlive(p.pid)) {
          rss_[p.name].push_back({t, RssBytes(p.pid)});
          continue;
        }
        const size_t fault = BeginFault("crash", p.name);
        int status = 0;
        std::string detail = waitpid(p.pid, &status, WNOHANG) == p.pid ? DescribeWaitStatus(status)
                                                                       : std::string("gone");
        spdlog::error("soak: {} (pid {}) died by itself ({}); its log:\n{}", p.name, p.pid, detail,
                      FileTail(p.log, 3000));
        {
          std::lock_guard<std::mutex> m(mu_);
          ++crashes_;
        }
        if (p.name == "store") ++generation_;
        absl::Status s = Restart(p.name);
        if (!s.ok()) detail += "; restart failed: " + std::string(s.message());
        EndFault(fault, detail);
      }
    }
    SleepFor(kRssIntervalS);
  }
}

// ---------------------------------------------------------------------------------------------
// The run and the report

void Soak::Run() {
  std::vector<std::thread> threads;
  for (int i = 0; i < o_.concurrency; ++i) threads.emplace_back([this, i] { Client(i); });
  threads.emplace_back([this] { Injector(); });
  threads.emplace_back([this] { ProbeWriter(); });
  std::thread monitor([this] { Monitor(); });
  // Each thread stops by itself at the end of the workload; clients finish their request.
  for (std::thread& t : threads) t.join();
  stop_ = true;
  monitor.join();
}

struct RssFigures {
  double first_max = 0, last_max = 0, max = 0, first = 0, last = 0;
  bool growth_ok = true, cap_ok = true;
};

int Soak::Finish() {
  std::lock_guard<std::mutex> cl(cluster_mu_);
  const double end_s = Now();
  // Probes of the last store process: its life ends here.
  CheckProbes(generation_);

  // Leases and reservations drain: those of a killed worker or of a store stopped mid-call are
  // freed by the store's timeouts, counted from the last fault.
  double last_fault_s = 0;
  std::map<std::string, int64_t> by_kind;  // by kind, and by role of the target
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const FaultEvent& f : faults_) {
      if (f.kind != "drop") last_fault_s = std::max(last_fault_s, f.end_s);
      if (f.kind == "worker-kill" || f.kind == "conn-kill" || f.kind == "crash") {
        ++by_kind[absl::StrCat(f.kind, " ", f.target.substr(0, f.target.find('-')))];
      } else {
        ++by_kind[f.kind];
      }
    }
  }
  double timeouts_s = 35;
  if (absl::StatusOr<v1::GetInfoResponse> info =
          StoreCall(StoreAddress(), access_, &v1::CacheStore::Stub::GetInfo);
      info.ok()) {
    timeouts_s = std::max(info->lease_timeout_ms(), info->reservation_timeout_ms()) * 1e-3 + 5;
  }
  // Strict when the faults' orphans have expired by the end of the workload: a lease or
  // reservation still held 10 s later was taken in the quiet period and leaked.
  const bool drain_strict = last_fault_s + timeouts_s <= end_s;
  const double drain_until = std::max(Now() + 10, last_fault_s + timeouts_s);
  absl::StatusOr<v1::StatsResponse> stats;
  while (true) {
    stats = StoreStats(StoreAddress(), access_);
    if ((stats.ok() && stats->active_leases() == 0 && stats->active_reservations() == 0) ||
        Now() >= drain_until) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(500));
  }
  const double drained_s = Now() - end_s;

  // RSS: the growth check compares the first and the last quarter after warm-up.
  const double warm_s = std::max(10.0, 0.1 * o_.seconds);
  const double quarter_s = (end_s - warm_s) / 4;
  std::map<std::string, RssFigures> rss;
  bool rss_ok = true;
  for (const auto& [name, samples] : rss_) {
    RssFigures f;
    for (const RssSample& s : samples) {
      const double b = double(s.bytes);
      f.max = std::max(f.max, b);
      if (s.t_s >= warm_s && s.t_s < warm_s + quarter_s) f.first_max = std::max(f.first_max, b);
      if (s.t_s >= end_s - quarter_s) f.last_max = std::max(f.last_max, b);
    }
    if (!samples.empty()) {
      f.first = double(samples.front().bytes);
      f.last = double(samples.back().bytes);
    }
    f.cap_ok = f.max <= double(o_.rss_cap_bytes);
    f.growth_ok = f.first_max == 0 || f.last_max <= kRssGrowth * f.first_max + kRssSlackBytes;
    rss_ok = rss_ok && f.cap_ok && f.growth_ok;
    rss[name] = f;
  }

  std::lock_guard<std::mutex> l(mu_);
  const bool leases_ok = stats.ok() && stats->active_leases() == 0;
  const bool reservations_ok = stats.ok() && stats->active_reservations() == 0;
  struct Check {
    const char* what;
    bool ok;
  };
  const Check checks[] = {
      {"no wrong response", wrong_count_ == 0},
      {"no unexplained error", unexplained_count_ == 0},
      {"no crash, every restart ready", crashes_ == 0 && restart_failures_ == 0},
      {drain_strict ? "leases released (strict)" : "leases released (after the timeouts)",
       leases_ok},
      {"reservations released", reservations_ok},
      {"no committed block lost except by eviction", probes_lost_ == 0},
      {"RSS bounded", rss_ok},
      {"workload ran (responses compared)", compared_ > 0},
  };
  bool pass = true;
  for (const Check& c : checks) pass = pass && c.ok;

  const std::string fault_plan =
      fault_end_s() > kWarmupS && !o_.faults.empty()
          ? absl::StrFormat("faults from %.0f s to %.0f s, mean gap %.1f s: %s; drop rate %.2f",
                            kWarmupS, fault_end_s(), o_.fault_interval_s,
                            absl::StrJoin(o_.faults, ", "), o_.drop_rate)
          : std::string("no faults");
  std::printf(
      "\nkvtier-bench soak: %.0f s (%s), %d conversations x %d turns, concurrency %d, "
      "seed %llu\n\n",
      o_.seconds, fault_plan.c_str(), o_.conversations, o_.turns, o_.concurrency,
      static_cast<unsigned long long>(o_.seed));
  std::printf(
      "requests sent                  %lld (%zu distinct requests recomputed with cache off)\n",
      static_cast<long long>(requests_), reference_.size());
  std::printf("responses compared             %lld, wrong %lld\n",
              static_cast<long long>(compared_), static_cast<long long>(wrong_count_));
  std::printf("cached prompt tokens           %.1f%% (%lld of %lld)\n",
              prompt_tokens_ ? 100.0 * double(cached_tokens_) / double(prompt_tokens_) : 0.0,
              static_cast<long long>(cached_tokens_), static_cast<long long>(prompt_tokens_));
  std::printf(
      "failed attempts                %lld (%lld during a worker restart, %lld unexplained); "
      "turns abandoned %lld\n",
      static_cast<long long>(failed_attempts_), static_cast<long long>(explained_failures_),
      static_cast<long long>(unexplained_count_), static_cast<long long>(abandoned_));
  std::string fault_list;
  for (const auto& [kind, n] : by_kind) absl::StrAppend(&fault_list, kind, " ", n, ", ");
  std::printf("faults                         %scrashes %lld, failed restarts %lld\n",
              fault_list.c_str(), static_cast<long long>(crashes_),
              static_cast<long long>(restart_failures_));
  if (stats.ok()) {
    std::printf(
        "store at the end (after %.1f s) active leases %llu, reservations %llu; blocks in memory "
        "%llu, spilled %llu; evictions %llu, spills %llu, spill drops %llu, promotions %llu; "
        "expired leases %llu, reservations %llu; checksum failures %llu (this store process)\n",
        drained_s, static_cast<unsigned long long>(stats->active_leases()),
        static_cast<unsigned long long>(stats->active_reservations()),
        static_cast<unsigned long long>(stats->blocks_in_memory()),
        static_cast<unsigned long long>(stats->blocks_spilled()),
        static_cast<unsigned long long>(stats->evictions()),
        static_cast<unsigned long long>(stats->spills()),
        static_cast<unsigned long long>(stats->spill_drops()),
        static_cast<unsigned long long>(stats->promotions()),
        static_cast<unsigned long long>(stats->expired_leases()),
        static_cast<unsigned long long>(stats->expired_reservations()),
        static_cast<unsigned long long>(stats->checksum_failures()));
  } else {
    std::printf("store at the end               %s\n",
                std::string(stats.status().message()).c_str());
  }
  std::printf(
      "probe prefixes                 %zu committed (%lld not: store down or full), %lld read "
      "back whole, %lld short by eviction, %lld lost\n",
      probes_.size(), static_cast<long long>(probes_uncommitted_),
      static_cast<long long>(probes_complete_), static_cast<long long>(probes_explained_),
      static_cast<long long>(probes_lost_));
  std::printf("\n%-12s %10s %10s %14s %14s %10s\n", "RSS MiB", "first", "last", "1st-quarter max",
              "last-quarter max", "max");
  for (const auto& [name, f] : rss) {
    std::printf("%-12s %10.1f %10.1f %14.1f %14.1f %10.1f%s\n", name.c_str(), f.first / kMiB,
                f.last / kMiB, f.first_max / kMiB, f.last_max / kMiB, f.max / kMiB,
                f.growth_ok && f.cap_ok ? "" : "  <- over the bound");
  }
  std::printf("\n");
  for (const std::string& w : wrong_) std::printf("wrong: %s\n", w.c_str());
  for (const std::string& u : unexplained_) std::printf("unexplained: %s\n", u.c_str());
  for (const std::string& x : lost_) std::printf("lost: %s\n", x.c_str());
  for (const Check& c : checks) std::printf("check %-45s %s\n", c.what, c.ok ? "PASS" : "FAIL");
  std::printf("soak %s\n", pass ? "PASSED" : "FAILED");

  if (o_.json) {
    json j = {
        {"benchmark", "soak"},
        {"seconds", o_.seconds},
        {"fault_end_s", fault_end_s()},
        {"conversations", o_.conversations},
        {"turns", o_.turns},
        {"concurrency", o_.concurrency},
        {"seed", o_.seed},
        {"requests", requests_},
        {"distinct_requests", reference_.size()},
        {"compared", compared_},
        {"wrong", wrong_count_},
        {"failed_attempts", failed_attempts_},
        {"explained_failures", explained_failures_},
        {"unexplained_failures", unexplained_count_},
        {"abandoned_turns", abandoned_},
        {"cached_tokens", cached_tokens_},
        {"prompt_tokens", prompt_tokens_},
        {"faults", by_kind},
        {"crashes", crashes_},
        {"restart_failures", restart_failures_},
        {"active_leases", stats.ok() ? json(stats->active_leases()) : json(nullptr)},
        {"lease_check_strict", drain_strict},
        {"active_reservations", stats.ok() ? json(stats->active_reservations()) : json(nullptr)},
        {"probes",
         {{"committed", probes_.size()},
          {"uncommitted", probes_uncommitted_},
          {"whole", probes_complete_},
          {"short_by_eviction", probes_explained_},
          {"lost", probes_lost_}}},
        {"pass", pass}};
    for (const auto& [name, f] : rss) {
      j["rss_mib"][name] = {{"first", f.first / kMiB},
                            {"last", f.last / kMiB},
                            {"first_quarter_max", f.first_max / kMiB},
                            {"last_quarter_max", f.last_max / kMiB},
                            {"max", f.max / kMiB}};
    }
    std::printf("%s\n", j.dump().c_str());
  }
  std::fflush(stdout);
  return pass ? 0 : 1;
}

}  // namespace

int RunSoakBench(const SoakBenchOptions& options) {
  SoakBenchOptions o = options;
  for (const std::string& f : o.faults) {
    if (std::find(kFaultKinds.begin(), kFaultKinds.end(), f) == kFaultKinds.end()) {
      spdlog::error("soak: unknown fault kind '{}' ({})", f, absl::StrJoin(kFaultKinds, ", "));
      return 2;
    }
  }
  if (std::find(o.faults.begin(), o.faults.end(), "conn-kill") != o.faults.end() &&
      !CanKillConnections()) {
    spdlog::warn("soak: `ss -K` cannot kill sockets here (needs CAP_NET_ADMIN): no conn-kill");
    o.faults.erase(std::find(o.faults.begin(), o.faults.end(), "conn-kill"));
  }
  absl::StatusOr<std::string> bin_dir = SelfExeDir();
  if (!bin_dir.ok()) {
    spdlog::error("soak: {}", std::string(bin_dir.status().message()));
    return 2;
  }
  deploy::ClusterConfig c;
  c.run_dir =
      o.run_dir.empty()
          ? (std::filesystem::temp_directory_path() / absl::StrCat("kvtier-soak-", getpid()))
                .string()
          : o.run_dir;
  c.backend = "cpu";
  c.store_pool_bytes = "8MiB";  // 128 blocks of the tiny model: the workload evicts
  // Large enough that spill drops are rare: they would excuse lost probe blocks.
  c.store_spill_capacity = "256MiB";
  c.prefill_workers = 1;
  c.decode_workers = 2;
  c.worker_kv_cache_bytes = "16MiB";
  c.router_port = 0;
  c.stop_grace_s = 5;
  spdlog::info("soak: starting a cluster in {}", c.run_dir);
  std::ostringstream start_log;
  absl::StatusOr<deploy::ClusterState> state = deploy::StartCluster(c, *bin_dir, start_log);
  if (!state.ok()) {
    spdlog::error("soak: cannot start the cluster: {}\n{}", std::string(state.status().message()),
                  start_log.str());
    return 2;
  }
  spdlog::info("soak: cluster up in {} ({}), {} s of workload", state->run_dir, state->endpoint,
               o.seconds);
  int rc;
  {
    Soak soak(o, *state, MonoNowNs());
    absl::Status init = soak.Init();
    if (!init.ok()) {
      spdlog::error("soak: {}", std::string(init.message()));
      rc = 2;
    } else {
      soak.Run();
      rc = soak.Finish();
    }
  }
  std::ostringstream stop_log;
  absl::Status stopped =
      deploy::StopCluster(state->run_dir, absl::Seconds(c.stop_grace_s), stop_log);
  if (!stopped.ok()) spdlog::warn("soak: stopping the cluster: {}", std::string(stopped.message()));
  if (rc == 0 && o.run_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(c.run_dir, ec);
  } else {
    spdlog::info("soak: logs kept in {}", state->run_dir);
  }
  return rc;
}

}  // namespace kvtier::bench
