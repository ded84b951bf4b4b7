#include "router/worker_pool.h"

#include <algorithm>
#include <utility>

#include "common/log_limiter.h"
#include "common/logging.h"

namespace kvtier::router {
namespace {

constexpr absl::Duration kRefreshInterval = absl::Seconds(1);

bool Contains(absl::Span<const int> v, int x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

WorkerPool::WorkerPool(const RouterOptions& options,
                       std::vector<std::unique_ptr<WorkerClient>> decode,
                       std::vector<std::unique_ptr<WorkerClient>> prefill, MetricsRegistry* metrics,
                       ClientFactory make_client)
    : keys_per_worker_(static_cast<size_t>(options.affinity_keys_per_worker)),
      health_timeout_(absl::Milliseconds(options.health_timeout_ms)),
      load_weight_(options.placement_load_weight),
      make_client_(std::move(make_client)),
      metrics_(metrics) {
  absl::MutexLock lock(&mu_);
  for (std::unique_ptr<WorkerClient>& c : decode) AddSlot(WorkerRole::kDecode, std::move(c), false);
  for (std::unique_ptr<WorkerClient>& c : prefill) {
    AddSlot(WorkerRole::kPrefill, std::move(c), false);
  }
}

void WorkerPool::ApplyBlocks(const v1::BlockReport& report, absl::Time asked, State* s) {
  if (report.full()) {
    s->held.clear();
    s->held.insert(report.stored().begin(), report.stored().end());
  } else if (report.epoch() == s->blocks_epoch) {
    for (uint64_t fp : report.removed()) s->held.erase(fp);
    s->held.insert(report.stored().begin(), report.stored().end());
  } else {
    return;  // changes against a base this router does not have: the next report is full
  }
  s->blocks_epoch = report.epoch();
  s->blocks_seq = report.seq();
  // The worker's own account now covers every request that had finished when it was asked.
  if (s->keys.has_value() && s->remembered_at < asked) s->keys.emplace(keys_per_worker_);
}

void WorkerPool::AddSlot(WorkerRole role, std::shared_ptr<WorkerClient> client,
                         bool from_membership) {
  State s;
  if (role == WorkerRole::kDecode) s.keys.emplace(keys_per_worker_);
  const MetricLabels labels = {{"worker", client->address()}, {"role", RoleName(role)}};
  s.in_flight_gauge =
      metrics_->AddGauge("kvtier_router_worker_in_flight", "Requests in flight per worker", labels);
  s.up_gauge = metrics_->AddGauge("kvtier_router_worker_up", "Whether the worker answers", labels);
  s.client = std::move(client);
  s.from_membership = from_membership;
  states(role).push_back(std::move(s));
}

void WorkerPool::SetWorkers(WorkerRole role, const std::vector<std::string>& addresses) {
  std::vector<std::string> added;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    for (State& s : states(role)) {
      if (!s.from_membership) continue;
      const bool listed =
          std::find(addresses.begin(), addresses.end(), s.client->address()) != addresses.end();
      if (s.member && !listed) {
        spdlog::info("{} worker {} left", RoleName(role), s.client->address());
        s.alive = false;  // it may come back with another model or namespace
        s.up_gauge->Set(0);
      }
      s.member = listed;
    }
    for (const std::string& a : addresses) {
      const std::vector<State>& ss = states(role);
      if (std::any_of(ss.begin(), ss.end(),
                      [&](const State& s) { return s.client->address() == a; })) {
        continue;
      }
      if (make_client_ == nullptr || ss.size() >= kMaxWorkersPerRole) {
        KVTIER_LOG_LIMITED(warn, "{} worker {} ignored: {}", RoleName(role), a,
                           make_client_ == nullptr ? "no client factory" : "too many workers");
        continue;
      }
      AddSlot(role, make_client_(role, a), true);
      added.push_back(a);
    }
  }
  for (const std::string& a : added) spdlog::info("{} worker {} joined", RoleName(role), a);
}

WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::Start() {
  refresh_thread_ = std::thread([this] { RefreshLoop(); });
}

void WorkerPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  std::vector<std::shared_ptr<WorkerClient>> clients;
  {
    absl::MutexLock lock(&mu_);
    for (WorkerRole role : {WorkerRole::kDecode, WorkerRole::kPrefill}) {
      for (const State& s : states(role)) clients.push_back(s.client);
    }
  }
  for (const std::shared_ptr<WorkerClient>& c : clients) c->CancelAll();
  if (refresh_thread_.joinable()) refresh_thread_.join();
}

bool WorkerPool::stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

void WorkerPool::RefreshLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), kRefreshInterval)) return;
    }
    Refresh();
  }
}

void WorkerPool::Refresh() {
  for (WorkerRole role : {WorkerRole::kDecode, WorkerRole::kPrefill}) {
    struct Ask {
      size_t index;
      std::shared_ptr<WorkerClient> client;
      v1::WorkerInfoRequest request;
    };
    std::vector<Ask> members;
    {
      absl::MutexLock lock(&mu_);
      const std::vector<State>& ss = states(role);
      for (size_t i = 0; i < ss.size(); ++i) {
        if (!ss[i].member) continue;
        Ask a{i, ss[i].client, {}};
        if (role == WorkerRole::kDecode) {
          a.request.set_want_blocks(true);
          if (ss[i].alive) {  // else: a full report
            a.request.set_blocks_epoch(ss[i].blocks_epoch);
            a.request.set_blocks_since(ss[i].blocks_seq);
          }
        }
        members.push_back(std::move(a));
      }
    }
    for (const auto& [i, client, request] : members) {
      const absl::Time asked = absl::Now();
      absl::StatusOr<v1::WorkerInfo> info = client->GetWorkerInfo(request, health_timeout_);
      absl::MutexLock lock(&mu_);
      if (stopping_) return;  // the calls are being cancelled: not an answer of the worker
      State& s = states(role)[i];
      if (!s.member) continue;  // left meanwhile
      if (info.ok() && info->has_blocks()) ApplyBlocks(info->blocks(), asked, &s);
      const bool ok = info.ok();
      if (ok) {
        absl::StatusOr<NamespaceId> ns = KeyFromBytes(info->namespace_id(), "namespace_id");
        std::optional<NamespaceId> new_ns;
        if (ns.ok()) new_ns = *ns;
        // A worker that was down or changed namespace lost (or cannot use) what it held.
        if (s.keys.has_value() &&
            (!s.alive || new_ns != s.ns || info->block_tokens() != s.info.block_tokens())) {
          s.keys.emplace(keys_per_worker_);
          if (!info->has_blocks()) s.held.clear();
        }
        s.ns = new_ns;
        if (info->draining() && !s.draining) {
          spdlog::info("{} worker {} is draining", RoleName(role), client->address());
        }
        s.draining = info->draining();
        s.info = *std::move(info);
      }
      if (ok && !s.alive) {
        spdlog::info("{} worker {} is up", RoleName(role), client->address());
      } else if (!ok && s.alive) {
        KVTIER_LOG_LIMITED(warn, "{} worker {} does not answer ({})", RoleName(role),
                           client->address(), info.status().ToString());
      }
      s.alive = ok;
      s.up_gauge->Set(ok ? 1 : 0);
    }
  }
}

std::optional<WorkerPool::Lease> WorkerPool::AcquireDecode(PromptKeys& prompt,
                                                           absl::Span<const int> exclude) {
  // The keys are computed outside the lock, once per (namespace, block size) of the request.
  struct Candidate {
    int index;
    NamespaceId ns;
    uint32_t block_tokens;
    const std::vector<BlockKey>* keys = nullptr;
  };
  std::vector<Candidate> keyed;
  {
    absl::MutexLock lock(&mu_);
    const std::vector<State>& ss = states(WorkerRole::kDecode);
    for (size_t i = 0; i < ss.size(); ++i) {
      if (Placeable(ss[i]) && !Contains(exclude, static_cast<int>(i)) && ss[i].ns.has_value() &&
          ss[i].info.block_tokens() > 0) {
        keyed.push_back({static_cast<int>(i), *ss[i].ns, ss[i].info.block_tokens()});
      }
    }
  }
  for (Candidate& c : keyed) c.keys = &prompt.Get(c.ns, c.block_tokens);
  // The fingerprints of each candidate's keys, outside the lock too.
  std::vector<std::vector<uint64_t>> fps(keyed.size());
  for (size_t k = 0; k < keyed.size(); ++k) {
    for (const BlockKey& key : *keyed[k].keys) fps[k].push_back(KeyFingerprint(key));
  }

  absl::MutexLock lock(&mu_);
  std::vector<State>& ss = states(WorkerRole::kDecode);
  std::vector<PlacementCandidate> cands;
  std::vector<int> index;
  std::vector<uint32_t> block_tokens;
  for (size_t i = 0; i < ss.size(); ++i) {
    if (!Placeable(ss[i]) || Contains(exclude, static_cast<int>(i))) continue;
    PlacementCandidate c;
    c.in_flight = ss[i].in_flight;
    uint32_t bt = 0;
    for (size_t k = 0; k < keyed.size(); ++k) {
      if (keyed[k].index != static_cast<int>(i)) continue;
      // The leading blocks the worker holds, by its report or by a request finished since.
      const std::vector<BlockKey>& keys = *keyed[k].keys;
      size_t n = 0;
      while (n < keys.size() && (ss[i].held.contains(fps[k][n]) || ss[i].keys->Contains(keys[n]))) {
        ++n;
      }
      c.matched_blocks = n;
      bt = keyed[k].block_tokens;
    }
    cands.push_back(c);
    index.push_back(static_cast<int>(i));
    block_tokens.push_back(bt);
  }
  const int pick = PickWorker(cands, load_weight_);
  if (pick < 0) return std::nullopt;
  const int w = index[pick];
  ss[w].in_flight_gauge->Set(++ss[w].in_flight);
  return Lease(this, WorkerRole::kDecode, w, ss[w].client,
               cands[pick].matched_blocks * block_tokens[pick]);
}

std::optional<WorkerPool::Lease> WorkerPool::AcquirePrefill() {
  absl::MutexLock lock(&mu_);
  std::vector<State>& ss = states(WorkerRole::kPrefill);
  int w = -1;
  for (size_t i = 0; i < ss.size(); ++i) {
    if (!Placeable(ss[i])) continue;
    if (w < 0 || ss[i].in_flight < ss[w].in_flight) w = static_cast<int>(i);
  }
  if (w < 0) return std::nullopt;
  ss[w].in_flight_gauge->Set(++ss[w].in_flight);
  return Lease(this, WorkerRole::kPrefill, w, ss[w].client, 0);
}

void WorkerPool::Release(WorkerRole role, int index) {
  absl::MutexLock lock(&mu_);
  State& s = states(role)[index];
  s.in_flight_gauge->Set(--s.in_flight);
}

void WorkerPool::Remember(int index, PromptKeys& prompt, absl::Span<const TokenId> generated) {
  std::optional<NamespaceId> ns;
  uint32_t bt = 0;
  {
    absl::MutexLock lock(&mu_);
    const State& s = states(WorkerRole::kDecode)[index];
    ns = s.ns;
    bt = s.info.block_tokens();
  }
  if (!ns.has_value() || bt == 0) return;
  const std::vector<BlockKey> keys = prompt.Extend(*ns, bt, generated);
  absl::MutexLock lock(&mu_);
  State& s = states(WorkerRole::kDecode)[index];
  if (s.ns != ns || s.info.block_tokens() != bt) return;
  for (const BlockKey& k : keys) s.keys->Touch(k);
  s.remembered_at = absl::Now();
}

void WorkerPool::MarkDown(int index) {
  absl::MutexLock lock(&mu_);
  State& s = states(WorkerRole::kDecode)[index];
  s.alive = false;
  s.up_gauge->Set(0);
}

int WorkerPool::DecodeWorkersUp() const {
  absl::MutexLock lock(&mu_);
  int up = 0;
  for (const State& s : states(WorkerRole::kDecode)) up += Placeable(s) ? 1 : 0;
  return up;
}

int64_t WorkerPool::MaxContext() const {
  absl::MutexLock lock(&mu_);
  int64_t ctx = 0;
  for (const State& s : states(WorkerRole::kDecode)) {
    if (!Placeable(s) || s.info.max_context() == 0) continue;
    ctx = ctx == 0 ? s.info.max_context() : std::min<int64_t>(ctx, s.info.max_context());
  }
  return ctx;
}

WorkerPool::Lease::Lease(Lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      role_(other.role_),
      index_(other.index_),
      client_(std::move(other.client_)),
      matched_tokens_(other.matched_tokens_) {}

WorkerPool::Lease::~Lease() {
  if (pool_ != nullptr) pool_->Release(role_, index_);
}

}  // namespace kvtier::router
