#include "bench/store_bench.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "bench/spill_bench.h"
#include "common/status_macros.h"
#include "common/synthetic_block.h"
#include "deploy/netns.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace kvtier::bench {

// The stores' spill tier capacity (when on) and start timeout.
constexpr uint64_t kStoreSpillCapacityBytes = 4ull << 30;
constexpr absl::Duration kStoreStartTimeout = absl::Seconds(60);

// ---------------------------------------------------------------------------------------------
// Shared with spill_bench.cc (declared in bench/store_bench.h).

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  // Nearest rank.
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

std::string HumanBytes(uint64_t b) {
  if (b >= (1ull << 30) && b % (1ull << 30) == 0) return absl::StrCat(b >> 30, " GiB");
  if (b >= (1ull << 20) && b % (1ull << 20) == 0) return absl::StrCat(b >> 20, " MiB");
  if (b >= (1ull << 10) && b % (1ull << 10) == 0) return absl::StrCat(b >> 10, " KiB");
  return absl::StrCat(b, " B");
}

BlockKey MakeKey(uint32_t client, uint64_t seq, uint32_t j) {
  uint64_t state = (uint64_t{client} << 48) ^ (seq << 12) ^ j;
  BlockKey key;
  for (size_t i = 0; i < key.size(); i += 8) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(key.data() + i, &z, 8);
  }
  return key;
}

absl::StatusOr<StoreProcess> SpawnStore(const std::string& exe_dir, const std::string& dir,
                                        const std::string& name, uint64_t pool_bytes,
                                        uint64_t slot_bytes, const std::string& spill_dir,
                                        std::vector<std::string> extra_args) {
  StoreProcessOptions so;
  so.bin_dir = exe_dir;
  so.name = name;
  so.metrics = false;
  so.pool_bytes = std::to_string(pool_bytes);
  so.slot_bytes = std::to_string(slot_bytes);
  so.spill_dir = spill_dir;
  so.spill_capacity = std::to_string(kStoreSpillCapacityBytes);
  so.extra_args = std::move(extra_args);
  so.start_timeout = kStoreStartTimeout;
  so.stop_grace = absl::Seconds(5);
  return StoreProcess::Spawn(dir, so);
}

namespace {
// Our original stdout (RedirectStdoutToStderr).
FILE* g_out = stdout;
}  // namespace

absl::Status RedirectStdoutToStderr() {
  const int fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) return absl::InternalError("cannot duplicate stdout");
  g_out = fdopen(fd, "w");
  if (g_out == nullptr) return absl::InternalError("fdopen of stdout copy failed");
  std::fflush(stdout);
  if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0) return absl::InternalError("dup2 failed");
  return absl::OkStatus();
}

FILE* ResultsFile() { return g_out; }

namespace {

using json = nlohmann::json;

constexpr char kShmTls[] = "posix,sysv,cma,self";
constexpr char kTcpTls[] = "tcp,self";

// Get working set per client, in batches. At the defaults (16 x 2 MiB) it is 128 MiB, four
// times the 32 MiB L3 of the CI VM, so gets read DRAM, not cache.
constexpr uint32_t kGetBatches = 4;
// Main pool, in batches per client: the get working set plus as much again for the stream of
// new keys of the put phase (which evicts the oldest blocks once the pool is full).
constexpr uint32_t kPoolBatchesPerClient = 2 * kGetBatches;
// Warm-up writes this many pool sizes per client (bounded by kMaxWarmupBytes).
constexpr uint32_t kWarmupPoolPasses = 2;
constexpr uint64_t kMaxWarmupBytes = 16ull << 30;

// Lookup latency: a prefix of kLookupKeys small blocks stored in its own namespace (and, when
// the benchmark starts the stores, in a second store with 4 KiB slots, so 1,000 blocks need
// 4 MiB of pool rather than 1,000 slots of block_bytes).
constexpr uint32_t kLookupKeys = 1000;
constexpr uint32_t kLookupBlockTokens = 16;
constexpr uint64_t kLookupBlockBytes = 4096;
constexpr uint64_t kLookupPoolSlots = 2048;
constexpr int kLookupWarmup = 20;
constexpr int kLookupSamples = 300;

// memcpy anchor: two buffers of this size (16x the L3 of the CI VM), best of kMemcpyReps.
constexpr size_t kMemcpyBytes = 512ull << 20;
constexpr int kMemcpyReps = 5;

constexpr absl::Duration kWorkerReadyTimeout = absl::Seconds(60);

// How a command runs on a host: its argv made into the argv that runs it there (null: here).
using ArgvWrap = std::function<std::vector<std::string>(const std::vector<std::string>&)>;

// ---------------------------------------------------------------------------------------------
// One client: the same code runs in-process (--clients 1) and in each worker process.

struct PhaseCommand {
  std::string phase;       // warmup | put | seed | get | quit
  int64_t start_ns = 0;    // absolute CLOCK_MONOTONIC start
  int64_t end_ns = 0;      // timed phases: no batch starts at or after this
  int64_t iterations = 0;  // > 0: exactly this many batches (ignores end_ns)
  double progress_s = 0;   // > 0: a progress line every this many seconds
};

struct PhaseResult {
  std::string phase;
  uint64_t bytes = 0;
  uint64_t batches = 0;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  double batch_p50_ms = 0;
  double batch_p99_ms = 0;
};

json ToJson(const PhaseCommand& c) {
  return {{"phase", c.phase},
          {"start_ns", c.start_ns},
          {"end_ns", c.end_ns},
          {"iterations", c.iterations},
          {"progress_s", c.progress_s}};
}

PhaseCommand CommandFromJson(const json& j) {
  PhaseCommand c;
  c.phase = j.at("phase").get<std::string>();
  c.start_ns = j.value("start_ns", int64_t{0});
  c.end_ns = j.value("end_ns", int64_t{0});
  c.iterations = j.value("iterations", int64_t{0});
  c.progress_s = j.value("progress_s", 0.0);
  return c;
}

json ToJson(const PhaseResult& r) {
  return {{"phase", r.phase},
          {"bytes", r.bytes},
          {"batches", r.batches},
          {"start_ns", r.start_ns},
          {"end_ns", r.end_ns},
          {"batch_p50_ms", r.batch_p50_ms},
          {"batch_p99_ms", r.batch_p99_ms}};
}

PhaseResult ResultFromJson(const json& j) {
  PhaseResult r;
  r.phase = j.at("phase").get<std::string>();
  r.bytes = j.at("bytes").get<uint64_t>();
  r.batches = j.at("batches").get<uint64_t>();
  r.start_ns = j.at("start_ns").get<int64_t>();
  r.end_ns = j.at("end_ns").get<int64_t>();
  r.batch_p50_ms = j.at("batch_p50_ms").get<double>();
  r.batch_p99_ms = j.at("batch_p99_ms").get<double>();
  return r;
}

class ClientRunner {
 public:
  static absl::StatusOr<std::unique_ptr<ClientRunner>> Create(const StoreWorkerOptions& o) {
    auto ns = KeyFromHex(o.ns_hex);
    if (!ns.ok()) return ns.status();
    auto r = std::unique_ptr<ClientRunner>(new ClientRunner(o, *ns));
    KVTIER_RETURN_IF_ERROR(r->Init());
    return r;
  }

  const StoreNodeInfo& node() const { return node_; }

  absl::StatusOr<PhaseResult> Run(const PhaseCommand& cmd) {
    if (cmd.phase == "warmup") return Loop(cmd, [this] { return PutNewBatch(nullptr); });
    if (cmd.phase == "put") return Loop(cmd, [this] { return PutNewBatch(nullptr); });
    if (cmd.phase == "seed") return Seed(cmd);
    if (cmd.phase == "get") {
      size_t g = 0;
      auto r = Loop(cmd, [this, &g] {
        last_get_ = g;
        return GetBatch(g++ % get_keys_.size());
      });
      if (r.ok()) KVTIER_RETURN_IF_ERROR(VerifyLastGet());
      return r;
    }
    return absl::InvalidArgumentError(absl::StrCat("unknown phase '", cmd.phase, "'"));
  }

 private:
  ClientRunner(const StoreWorkerOptions& o, const NamespaceId& ns) : o_(o), ns_(ns) {}

  absl::Status Init() {
    StoreClientOptions co;
    co.stores = absl::StrSplit(o_.store, ',');
    co.tls.plaintext = true;  // kvtier-bench talks plain text to its stores (docs/security.md)
    co.transfer_timeout = absl::Seconds(30);
    co.map_same_host_pool = o_.map_pool;
    co.lanes = static_cast<int>(o_.lanes);
    KVTIER_ASSIGN_OR_RETURN(client_, StoreClient::Create(co));
    // Connect now (gRPC channel, UCX endpoints, rkey), outside any measurement.
    std::vector<StoreNodeInfo> nodes = client_->Nodes();
    if (nodes.size() != co.stores.size()) {
      return absl::InvalidArgumentError(absl::StrCat("a store is listed twice in ", o_.store));
    }
    // What the run needs of the stores: the first one's description, the slots of all.
    node_ = nodes[0];
    node_.slot_count = 0;
    for (const StoreNodeInfo& n : nodes) {
      if (!n.connected) return absl::UnavailableError("cannot connect to store " + n.address);
      if (o_.block_bytes > n.slot_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("block size ", o_.block_bytes,
                                                       " exceeds the slot size ", n.slot_bytes,
                                                       " of store ", n.address));
      }
      node_.slot_count += n.slot_count;
    }
    // Pre-allocated, pre-touched buffers: two source sets (alternated, so a batch's source is
    // not still in cache from the previous batch) and one destination set.
    const size_t set_bytes = size_t{o_.batch} * o_.block_bytes;
    for (int s = 0; s < 2; ++s) {
      KVTIER_ASSIGN_OR_RETURN(src_[s], TouchedBuffer::Create(set_bytes));
      for (uint32_t j = 0; j < o_.batch; ++j) {
        FillSyntheticBlock(MakeKey(o_.client_id, ~uint64_t{0} - s, j), Block(src_[s].get(), j),
                           o_.block_bytes);
        src_ptrs_[s].push_back(Block(src_[s].get(), j));
      }
    }
    KVTIER_ASSIGN_OR_RETURN(dst_, TouchedBuffer::Create(set_bytes, 0));
    for (uint32_t j = 0; j < o_.batch; ++j) dst_ptrs_.push_back(Block(dst_.get(), j));
    keys_.resize(o_.batch);
    return absl::OkStatus();
  }

  uint8_t* Block(TouchedBuffer* b, uint32_t j) const {
    return b->data() + size_t{j} * o_.block_bytes;
  }

  // Puts one batch of keys never used before; returns the bytes stored. `seq_out` receives the
  // batch's sequence number (its keys are MakeKey(client, seq, 0..batch)).
  absl::StatusOr<uint64_t> PutNewBatch(uint64_t* seq_out) {
    const uint64_t seq = next_seq_++;
    for (uint32_t j = 0; j < o_.batch; ++j) keys_[j] = MakeKey(o_.client_id, seq, j);
    const int set = static_cast<int>(seq % 2);
    auto r = client_->Put(ns_, keys_, ChainParents(ns_, keys_), src_ptrs_[set], o_.block_bytes);
    if (!r.ok()) return r.status();
    if (r->stored != o_.batch) {
      return absl::InternalError(absl::StrCat("put of ", o_.batch, " new blocks stored ", r->stored,
                                              " (present ", r->present, ", skipped ", r->skipped,
                                              "): the store did not take every block"));
    }
    if (seq_out != nullptr) *seq_out = seq;
    return uint64_t{r->stored} * o_.block_bytes;
  }

  absl::StatusOr<uint64_t> GetBatch(size_t g) {
    auto n = client_->Get(ns_, get_keys_[g], dst_ptrs_, o_.block_bytes);
    if (!n.ok()) return n.status();
    if (*n != o_.batch) {
      return absl::InternalError(absl::StrCat("get of ", o_.batch,
                                              " stored blocks returned a prefix of ", *n,
                                              ": the store lost or refused blocks it holds"));
    }
    return uint64_t{*n} * o_.block_bytes;
  }

  // Stores the get working set, then reads it once (warm-up of the get path).
  absl::StatusOr<PhaseResult> Seed(const PhaseCommand& cmd) {
    SleepUntilNs(cmd.start_ns);
    PhaseResult r;
    r.phase = cmd.phase;
    r.start_ns = MonoNowNs();
    get_keys_.assign(o_.get_batches, {});
    get_src_set_.assign(o_.get_batches, 0);
    for (uint32_t g = 0; g < o_.get_batches; ++g) {
      uint64_t seq = 0;
      KVTIER_ASSIGN_OR_RETURN(uint64_t bytes, PutNewBatch(&seq));
      r.bytes += bytes;
      for (uint32_t j = 0; j < o_.batch; ++j) get_keys_[g].push_back(MakeKey(o_.client_id, seq, j));
      get_src_set_[g] = static_cast<int>(seq % 2);
    }
    for (uint32_t g = 0; g < o_.get_batches; ++g) {
      KVTIER_ASSIGN_OR_RETURN(uint64_t bytes, GetBatch(g));
      r.bytes += bytes;
      last_get_ = g;
      KVTIER_RETURN_IF_ERROR(VerifyLastGet());
    }
    r.batches = 2 * o_.get_batches;
    r.end_ns = MonoNowNs();
    return r;
  }

  // Byte-for-byte check of the last fetched batch against what was put (outside the timing;
  // the client library has already checked each block's checksum).
  absl::Status VerifyLastGet() {
    const size_t g = last_get_ % get_keys_.size();
    const int set = get_src_set_[g];
    for (uint32_t j = 0; j < o_.batch; ++j) {
      if (std::memcmp(dst_ptrs_[j], src_ptrs_[set][j], o_.block_bytes) != 0) {
        return absl::DataLossError(absl::StrCat("block ", j, " of get batch ", g,
                                                " differs from the bytes that were put"));
      }
    }
    return absl::OkStatus();
  }

  template <typename Fn>
  absl::StatusOr<PhaseResult> Loop(const PhaseCommand& cmd, Fn&& one_batch) {
    SleepUntilNs(cmd.start_ns);
    PhaseResult r;
    r.phase = cmd.phase;
    std::vector<double> lat_ms;
    r.start_ns = MonoNowNs();
    std::atomic<int64_t> done{0};
    Progress progress(absl::StrCat("store ", cmd.phase, " client ", o_.client_id), cmd.progress_s,
                      [&] { return ProgressCounts{done.load()}; });
    while (true) {
      const int64_t t0 = MonoNowNs();
      if (cmd.iterations > 0 ? static_cast<int64_t>(r.batches) >= cmd.iterations
                             : (r.batches > 0 && t0 >= cmd.end_ns)) {
        break;
      }
      auto bytes = one_batch();
      if (!bytes.ok()) {
        return absl::Status(bytes.status().code(), absl::StrCat(cmd.phase, " batch ", r.batches,
                                                                ": ", bytes.status().message()));
      }
      r.bytes += *bytes;
      ++r.batches;
      ++done;
      lat_ms.push_back(static_cast<double>(MonoNowNs() - t0) / 1e6);
    }
    r.end_ns = MonoNowNs();
    r.batch_p50_ms = Percentile(lat_ms, 50);
    r.batch_p99_ms = Percentile(lat_ms, 99);
    return r;
  }

  const StoreWorkerOptions o_;
  const NamespaceId ns_;
  std::unique_ptr<StoreClient> client_;
  StoreNodeInfo node_;
  std::unique_ptr<TouchedBuffer> src_[2];
  std::vector<const void*> src_ptrs_[2];
  std::unique_ptr<TouchedBuffer> dst_;
  std::vector<void*> dst_ptrs_;
  std::vector<BlockKey> keys_;
  uint64_t next_seq_ = 0;
  std::vector<std::vector<BlockKey>> get_keys_;
  std::vector<int> get_src_set_;
  size_t last_get_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The clients of a run: one in-process runner, or worker processes driven over pipes.

class Clients {
 public:
  static absl::StatusOr<std::unique_ptr<Clients>> InProcess(const StoreWorkerOptions& o) {
    auto c = std::unique_ptr<Clients>(new Clients());
    KVTIER_ASSIGN_OR_RETURN(c->runner_, ClientRunner::Create(o));
    c->node_ = c->runner_->node();
    return c;
  }

  // `count` worker processes of `exe`, each run as `wrap` makes its argv (on a namespace host:
  // deploy/netns.h Wrap; null: as it is).
  static absl::StatusOr<std::unique_ptr<Clients>> Workers(const std::string& exe,
                                                          const StoreWorkerOptions& o,
                                                          uint32_t count, const ArgvWrap& wrap) {
    auto c = std::unique_ptr<Clients>(new Clients());
    for (uint32_t i = 0; i < count; ++i) {
      SpawnOptions so;
      so.argv = {exe,
                 "store-worker",
                 "--store",
                 o.store,
                 "--ns",
                 o.ns_hex,
                 "--client-id",
                 std::to_string(i),
                 "--block-bytes",
                 std::to_string(o.block_bytes),
                 "--batch",
                 std::to_string(o.batch),
                 "--get-batches",
                 std::to_string(o.get_batches),
                 "--lanes",
                 std::to_string(o.lanes)};
      if (!o.map_pool) so.argv.push_back("--no-map-pool");
      if (wrap) so.argv = wrap(so.argv);
      so.pipe_stdin = true;
      so.pipe_stdout = true;  // stderr: ours
      KVTIER_ASSIGN_OR_RETURN(ChildProcess w, ChildProcess::Spawn(so));
      c->workers_.push_back(std::move(w));
    }
    const absl::Time deadline = absl::Now() + kWorkerReadyTimeout;
    for (size_t i = 0; i < c->workers_.size(); ++i) {
      KVTIER_ASSIGN_OR_RETURN(json j, c->ReadJson(i, deadline));
      if (!j.value("ready", false)) {
        return absl::InternalError(absl::StrCat("worker ", i, " not ready: ", j.dump()));
      }
      if (i == 0) {
        c->node_.address = o.store;
        c->node_.connected = true;
        c->node_.slot_bytes = j.at("slot_bytes").get<uint64_t>();
        c->node_.slot_count = j.at("slot_count").get<uint64_t>();
        c->node_.ucx_lanes = j.at("ucx_lanes").get<std::string>();
      }
    }
    return c;
  }

  // On an error path: no goodbyes, the workers are terminated at once.
  ~Clients() {
    for (auto& w : workers_) w.Terminate(absl::Seconds(2));
  }

  // What the (first) client learned about the store.
  const StoreNodeInfo& node() const { return node_; }
  size_t size() const { return runner_ != nullptr ? 1 : workers_.size(); }

  // Runs one phase on every client, all starting at `cmd.start_ns`; one result per client.
  absl::StatusOr<std::vector<PhaseResult>> RunPhase(const PhaseCommand& cmd,
                                                    absl::Duration timeout) {
    if (runner_ != nullptr) {
      KVTIER_ASSIGN_OR_RETURN(PhaseResult r, runner_->Run(cmd));
      return std::vector<PhaseResult>{r};
    }
    const std::string line = ToJson(cmd).dump();
    for (auto& w : workers_) KVTIER_RETURN_IF_ERROR(w.WriteLine(line));
    const absl::Time deadline = absl::Now() + timeout;
    std::vector<PhaseResult> out;
    for (size_t i = 0; i < workers_.size(); ++i) {
      KVTIER_ASSIGN_OR_RETURN(json j, ReadJson(i, deadline));
      if (j.contains("error")) {
        return absl::InternalError(
            absl::StrCat("worker ", i, ": ", j.at("error").get<std::string>()));
      }
      try {
        out.push_back(ResultFromJson(j));
      } catch (const std::exception& e) {
        return absl::InternalError(absl::StrCat("worker ", i, " sent ", j.dump(), ": ", e.what()));
      }
    }
    return out;
  }

  // Stops the clients (workers: asked to quit, then terminated if they linger).
  void Close() {
    runner_.reset();
    for (auto& w : workers_) {
      (void)w.WriteLine(ToJson(PhaseCommand{"quit"}).dump());
      w.CloseStdin();
    }
    for (auto& w : workers_) {
      if (!w.Wait(absl::Seconds(10)).has_value()) w.Terminate(absl::Seconds(2));
    }
    workers_.clear();
  }

 private:
  Clients() = default;

  absl::StatusOr<json> ReadJson(size_t i, absl::Time deadline) {
    auto line = workers_[i].ReadLine(deadline);
    if (!line.ok()) {
      std::string why(line.status().message());
      if (!workers_[i].Running()) {
        why += absl::StrCat(" (worker ", i, " ended with ",
                            DescribeWaitStatus(workers_[i].Terminate()), "; see its stderr)");
      }
      return absl::Status(line.status().code(), why);
    }
    json j = json::parse(*line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InternalError(absl::StrCat("worker ", i, " sent a non-JSON line: ", *line));
    }
    return j;
  }

  std::unique_ptr<ClientRunner> runner_;
  std::vector<ChildProcess> workers_;
  StoreNodeInfo node_;
};

// Aggregate bandwidth of one phase over all clients: every byte moved over the span from the
// first client's start to the last client's end.
struct Aggregate {
  double gbps = 0;
  uint64_t bytes = 0;
  uint64_t batches = 0;
  double seconds = 0;
  double batch_p50_ms = 0;  // worst client
  double batch_p99_ms = 0;
};

Aggregate Combine(const std::vector<PhaseResult>& rs) {
  Aggregate a;
  int64_t start = INT64_MAX, end = INT64_MIN;
  for (const PhaseResult& r : rs) {
    a.bytes += r.bytes;
    a.batches += r.batches;
    start = std::min(start, r.start_ns);
    end = std::max(end, r.end_ns);
    a.batch_p50_ms = std::max(a.batch_p50_ms, r.batch_p50_ms);
    a.batch_p99_ms = std::max(a.batch_p99_ms, r.batch_p99_ms);
  }
  a.seconds = static_cast<double>(end - start) / 1e9;
  a.gbps = end > start ? static_cast<double>(a.bytes) / static_cast<double>(end - start) : 0;
  return a;
}

// ---------------------------------------------------------------------------------------------
// Lookup latency.

struct LookupStats {
  uint32_t keys = 0;
  uint32_t hits = 0;
  int samples = 0;
  double p50_us = 0;
  double p99_us = 0;
};

absl::StatusOr<LookupStats> MeasureLookup(const std::string& address, const NamespaceId& ns,
                                          const std::function<void(std::string)>& warn) {
  StoreClientOptions co;
  co.stores = {address};
  co.tls.plaintext = true;  // kvtier-bench talks plain text to its stores (docs/security.md)
  KVTIER_ASSIGN_OR_RETURN(auto client, StoreClient::Create(co));
  std::vector<StoreNodeInfo> nodes = client->Nodes();
  if (nodes.empty() || !nodes[0].connected) {
    return absl::UnavailableError(absl::StrCat("cannot connect to store ", address));
  }
  // A conversation's prefix: kLookupKeys chained block keys over random token ids.
  std::mt19937 rng(20240601);
  std::vector<TokenId> tokens(size_t{kLookupKeys} * kLookupBlockTokens);
  for (TokenId& t : tokens) t = static_cast<TokenId>(rng() % 128256);
  const std::vector<BlockKey> keys = ComputeBlockKeys(ns, tokens, kLookupBlockTokens);
  KVTIER_ASSIGN_OR_RETURN(auto blocks, TouchedBuffer::Create(keys.size() * kLookupBlockBytes));
  std::vector<const void*> ptrs;
  for (size_t i = 0; i < keys.size(); ++i) {
    uint8_t* p = blocks->data() + i * kLookupBlockBytes;
    FillSyntheticBlock(keys[i], p, kLookupBlockBytes);
    ptrs.push_back(p);
  }
  KVTIER_ASSIGN_OR_RETURN(PutResult put,
                          client->Put(ns, keys, ChainParents(ns, keys), ptrs, kLookupBlockBytes));
  if (put.skipped > 0) {
    warn(absl::StrCat("lookup prefix: the store skipped ", put.skipped, " of ", keys.size(),
                      " blocks (fewer slots than keys?)"));
  }
  LookupStats s;
  s.keys = static_cast<uint32_t>(keys.size());
  KVTIER_ASSIGN_OR_RETURN(size_t hits, client->Lookup(ns, keys));
  s.hits = static_cast<uint32_t>(hits);
  if (hits != keys.size()) {
    warn(absl::StrCat("lookup: only a prefix of ", hits, " of the ", keys.size(),
                      " keys is stored; the latency is that of this partial hit"));
  }
  for (int i = 0; i < kLookupWarmup; ++i) KVTIER_RETURN_IF_ERROR(client->Lookup(ns, keys).status());
  std::vector<double> us;
  for (int i = 0; i < kLookupSamples; ++i) {
    const int64_t t0 = MonoNowNs();
    KVTIER_ASSIGN_OR_RETURN(size_t n, client->Lookup(ns, keys));
    us.push_back(static_cast<double>(MonoNowNs() - t0) / 1e3);
    if (n != hits) {
      return absl::InternalError(
          absl::StrCat("lookup answered ", n, " after answering ", hits, " for the same keys"));
    }
  }
  s.samples = kLookupSamples;
  s.p50_us = Percentile(us, 50);
  s.p99_us = Percentile(us, 99);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Anchors: ucx_perftest and Redis.

// Where an anchor's server runs and where its client runs from: the server's address, and how
// each side's argv runs on its host (null: here). Default: both here, over loopback.
struct AnchorHosts {
  std::string server_address = "127.0.0.1";
  ArgvWrap server;
  ArgvWrap client;
};

std::vector<std::string> On(const ArgvWrap& wrap, std::vector<std::string> argv) {
  return wrap ? wrap(argv) : argv;
}

std::string Tail(const std::string& s, size_t n = 2000) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

// ucp_put_bw between two ucx_perftest processes over the same UCX_TLS. ucx_perftest puts from
// and into ONE buffer of block_bytes over and over, so on shared memory (where a put is a
// memcpy into the peer's mapped segment) it measures a cache-resident copy, not DRAM: it is the
// transport's ceiling, not a bound a store moving distinct blocks can reach.
absl::StatusOr<double> MeasureUcxPerftest(const std::string& dir, uint64_t block_bytes, bool shm) {
  KVTIER_ASSIGN_OR_RETURN(int port, FreeTcpPort());
  const uint64_t budget = shm ? (4ull << 30) : (1ull << 30);
  const uint64_t iters = std::clamp<uint64_t>(budget / block_bytes, 50, 1000000);
  const uint64_t warmup = std::max<uint64_t>(10, iters / 10);
  SpawnOptions server;
  server.argv = {"ucx_perftest", "-p", std::to_string(port)};
  server.stdout_path = dir + "/ucx_perftest_server.log";
  server.stderr_path = "&1";
  KVTIER_ASSIGN_OR_RETURN(ChildProcess srv, ChildProcess::Spawn(server));
  SpawnOptions client;
  client.argv = {"ucx_perftest", "127.0.0.1",           "-p", std::to_string(port),
                 "-t",           "ucp_put_bw",          "-s", std::to_string(block_bytes),
                 "-n",           std::to_string(iters), "-w", std::to_string(warmup)};
  client.stderr_path = "&1";
  const absl::Time deadline = absl::Now() + absl::Seconds(10);  // for the server to listen
  while (true) {
    KVTIER_ASSIGN_OR_RETURN(CommandResult r, RunCommand(client, absl::Seconds(120)));
    // The summary line: "Final: iters lat50 lat_avg lat_overall bw_avg bw_overall mr_avg
    // mr_overall", bandwidth in MB/s where ucx_perftest's MB is 2^20 bytes.
    for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
      line = absl::StripLeadingAsciiWhitespace(line);
      if (!absl::ConsumePrefix(&line, "Final:")) continue;
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
      double mib_s = 0;
      if (f.size() >= 6 && absl::SimpleAtod(f[5], &mib_s) && mib_s > 0) {
        srv.Terminate(absl::Seconds(2));
        return mib_s * 1048576.0 / 1e9;
      }
    }
    const bool refused = absl::StrContains(r.output, "Connection refused");
    if (!refused || absl::Now() > deadline || !srv.Running()) {
      return absl::InternalError(absl::StrCat(
          "ucx_perftest client ", r.timed_out ? "timed out" : DescribeWaitStatus(r.wait_status),
          " without a Final line:\n", Tail(r.output), "\nserver log:\n",
          FileTail(dir + "/ucx_perftest_server.log", 1000)));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

// iperf3 over the links of `pairs` at once: on each pair's server host a server for one test,
// and from its client host a client with `streams` parallel TCP streams for `seconds`
// (`reverse`: the server sends, as a get's bytes flow). GB/s: the receivers' bytes per second
// (--json end.sum_received), summed over the pairs.
absl::StatusOr<double> MeasureIperf3(const std::string& dir, const std::vector<AnchorHosts>& pairs,
                                     int streams, int seconds, bool reverse) {
  KVTIER_ASSIGN_OR_RETURN(int port, FreeTcpPort());
  const std::string p = std::to_string(port);
  const std::string tag = reverse ? "reverse" : "forward";
  std::vector<ChildProcess> servers;
  for (size_t i = 0; i < pairs.size(); ++i) {
    SpawnOptions so;
    so.argv = On(pairs[i].server,
                 {"iperf3", "-s", "-1", "-B", pairs[i].server_address, "-p", p, "--forceflush"});
    so.stdout_path = absl::StrCat(dir, "/iperf3-server-", tag, i, ".log");
    so.stderr_path = "&1";
    KVTIER_ASSIGN_OR_RETURN(ChildProcess srv, ChildProcess::Spawn(so));
    servers.push_back(std::move(srv));
    if (!WaitFor([&] { return absl::StrContains(FileTail(so.stdout_path), "Server listening"); },
                 absl::Seconds(10))) {
      return absl::UnavailableError(absl::StrCat("iperf3 server did not listen; its output:\n",
                                                 FileTail(so.stdout_path, 1000)));
    }
  }
  std::vector<ChildProcess> clients;
  std::vector<std::string> outputs;
  for (size_t i = 0; i < pairs.size(); ++i) {
    SpawnOptions so;
    so.argv =
        On(pairs[i].client, {"iperf3", "-c", pairs[i].server_address, "-p", p, "-P",
                             std::to_string(streams), "-t", std::to_string(seconds), "--json"});
    if (reverse) so.argv.push_back("-R");
    so.stdout_path = absl::StrCat(dir, "/iperf3-client-", tag, i, ".json");
    so.stderr_path = so.stdout_path + ".err";
    KVTIER_ASSIGN_OR_RETURN(ChildProcess c, ChildProcess::Spawn(so));
    clients.push_back(std::move(c));
    outputs.push_back(so.stdout_path);
  }
  double gbps = 0;
  for (size_t i = 0; i < clients.size(); ++i) {
    const std::optional<int> st = clients[i].Wait(absl::Seconds(seconds + 60));
    const std::string out = FileTail(outputs[i], std::string::npos);
    json j = json::parse(out, nullptr, /*allow_exceptions=*/false);
    if (!st.has_value() || *st != 0 || j.is_discarded() || j.contains("error") ||
        !j.contains("end")) {
      return absl::InternalError(
          absl::StrCat("iperf3 client ", st.has_value() ? DescribeWaitStatus(*st) : "timed out",
                       ": ", Tail(out, 1000), FileTail(outputs[i] + ".err", 500)));
    }
    gbps += j.value(json::json_pointer("/end/sum_received/bits_per_second"), 0.0) / 8e9;
  }
  for (ChildProcess& srv : servers) srv.Terminate(absl::Seconds(2));
  return gbps;
}

struct RedisStats {
  double set_gbps = 0;
  double get_gbps = 0;
  uint64_t requests = 0;
  uint32_t pipeline = 0;
};

// redis-server (no persistence) driven by redis-benchmark -t set,get with values of
// block_bytes, `clients` connections and a pipeline of `batch` requests (one round trip per
// batch, as a kvtier Put/Get does). Without -r every SET overwrites the one key
// "key:__rand_int__", so the server's memory stays at one value while each request still
// carries block_bytes over the socket and into a fresh allocation; every GET returns that
// value. GB/s = requests/s * block_bytes / 1e9.
absl::StatusOr<RedisStats> MeasureRedis(const std::string& dir, uint64_t block_bytes,
                                        uint32_t batch, uint32_t clients,
                                        const AnchorHosts& where = {}) {
  KVTIER_ASSIGN_OR_RETURN(int port, FreeTcpPort());
  const std::string p = std::to_string(port);
  const std::string& host = where.server_address;
  const std::string log = dir + "/redis-server.log";
  SpawnOptions server;
  // Protected mode would refuse a client from another namespace host; the server listens on
  // its host's address only, for this run.
  server.argv =
      On(where.server, {"redis-server", "--port", p, "--bind", host, "--protected-mode", "no",
                        "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""});
  server.stdout_path = log;
  server.stderr_path = "&1";
  KVTIER_ASSIGN_OR_RETURN(ChildProcess srv, ChildProcess::Spawn(server));
  SpawnOptions ping;
  ping.argv = On(where.client, {"redis-cli", "-h", host, "-p", p, "ping"});
  ping.stderr_path = "&1";
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (true) {
    KVTIER_ASSIGN_OR_RETURN(CommandResult r, RunCommand(ping, absl::Seconds(3)));
    if (r.ok() && absl::StrContains(r.output, "PONG")) break;
    if (!srv.Running() || absl::Now() > deadline) {
      return absl::UnavailableError(
          absl::StrCat("redis-server did not answer PING; its log:\n", FileTail(log, 2000)));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  RedisStats s;
  // Keep one pipelined round (per connection) within Redis' default 1 GiB query buffer limit.
  s.pipeline = static_cast<uint32_t>(
      std::clamp<uint64_t>(std::min<uint64_t>(batch, (256ull << 20) / block_bytes), 1, batch));
  s.requests = std::clamp<uint64_t>((2ull << 30) / block_bytes, 200, 200000);
  SpawnOptions bench;
  bench.argv =
      On(where.client, {"redis-benchmark", "-h", host, "-p", p, "-t", "set,get", "-d",
                        std::to_string(block_bytes), "-n", std::to_string(s.requests), "-c",
                        std::to_string(clients), "-P", std::to_string(s.pipeline), "--csv", "-q"});
  KVTIER_ASSIGN_OR_RETURN(CommandResult r, RunCommand(bench, absl::Seconds(300)));
  srv.Terminate(absl::Seconds(5));
  if (!r.ok()) {
    return absl::InternalError(absl::StrCat(
        "redis-benchmark ", r.timed_out ? "timed out" : DescribeWaitStatus(r.wait_status), ":\n",
        Tail(r.output)));
  }
  // Debian's redis 7.0 --csv: a header line, then "SET","400.00","39.871",... per test.
  bool have_set = false, have_get = false;
  for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
    std::vector<std::string> f = absl::StrSplit(absl::StripAsciiWhitespace(line), ',');
    if (f.size() < 2) continue;
    for (std::string& x : f) x = std::string(absl::StripSuffix(absl::StripPrefix(x, "\""), "\""));
    double rps = 0;
    if (!absl::SimpleAtod(f[1], &rps)) continue;
    const double gbps = rps * static_cast<double>(block_bytes) / 1e9;
    if (f[0] == "SET") {
      s.set_gbps = gbps;
      have_set = true;
    } else if (f[0] == "GET") {
      s.get_gbps = gbps;
      have_get = true;
    }
  }
  if (!have_set || !have_get) {
    return absl::InternalError(
        absl::StrCat("cannot parse redis-benchmark --csv output:\n", Tail(r.output)));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Report.

json OptJson(std::optional<double> v) { return v.has_value() ? json(*v) : json(nullptr); }

std::optional<double> Ratio(double v, std::optional<double> anchor) {
  if (!anchor.has_value() || *anchor <= 0) return std::nullopt;
  return v / *anchor;
}

struct TargetRow {
  std::string metric;
  double value = 0;
  std::string anchor_name;  // empty: no anchor
  std::optional<double> anchor;
  std::optional<double> ratio;
  std::string target;        // e.g. ">= 0.8x"; empty: informational
  std::optional<bool> pass;  // nullopt: informational or anchor missing
};

// The rows of a report table, under their header.
void PrintRows(FILE* out, const std::vector<TargetRow>& rows) {
  std::fprintf(out, "%-26s %10s   %-36s %8s   %-8s %s\n", "metric", "kvtier", "anchor", "ratio",
               "target", "result");
  for (const TargetRow& r : rows) {
    std::string anchor = "-";
    if (!r.anchor_name.empty()) {
      anchor = r.anchor.has_value() ? absl::StrFormat("%s %.2f", r.anchor_name, *r.anchor)
                                    : absl::StrCat(r.anchor_name, " n/a");
    }
    const std::string ratio = r.ratio.has_value() ? absl::StrFormat("%.2fx", *r.ratio) : "-";
    const char* result = r.target.empty()      ? "info"
                         : !r.pass.has_value() ? "n/a"
                         : *r.pass             ? "PASS"
                                               : "MISS";
    std::fprintf(out, "%-26s %10.2f   %-36s %8s   %-8s %s\n", r.metric.c_str(), r.value,
                 anchor.c_str(), ratio.c_str(), r.target.empty() ? "-" : r.target.c_str(), result);
  }
}

// The targets as JSON, and whether every one passed.
json TargetsJson(const std::vector<TargetRow>& rows, bool* all_pass) {
  json targets = json::array();
  *all_pass = true;
  for (const TargetRow& r : rows) {
    if (r.target.empty()) continue;
    if (r.pass != true) *all_pass = false;
    targets.push_back({{"metric", r.metric},
                       {"value", r.value},
                       {"anchor", r.anchor_name.empty() ? json(nullptr) : json(r.anchor_name)},
                       {"anchor_value", OptJson(r.anchor)},
                       {"ratio", OptJson(r.ratio)},
                       {"target", r.target},
                       {"pass", r.pass.has_value() ? json(*r.pass) : json(nullptr)}});
  }
  return targets;
}

// A row comparing `v` with `anchor`; min_ratio > 0 makes it a target.
TargetRow RatioRow(const std::string& metric, double v, const std::string& anchor_name,
                   std::optional<double> anchor, double min_ratio) {
  TargetRow r{metric, v, anchor_name, anchor, Ratio(v, anchor), "", std::nullopt};
  if (min_ratio > 0) {
    r.target = absl::StrFormat(">= %gx", min_ratio);
    if (r.ratio.has_value()) r.pass = *r.ratio >= min_ratio;
  }
  return r;
}

// Everything the run measured, for the report.
struct StoreResults {
  StoreNodeInfo node;
  Aggregate put;
  Aggregate get;
  LookupStats lookup;
  double seconds = 0;  // warm-up to the end of the lookups
};

struct AnchorResults {
  MemcpyGbps memcpy;
  std::optional<double> ucx_perftest_gbps;
  std::optional<double> redis_set_gbps;
  std::optional<double> redis_get_gbps;
  uint64_t redis_requests = 0;
  uint32_t redis_pipeline = 0;
};

using WarnFn = std::function<void(std::string)>;

struct Bandwidth {
  Aggregate put;
  Aggregate get;
};

// Drives the clients through warm-up (each client writes `warmup_blocks` new blocks, bounded by
// kMaxWarmupBytes), the timed put phase, the seeding of the get working set and the timed get
// phase. `slots`: of all the stores together.
absl::StatusOr<Bandwidth> MeasureBandwidth(const StoreBenchOptions& o, uint64_t slots,
                                           uint64_t warmup_blocks, Clients* clients) {
  const uint64_t batch_bytes = uint64_t{o.batch} * o.block_bytes;
  const uint64_t needed_slots = uint64_t{o.clients} * o.batch * (kGetBatches + 1);
  if (slots < needed_slots) {
    return absl::FailedPreconditionError(
        absl::StrCat("the stores have ", slots, " slots; ", o.clients, " clients x ",
                     kGetBatches + 1, " batches of ", o.batch, " blocks need ", needed_slots));
  }

  // Warm-up: connection set-up, cold caches, the store's first evictions (and, on shared
  // memory, the page faults of each client's mapping of the pool) out of the measurement.
  auto phase_start = [&] {
    // Workers: time for the command to reach every one of them before the common start.
    return MonoNowNs() + (o.clients > 1 ? 100'000'000 : 0);
  };
  const int64_t warmup_batches = static_cast<int64_t>(
      std::min<uint64_t>((warmup_blocks + o.batch - 1) / o.batch,
                         std::max<uint64_t>(1, kMaxWarmupBytes / batch_bytes)));
  auto untimed_timeout = [&](int64_t batches) {  // allows >= 50 MB/s per client
    return absl::Seconds(120) + absl::Seconds(static_cast<double>(batches) * batch_bytes / 50e6);
  };
  spdlog::info("warm-up: {} batches of {} x {} per client", warmup_batches, o.batch,
               HumanBytes(o.block_bytes));
  KVTIER_RETURN_IF_ERROR(
      clients
          ->RunPhase({"warmup", phase_start(), 0, warmup_batches}, untimed_timeout(warmup_batches))
          .status());

  auto timed = [&](const std::string& phase) -> absl::StatusOr<Aggregate> {
    PhaseCommand c{phase, phase_start(), 0, o.iterations, o.progress_s};
    c.end_ns = c.start_ns + static_cast<int64_t>(o.seconds * 1e9);
    const absl::Duration timeout =
        o.iterations > 0 ? untimed_timeout(o.iterations) : absl::Seconds(o.seconds + 120);
    KVTIER_ASSIGN_OR_RETURN(std::vector<PhaseResult> rs, clients->RunPhase(c, timeout));
    Aggregate a = Combine(rs);
    spdlog::info(
        "{}: {:.2f} GB/s ({} batches, {:.2f} GB in {:.2f} s; batch p50 {:.2f} ms, "
        "p99 {:.2f} ms)",
        phase, a.gbps, a.batches, a.bytes / 1e9, a.seconds, a.batch_p50_ms, a.batch_p99_ms);
    return a;
  };
  Bandwidth bw;
  KVTIER_ASSIGN_OR_RETURN(bw.put, timed("put"));
  spdlog::info("seeding the get working set: {} batches per client", kGetBatches);
  KVTIER_RETURN_IF_ERROR(
      clients->RunPhase({"seed", phase_start(), 0, 0}, untimed_timeout(2 * kGetBatches)).status());
  KVTIER_ASSIGN_OR_RETURN(bw.get, timed("get"));
  return bw;
}

// Starts the stores (unless --store), drives the clients through warm-up, put, seed and get,
// then measures lookups; stops the stores it started before returning.
absl::StatusOr<StoreResults> MeasureStore(const StoreBenchOptions& o, const std::string& exe_dir,
                                          const std::string& dir, const WarnFn& warn) {
  StoreResults res;
  // Namespaces unique to this run, so a reused store never answers "already present".
  NamespaceParams np;
  np.tenant_salt = absl::StrCat("kvtier-bench/", getpid(), "/", MonoNowNs());
  const NamespaceId ns = ComputeNamespace(np);
  np.tenant_salt += "/lookup";
  const NamespaceId lookup_ns = ComputeNamespace(np);

  const uint64_t batch_bytes = uint64_t{o.batch} * o.block_bytes;
  const uint64_t pool_bytes = uint64_t{o.clients} * kPoolBatchesPerClient * batch_bytes;
  // Everything this run holds at once must fit in memory: an overcommitted pool would fail
  // (or be killed) half-way rather than here.
  const uint64_t client_bytes = uint64_t{o.clients} * 3 * batch_bytes;
  const uint64_t need_bytes = (o.store.empty() ? pool_bytes : 0) + client_bytes;
  if (auto avail = MemAvailableBytes(); avail.ok() && need_bytes > *avail / 10 * 8) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "this run needs about ", HumanBytes(need_bytes), " (store pool ", HumanBytes(pool_bytes),
        " + client buffers ", HumanBytes(client_bytes), ") but only ", *avail >> 20,
        " MiB are available; use fewer --clients, a smaller --batch or --block-bytes"));
  }

  // Stores. Declared before the clients, so that on an error return the clients go first.
  StoreProcess main_store, lookup_store;
  std::string store_addr = o.store, lookup_addr = o.store;
  if (o.store.empty()) {
    spdlog::info("starting kvtier-store: pool {} in slots of {}", HumanBytes(pool_bytes),
                 HumanBytes(o.block_bytes));
    KVTIER_ASSIGN_OR_RETURN(main_store,
                            SpawnStore(exe_dir, dir, "store", pool_bytes, o.block_bytes));
    KVTIER_ASSIGN_OR_RETURN(
        lookup_store, SpawnStore(exe_dir, dir, "lookup-store", kLookupPoolSlots * kLookupBlockBytes,
                                 kLookupBlockBytes));
    KVTIER_RETURN_IF_ERROR(main_store.AwaitReady());
    KVTIER_RETURN_IF_ERROR(lookup_store.AwaitReady());
    store_addr = main_store.address();
    lookup_addr = lookup_store.address();
  }

  // Clients: in-process for one, worker processes (posix_spawn of ourselves) otherwise.
  StoreWorkerOptions wo;
  wo.store = store_addr;
  wo.ns_hex = KeyToHex(ns);
  wo.block_bytes = o.block_bytes;
  wo.batch = o.batch;
  wo.get_batches = kGetBatches;
  wo.lanes = o.lanes;
  std::unique_ptr<Clients> clients;
  if (o.clients == 1) {
    KVTIER_ASSIGN_OR_RETURN(clients, Clients::InProcess(wo));
  } else {
    KVTIER_ASSIGN_OR_RETURN(clients,
                            Clients::Workers(exe_dir + "/kvtier-bench", wo, o.clients, nullptr));
  }
  res.node = clients->node();
  spdlog::info("store {}: {} slots of {}; data-plane lanes:\n{}", store_addr, res.node.slot_count,
               HumanBytes(res.node.slot_bytes), res.node.ucx_lanes);
  if (o.transport == "shm" && !absl::StrContains(res.node.ucx_lanes, "posix") &&
      !absl::StrContains(res.node.ucx_lanes, "sysv") &&
      !absl::StrContains(res.node.ucx_lanes, "cma")) {
    warn("transport shm requested but the endpoint uses no shared-memory transport");
  }
  const int64_t t_start = MonoNowNs();
  // On shared memory each client process maps the store's pool, and its first write to each
  // page of that mapping takes a page fault (the store touched the pages, but page tables are
  // per process): every client writes kWarmupPoolPasses pool sizes first.
  KVTIER_ASSIGN_OR_RETURN(Bandwidth bw,
                          MeasureBandwidth(o, res.node.slot_count,
                                           kWarmupPoolPasses * res.node.slot_count, clients.get()));
  res.put = bw.put;
  res.get = bw.get;
  clients->Close();

  spdlog::info("lookup: {} keys, {} samples", kLookupKeys, kLookupSamples);
  KVTIER_ASSIGN_OR_RETURN(res.lookup, MeasureLookup(lookup_addr, lookup_ns, warn));
  spdlog::info("lookup of {} keys ({} present): p50 {:.0f} us, p99 {:.0f} us", res.lookup.keys,
               res.lookup.hits, res.lookup.p50_us, res.lookup.p99_us);
  res.seconds = static_cast<double>(MonoNowNs() - t_start) / 1e9;

  // Done with the stores: take them down now, so they compete with no anchor.
  for (StoreProcess* s : {&main_store, &lookup_store}) {
    if (s->process().pid() <= 0) continue;  // not started
    const int st = s->process().Terminate(absl::Seconds(10));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      warn(absl::StrCat("kvtier-store ", s->address(), " ended with ", DescribeWaitStatus(st),
                        "; log tail:\n", FileTail(s->log_path(), 1500)));
    }
  }
  return res;
}

// ucx_perftest and Redis: a tool that is missing or fails gives null and a warning.
void MeasureToolAnchors(const StoreBenchOptions& o, const std::string& dir, const WarnFn& warn,
                        AnchorResults* a) {
  if (o.skip_anchors) {
    warn("--skip-anchors: ucx_perftest and redis anchors not measured");
    return;
  }
  spdlog::info("ucx_perftest ucp_put_bw, {} messages", HumanBytes(o.block_bytes));
  auto pt = MeasureUcxPerftest(dir, o.block_bytes, o.transport == "shm");
  if (pt.ok()) {
    a->ucx_perftest_gbps = *pt;
    spdlog::info("ucx_perftest: {:.2f} GB/s", *pt);
  } else {
    warn(absl::StrCat("ucx_perftest anchor unavailable: ", pt.status().message()));
  }
  spdlog::info("redis-benchmark -t set,get -d {} -c {} -P {}", o.block_bytes, o.clients, o.batch);
  auto rd = MeasureRedis(dir, o.block_bytes, o.batch, o.clients);
  if (rd.ok()) {
    a->redis_set_gbps = rd->set_gbps;
    a->redis_get_gbps = rd->get_gbps;
    a->redis_requests = rd->requests;
    a->redis_pipeline = rd->pipeline;
    spdlog::info("redis: SET {:.2f} GB/s, GET {:.2f} GB/s", rd->set_gbps, rd->get_gbps);
  } else {
    warn(absl::StrCat("redis anchor unavailable: ", rd.status().message()));
  }
}

// The targets of the issue (docs/BENCHMARKS.md): shm put and get >= 0.8x memcpy and >= 2x Redis;
// tcp put and get >= Redis; a lookup of 1,000 keys p50 < 1 ms. The other rows are context.
std::vector<TargetRow> TargetRows(const StoreBenchOptions& o, const StoreResults& s,
                                  const AnchorResults& a) {
  const bool shm = o.transport == "shm";
  std::vector<TargetRow> rows;
  auto ratio_row = [&](const std::string& metric, double v, const std::string& anchor_name,
                       std::optional<double> anchor, double min_ratio) {
    rows.push_back(RatioRow(metric, v, anchor_name, anchor, min_ratio));
  };
  const std::string chunked = absl::StrCat("memcpy in ", HumanBytes(o.block_bytes), " calls");
  ratio_row("put GB/s", s.put.gbps, "memcpy", a.memcpy.whole, shm ? 0.8 : 0);
  ratio_row("get GB/s", s.get.gbps, "memcpy", a.memcpy.whole, shm ? 0.8 : 0);
  ratio_row("put GB/s", s.put.gbps, "redis SET", a.redis_set_gbps, shm ? 2.0 : 1.0);
  ratio_row("get GB/s", s.get.gbps, "redis GET", a.redis_get_gbps, shm ? 2.0 : 1.0);
  ratio_row("put GB/s", s.put.gbps, chunked, a.memcpy.chunked, 0);
  ratio_row("get GB/s", s.get.gbps, chunked, a.memcpy.chunked, 0);
  ratio_row("put GB/s", s.put.gbps, "ucx_perftest put (1 buffer)", a.ucx_perftest_gbps, 0);
  rows.push_back({absl::StrCat("lookup ", s.lookup.keys, " keys p50 us"), s.lookup.p50_us, "",
                  std::nullopt, std::nullopt, "< 1000", s.lookup.p50_us < 1000.0});
  rows.push_back({absl::StrCat("lookup ", s.lookup.keys, " keys p99 us"), s.lookup.p99_us, "",
                  std::nullopt, std::nullopt, "", std::nullopt});
  return rows;
}

void PrintTable(FILE* out, const StoreBenchOptions& o, const std::string& tls,
                const StoreResults& s, const std::vector<TargetRow>& rows) {
  const std::string per_phase = o.iterations > 0 ? absl::StrCat(o.iterations, " batches")
                                                 : absl::StrFormat("%.1f s", o.seconds);
  std::fprintf(out,
               "\nkvtier store benchmark: transport %s (UCX_TLS=%s), block %s, batch %u, "
               "clients %u, %s per phase\n",
               o.transport.c_str(), tls.c_str(), HumanBytes(o.block_bytes).c_str(), o.batch,
               o.clients, per_phase.c_str());
  PrintRows(out, rows);
  std::fprintf(out,
               "batch latency: put p50 %.2f ms p99 %.2f ms, get p50 %.2f ms p99 %.2f ms; "
               "store phases took %.1f s\n",
               s.put.batch_p50_ms, s.put.batch_p99_ms, s.get.batch_p50_ms, s.get.batch_p99_ms,
               s.seconds);
  std::fprintf(out,
               "notes: memcpy is one thread over 2 x %s (one call: glibc uses non-temporal "
               "stores; in %s calls: ordinary stores); ucx_perftest reuses one %s buffer, so on "
               "shm it measures a cache-resident copy, not DRAM; redis SETs overwrite one key.\n",
               HumanBytes(kMemcpyBytes).c_str(), HumanBytes(o.block_bytes).c_str(),
               HumanBytes(o.block_bytes).c_str());
  std::fflush(out);
}

json ReportJson(const StoreBenchOptions& o, const std::string& tls, const StoreResults& s,
                const AnchorResults& a, const std::vector<TargetRow>& rows,
                const std::vector<std::string>& warnings) {
  json ratios = {
      {"put_vs_memcpy", OptJson(Ratio(s.put.gbps, a.memcpy.whole))},
      {"get_vs_memcpy", OptJson(Ratio(s.get.gbps, a.memcpy.whole))},
      {"put_vs_redis_set", OptJson(Ratio(s.put.gbps, a.redis_set_gbps))},
      {"get_vs_redis_get", OptJson(Ratio(s.get.gbps, a.redis_get_gbps))},
      {"put_vs_ucx_perftest", OptJson(Ratio(s.put.gbps, a.ucx_perftest_gbps))},
      {"put_vs_memcpy_block", OptJson(Ratio(s.put.gbps, a.memcpy.chunked))},
      {"get_vs_memcpy_block", OptJson(Ratio(s.get.gbps, a.memcpy.chunked))},
  };
  bool all_pass = true;
  const json targets = TargetsJson(rows, &all_pass);
  json j = {
      {"bench", "store"},
      {"transport", o.transport},
      {"ucx_tls", tls},
      {"block_bytes", o.block_bytes},
      {"batch", o.batch},
      {"clients", o.clients},
      {"seconds", o.iterations > 0 ? json(nullptr) : json(o.seconds)},
      {"iterations", o.iterations > 0 ? json(o.iterations) : json(nullptr)},
      {"store", o.store.empty() ? json("spawned") : json(o.store)},
      {"pool_slots", s.node.slot_count},
      {"put_gbps", s.put.gbps},
      {"put_bytes", s.put.bytes},
      {"put_seconds", s.put.seconds},
      {"put_batch_p50_ms", s.put.batch_p50_ms},
      {"put_batch_p99_ms", s.put.batch_p99_ms},
      {"get_gbps", s.get.gbps},
      {"get_bytes", s.get.bytes},
      {"get_seconds", s.get.seconds},
      {"get_batch_p50_ms", s.get.batch_p50_ms},
      {"get_batch_p99_ms", s.get.batch_p99_ms},
      {"lookup_keys", s.lookup.keys},
      {"lookup_hits", s.lookup.hits},
      {"lookup_samples", s.lookup.samples},
      {"lookup_p50_us", s.lookup.p50_us},
      {"lookup_p99_us", s.lookup.p99_us},
      {"memcpy_gbps", a.memcpy.whole},
      {"memcpy_block_gbps", a.memcpy.chunked},
      {"ucx_perftest_put_gbps", OptJson(a.ucx_perftest_gbps)},
      {"redis_set_gbps", OptJson(a.redis_set_gbps)},
      {"redis_get_gbps", OptJson(a.redis_get_gbps)},
      {"redis_requests", a.redis_requests},
      {"redis_pipeline", a.redis_pipeline},
      {"ratios", ratios},
      {"targets", targets},
      {"all_targets_met", all_pass},
      {"warnings", warnings},
  };
  for (const auto& [k, v] : ratios.items()) j[k] = v;  // also at top level
  return j;
}

// ---------------------------------------------------------------------------------------------
// --netns: stores and clients on hosts made of network namespaces, over a veth link.

// The topology's names and subnet (one --netns run at a time: a second one is refused while
// the first one's namespaces run processes).
constexpr char kNetnsPrefix[] = "kvtbs";
constexpr char kNetnsSubnet[] = "10.213.50";
constexpr char kNetnsClientHost[] = "clients";

struct NetnsResults {
  StoreNodeInfo node;  // the first store, with the slots of all
  Bandwidth bw;
  int streams = 0;  // TCP connections of the clients to one store: clients x lanes
  std::optional<double> iperf3_gbps, iperf3_reverse_gbps, redis_set_gbps, redis_get_gbps;
};

// Starts the store nodes (one per host) and the clients' worker processes (on a host of their
// own), measures put and get, stops the stores, then measures the anchors over the same links.
absl::StatusOr<NetnsResults> MeasureNetns(const StoreBenchOptions& o, const std::string& exe_dir,
                                          const std::string& dir, const WarnFn& warn) {
  const uint64_t batch_bytes = uint64_t{o.batch} * o.block_bytes;
  const uint64_t pool_bytes = uint64_t{o.clients} * kPoolBatchesPerClient * batch_bytes;
  const uint64_t need_bytes = o.store_nodes * pool_bytes + uint64_t{o.clients} * 3 * batch_bytes;
  if (auto avail = MemAvailableBytes(); avail.ok() && need_bytes > *avail / 10 * 8) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this run needs about ", HumanBytes(need_bytes), " but only ", *avail >> 20,
                     " MiB are available; use fewer --clients or --store-nodes"));
  }
  std::vector<std::string> hosts;
  for (uint32_t k = 1; k <= o.store_nodes; ++k) hosts.push_back(absl::StrCat("store", k));
  hosts.push_back(kNetnsClientHost);
  KVTIER_RETURN_IF_ERROR(deploy::NetnsTopology::CheckUnused(kNetnsPrefix));
  KVTIER_ASSIGN_OR_RETURN(
      deploy::NetnsTopology topo,
      deploy::NetnsTopology::Create(hosts, {.prefix = kNetnsPrefix, .subnet = kNetnsSubnet}));
  auto on = [&topo](const std::string& host) -> ArgvWrap {
    return [&topo, host](const std::vector<std::string>& argv) { return topo.Wrap(host, argv); };
  };

  // The stores, declared after the topology and before the clients: on an error return the
  // clients go first, the namespaces last.
  std::vector<ServerProcess> stores;
  std::vector<std::string> addresses;
  for (uint32_t k = 0; k < o.store_nodes; ++k) {
    const std::string ip = topo.Address(hosts[k]);
    SpawnOptions so;
    so.argv =
        topo.Wrap(hosts[k], {exe_dir + "/kvtier-store", "--plaintext", "--listen=" + ip + ":0",
                             "--metrics-listen=off", absl::StrCat("--pool-bytes=", pool_bytes),
                             absl::StrCat("--slot-bytes=", o.block_bytes)});
    so.stop_grace = absl::Seconds(5);
    KVTIER_ASSIGN_OR_RETURN(ServerProcess store, ServerProcess::Spawn(so, dir, hosts[k]));
    stores.push_back(std::move(store));
  }
  for (uint32_t k = 0; k < o.store_nodes; ++k) {
    KVTIER_RETURN_IF_ERROR(stores[k].AwaitReady(kStoreStartTimeout));
    addresses.push_back(absl::StrCat(topo.Address(hosts[k]), ":", stores[k].grpc_port()));
  }
  spdlog::info("{} store node(s) on {}, pool {} each in slots of {}", o.store_nodes,
               absl::StrJoin(addresses, ", "), HumanBytes(pool_bytes), HumanBytes(o.block_bytes));

  NamespaceParams np;
  np.tenant_salt = absl::StrCat("kvtier-bench-netns/", getpid(), "/", MonoNowNs());
  StoreWorkerOptions wo;
  wo.store = absl::StrJoin(addresses, ",");
  wo.ns_hex = KeyToHex(ComputeNamespace(np));
  wo.block_bytes = o.block_bytes;
  wo.batch = o.batch;
  wo.get_batches = kGetBatches;
  wo.map_pool = false;  // a namespace host is another host: no shared memory
  wo.lanes = o.lanes;
  KVTIER_ASSIGN_OR_RETURN(
      std::unique_ptr<Clients> clients,
      Clients::Workers(exe_dir + "/kvtier-bench", wo, o.clients, on(kNetnsClientHost)));
  NetnsResults res;
  res.node = clients->node();
  spdlog::info("{} client process(es) on host {}; {} slots in all; data-plane lanes to {}:\n{}",
               o.clients, kNetnsClientHost, res.node.slot_count, addresses[0], res.node.ucx_lanes);
  if (!absl::StrContains(res.node.ucx_lanes, "tcp")) {
    warn("the data plane uses no TCP lane: the bytes may not cross the veth link");
  }
  // Each client writes its share of the pools once: the put phase then evicts, as in service.
  KVTIER_ASSIGN_OR_RETURN(res.bw, MeasureBandwidth(o, res.node.slot_count,
                                                   res.node.slot_count / o.clients, clients.get()));
  clients->Close();
  for (size_t k = 0; k < stores.size(); ++k) {
    const int st = stores[k].process().Terminate(absl::Seconds(10));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      warn(absl::StrCat("kvtier-store ", addresses[k], " ended with ", DescribeWaitStatus(st),
                        "; log tail:\n", FileTail(stores[k].log_path(), 1500)));
    }
  }

  // Anchors over the same links, each store host a server.
  res.streams = static_cast<int>(std::min<uint32_t>(o.clients * o.lanes, 128));
  if (o.skip_anchors) {
    warn("--skip-anchors: iperf3 and redis anchors not measured");
    return res;
  }
  std::vector<AnchorHosts> pairs;
  for (uint32_t k = 0; k < o.store_nodes; ++k) {
    pairs.push_back({topo.Address(hosts[k]), on(hosts[k]), on(kNetnsClientHost)});
  }
  const int seconds = std::max(1, static_cast<int>(std::lround(o.seconds)));
  for (bool reverse : {false, true}) {
    spdlog::info("iperf3{} -P {} -t {} to each of {} store host(s)", reverse ? " -R" : "",
                 res.streams, seconds, pairs.size());
    auto ip = MeasureIperf3(dir, pairs, res.streams, seconds, reverse);
    if (!ip.ok()) {
      warn(absl::StrCat("iperf3 anchor unavailable: ", ip.status().message()));
      continue;
    }
    spdlog::info("iperf3{}: {:.2f} GB/s", reverse ? " -R" : "", *ip);
    (reverse ? res.iperf3_reverse_gbps : res.iperf3_gbps) = *ip;
  }
  spdlog::info("redis-benchmark on {} from {}: -d {} -c {} -P {}", hosts[0], kNetnsClientHost,
               o.block_bytes, o.clients, o.batch);
  auto rd = MeasureRedis(dir, o.block_bytes, o.batch, o.clients, pairs[0]);
  if (rd.ok()) {
    res.redis_set_gbps = rd->set_gbps;
    res.redis_get_gbps = rd->get_gbps;
    spdlog::info("redis: SET {:.2f} GB/s, GET {:.2f} GB/s", rd->set_gbps, rd->get_gbps);
  } else {
    warn(absl::StrCat("redis anchor unavailable: ", rd.status().message()));
  }
  return res;
}

// The targets across hosts (docs/BENCHMARKS.md): put and get >= 0.8x iperf3 with as many
// streams, >= 2x Redis.
absl::Status RunNetnsBench(const StoreBenchOptions& o, const std::string& exe_dir,
                           const std::string& dir, const std::string& tls,
                           const std::vector<std::string>& warnings, const WarnFn& warn) {
  if (absl::Status st = deploy::NetnsTopology::Available(); !st.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--netns makes network namespaces, which needs root and iproute2: ", st.message()));
  }
  KVTIER_ASSIGN_OR_RETURN(NetnsResults r, MeasureNetns(o, exe_dir, dir, warn));
  const std::string streams = absl::StrCat("-P ", r.streams);
  const std::vector<TargetRow> rows = {
      RatioRow("put GB/s", r.bw.put.gbps, "iperf3 " + streams, r.iperf3_gbps, 0.8),
      RatioRow("get GB/s", r.bw.get.gbps, "iperf3 -R " + streams, r.iperf3_reverse_gbps, 0.8),
      RatioRow("put GB/s", r.bw.put.gbps, "redis SET (store1)", r.redis_set_gbps, 2.0),
      RatioRow("get GB/s", r.bw.get.gbps, "redis GET (store1)", r.redis_get_gbps, 2.0),
  };
  FILE* out = o.json ? stderr : g_out;
  std::fprintf(out,
               "\nkvtier store benchmark across network namespaces: %u store node(s), %u "
               "client(s) on another host, %u lane(s), UCX_TLS=%s over veth, block %s, batch %u, "
               "%.1f s per phase\n",
               o.store_nodes, o.clients, o.lanes, tls.c_str(), HumanBytes(o.block_bytes).c_str(),
               o.batch, o.seconds);
  PrintRows(out, rows);
  std::fprintf(out,
               "batch latency: put p50 %.2f ms p99 %.2f ms, get p50 %.2f ms p99 %.2f ms\n"
               "notes: a veth pair has no link speed of its own (the CPU moves every byte); "
               "iperf3 runs one pair per store host at once, Redis on store1 only\n",
               r.bw.put.batch_p50_ms, r.bw.put.batch_p99_ms, r.bw.get.batch_p50_ms,
               r.bw.get.batch_p99_ms);
  if (o.json) {
    bool all_pass = true;
    json targets = TargetsJson(rows, &all_pass);
    json j = {{"bench", "store-netns"},
              {"ucx_tls", tls},
              {"store_nodes", o.store_nodes},
              {"clients", o.clients},
              {"lanes", o.lanes},
              {"block_bytes", o.block_bytes},
              {"batch", o.batch},
              {"seconds", o.seconds},
              {"pool_slots", r.node.slot_count},
              {"put_gbps", r.bw.put.gbps},
              {"get_gbps", r.bw.get.gbps},
              {"put_batch_p50_ms", r.bw.put.batch_p50_ms},
              {"get_batch_p50_ms", r.bw.get.batch_p50_ms},
              {"iperf3_streams", r.streams},
              {"iperf3_gbps", OptJson(r.iperf3_gbps)},
              {"iperf3_reverse_gbps", OptJson(r.iperf3_reverse_gbps)},
              {"redis_set_gbps", OptJson(r.redis_set_gbps)},
              {"redis_get_gbps", OptJson(r.redis_get_gbps)},
              {"put_vs_iperf3", OptJson(Ratio(r.bw.put.gbps, r.iperf3_gbps))},
              {"get_vs_iperf3_reverse", OptJson(Ratio(r.bw.get.gbps, r.iperf3_reverse_gbps))},
              {"put_vs_redis_set", OptJson(Ratio(r.bw.put.gbps, r.redis_set_gbps))},
              {"get_vs_redis_get", OptJson(Ratio(r.bw.get.gbps, r.redis_get_gbps))},
              {"targets", targets},
              {"all_targets_met", all_pass},
              {"warnings", warnings}};
    std::fprintf(g_out, "%s\n", j.dump().c_str());
    std::fflush(g_out);
  }
  return absl::OkStatus();
}

absl::Status RunStoreBenchOrError(const StoreBenchOptions& o) {
  if (o.transport != "shm" && o.transport != "tcp") {
    return absl::InvalidArgumentError(
        absl::StrCat("--transport must be shm or tcp, not '", o.transport, "'"));
  }
  if (o.block_bytes < 4096) return absl::InvalidArgumentError("--block-bytes must be >= 4KiB");
  if (o.batch == 0) return absl::InvalidArgumentError("--batch must be >= 1");
  if (o.clients == 0 || o.clients > 64) {
    return absl::InvalidArgumentError("--clients must be in 1..64");
  }
  if (o.iterations <= 0 && !(o.seconds > 0 && o.seconds <= 600)) {
    return absl::InvalidArgumentError("--seconds must be in (0, 600]");
  }
  if (o.netns && !o.store.empty()) {
    return absl::InvalidArgumentError("--netns starts its own stores (no --store)");
  }
  if (o.store_nodes < 1 || o.store_nodes > 3 || (o.store_nodes > 1 && !o.netns)) {
    return absl::InvalidArgumentError(
        "--store-nodes must be in 1..3, and more than 1 needs --netns");
  }
  if (o.lanes < 1 || o.lanes > 16) return absl::InvalidArgumentError("--lanes must be in 1..16");
  // Across namespaces the data plane is TCP, whatever --transport says.
  const std::string tls = o.transport == "shm" && !o.netns ? kShmTls : kTcpTls;
  // Inherited by every process started below (posix_spawn passes our environment on).
  setenv("UCX_TLS", tls.c_str(), 1);
  std::vector<std::string> warnings;
  const WarnFn warn = [&warnings](std::string w) {
    spdlog::warn("{}", w);
    warnings.push_back(std::move(w));
  };
  if (!o.store.empty()) {
    warn(absl::StrCat("using the running store ", o.store,
                      ": its own UCX_TLS applies on its side; this process uses ", tls));
  }
  KVTIER_ASSIGN_OR_RETURN(std::string exe_dir, SelfExeDir());
  KVTIER_ASSIGN_OR_RETURN(auto tmp, TempDir::Create("kvtier-bench-"));
  if (o.spill) {
    if (!o.store.empty()) return absl::InvalidArgumentError("--spill starts its own stores");
    return RunSpillBench(o, exe_dir, tmp->path());
  }
  if (o.netns) return RunNetnsBench(o, exe_dir, tmp->path(), tls, warnings, warn);

  // The memcpy anchor first, while nothing else runs.
  AnchorResults anchors;
  spdlog::info("memcpy anchor: 2 x {} buffers, whole and in {} calls, best of {}",
               HumanBytes(kMemcpyBytes), HumanBytes(o.block_bytes), kMemcpyReps);
  KVTIER_ASSIGN_OR_RETURN(anchors.memcpy, MeasureMemcpy(kMemcpyBytes, o.block_bytes, kMemcpyReps));
  spdlog::info("memcpy: {:.2f} GB/s in one call, {:.2f} GB/s in {} calls", anchors.memcpy.whole,
               anchors.memcpy.chunked, HumanBytes(o.block_bytes));

  KVTIER_ASSIGN_OR_RETURN(StoreResults store, MeasureStore(o, exe_dir, tmp->path(), warn));
  MeasureToolAnchors(o, tmp->path(), warn, &anchors);

  const std::vector<TargetRow> rows = TargetRows(o, store, anchors);
  // The table goes to stdout, or to stderr when stdout is reserved for the JSON line.
  PrintTable(o.json ? stderr : g_out, o, tls, store, rows);
  if (o.json) {
    std::fprintf(g_out, "%s\n", ReportJson(o, tls, store, anchors, rows, warnings).dump().c_str());
    std::fflush(g_out);
  }
  return absl::OkStatus();
}

}  // namespace

int RunStoreBench(const StoreBenchOptions& options) {
  InstallChildCleanupHandlers();
  if (absl::Status s = RedirectStdoutToStderr(); !s.ok()) {
    std::fprintf(stderr, "kvtier-bench: %s\n", s.ToString().c_str());
    return 1;
  }
  absl::Status s = RunStoreBenchOrError(options);
  if (!s.ok()) {
    std::fprintf(stderr, "kvtier-bench store: FAILED: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

int RunStoreWorker(const StoreWorkerOptions& options) {
  // A worker dies with its parent's pipe: EOF on stdin ends it.
  if (absl::Status s = RedirectStdoutToStderr(); !s.ok()) {
    std::fprintf(stderr, "kvtier-bench worker: %s\n", s.ToString().c_str());
    return 1;
  }
  auto say = [](const json& j) {
    std::fprintf(g_out, "%s\n", j.dump().c_str());
    std::fflush(g_out);
  };
  auto runner = ClientRunner::Create(options);
  if (!runner.ok()) {
    say({{"error", runner.status().ToString()}});
    return 1;
  }
  const StoreNodeInfo& n = (*runner)->node();
  say({{"ready", true},
       {"slot_bytes", n.slot_bytes},
       {"slot_count", n.slot_count},
       {"ucx_lanes", n.ucx_lanes}});
  char* line = nullptr;
  size_t cap = 0;
  int rc = 0;
  while (getline(&line, &cap, stdin) > 0) {
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("phase")) {
      say({{"error", absl::StrCat("bad command: ", line)}});
      rc = 1;
      break;
    }
    const PhaseCommand cmd = CommandFromJson(j);
    if (cmd.phase == "quit") break;
    auto r = (*runner)->Run(cmd);
    if (!r.ok()) {
      say({{"error", r.status().ToString()}});
      rc = 1;
      break;
    }
    say(ToJson(*r));
  }
  free(line);
  return rc;
}

}  // namespace kvtier::bench
