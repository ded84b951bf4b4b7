// The router's workers (docs/serving.md, "Placement"): each worker's state from its last
// GetWorkerInfo (refreshed once a second on a thread of the pool's own), the requests the router
// has in flight on it, and for decode workers the blocks the worker reports holding in its pages
// (a full set, then the changes: BlockReport) plus the keys of requests the router finished
// there since its last report (KeyLru); placement of a request on a decode worker (PickWorker
// over the held prefixes and the load) and of a prefill call on the least-loaded prefill worker. A
// worker that was down or reports a new namespace or block size starts with no remembered keys. The
// workers are the static ones given at construction plus those SetWorkers names (membership,
// docs/membership.md): a worker that leaves takes no new placements, its requests in flight finish
// on their leases, and a worker that comes back at the same address takes its old slot. A draining
// worker (WorkerInfo.draining) takes no new placements either.
//
// Owns the WorkerClients and the per-worker gauges kvtier_router_worker_in_flight and
// kvtier_router_worker_up (in the caller's MetricsRegistry, which must outlive the pool).
// Thread-safe: every method may be called from any thread (Start and Stop from the owner's).
#ifndef KVTIER_ROUTER_WORKER_POOL_H_
#define KVTIER_ROUTER_WORKER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/metrics.h"
#include "kvtier/block_key.h"
#include "router/placement.h"
#include "router/router_options.h"
#include "router/worker_client.h"

namespace kvtier::router {

class WorkerPool {
 public:
  // Makes the client of a worker that membership names (SetWorkers).
  using ClientFactory =
      std::function<std::unique_ptr<WorkerClient>(WorkerRole role, const std::string& address)>;
  // Most workers of one role (static plus every address SetWorkers ever named).
  static constexpr size_t kMaxWorkersPerRole = 1024;

  // Uses options.affinity_keys_per_worker and options.health_timeout_ms. Every worker starts
  // down until a Refresh hears from it. `make_client` may be null when SetWorkers is not used.
  WorkerPool(const RouterOptions& options, std::vector<std::unique_ptr<WorkerClient>> decode,
             std::vector<std::unique_ptr<WorkerClient>> prefill, MetricsRegistry* metrics,
             ClientFactory make_client = nullptr);
  ~WorkerPool();  // Stop()s.
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Asks every worker for its info once (blocking) and updates its state.
  void Refresh();
  // The role's workers from membership are now `addresses` (the static ones stay): new ones are
  // added (down until a Refresh hears from them), missing ones leave. Past kMaxWorkersPerRole
  // slots, new addresses are ignored with a warning.
  void SetWorkers(WorkerRole role, const std::vector<std::string>& addresses);
  // Starts the thread that Refreshes once a second.
  void Start();
  // Cancels every worker call in flight (later ones fail with Cancelled) and ends the refresh
  // thread; the states stay as they are. Idempotent.
  void Stop();
  bool stopping() const;

  // A worker counted in flight from its Acquire until the lease is destroyed. Move-only.
  class Lease {
   public:
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&&) = delete;
    ~Lease();

    int index() const { return index_; }
    WorkerClient& client() const { return *client_; }
    const std::string& address() const { return client().address(); }
    // Decode leases: the leading prompt tokens the worker likely holds (remembered keys).
    size_t matched_tokens() const { return matched_tokens_; }

   private:
    friend class WorkerPool;
    Lease(WorkerPool* pool, WorkerRole role, int index, std::shared_ptr<WorkerClient> client,
          size_t matched_tokens)
        : pool_(pool),
          role_(role),
          index_(index),
          client_(std::move(client)),
          matched_tokens_(matched_tokens) {}

    WorkerPool* pool_;  // null once moved from
    WorkerRole role_;
    int index_;
    std::shared_ptr<WorkerClient> client_;  // lives on while leased, even if the worker left
    size_t matched_tokens_;
  };

  // The live decode worker, not in `exclude`, holding the longest remembered prefix of
  // `prompt`'s keys, then with the fewest requests in flight, then the first; nullopt when none
  // is live.
  std::optional<Lease> AcquireDecode(PromptKeys& prompt, absl::Span<const int> exclude);
  // The live prefill worker with the fewest requests in flight; nullopt when none is live.
  std::optional<Lease> AcquirePrefill();

  // Remembers the keys of the prompt followed by `generated` as held by decode worker `index`
  // (unless its namespace changed meanwhile).
  void Remember(int index, PromptKeys& prompt, absl::Span<const TokenId> generated);
  // Marks decode worker `index` down until a Refresh hears from it again.
  void MarkDown(int index);

  // Decode workers that answered their last GetWorkerInfo.
  int DecodeWorkersUp() const;
  // The smallest max_context of the live decode workers; 0 when none is live.
  int64_t MaxContext() const;

 private:
  struct State {
    std::shared_ptr<WorkerClient> client;
    bool member = true;  // static, or named by the last SetWorkers
    bool from_membership = false;
    bool alive = false;     // answered its last GetWorkerInfo
    bool draining = false;  // said so in its last GetWorkerInfo
    v1::WorkerInfo info;
    std::optional<NamespaceId> ns;  // from info.namespace_id
    int in_flight = 0;
    // Decode workers: the blocks the worker reported holding in its own pages (by
    // KeyFingerprint), as of report (blocks_epoch, blocks_seq); and the keys of requests the
    // router finished there since the last report that could include them (remembered_at),
    // which bridge the time until the worker reports them.
    absl::flat_hash_set<uint64_t> held;
    uint64_t blocks_epoch = 0;
    uint64_t blocks_seq = 0;
    std::optional<KeyLru> keys;
    absl::Time remembered_at = absl::InfinitePast();
    Gauge* in_flight_gauge = nullptr;
    Gauge* up_gauge = nullptr;
  };

  // A slot per worker ever known, never removed (indices stay valid), under mu_.
  std::vector<State>& states(WorkerRole role) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return states_[static_cast<int>(role)];
  }
  const std::vector<State>& states(WorkerRole role) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return states_[static_cast<int>(role)];
  }
  void Release(WorkerRole role, int index);
  void RefreshLoop();
  // Appends a slot for `client`.
  void AddSlot(WorkerRole role, std::shared_ptr<WorkerClient> client, bool from_membership)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies a decode worker's block report (asked for at `asked`) to its state.
  void ApplyBlocks(const v1::BlockReport& report, absl::Time asked, State* s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a new placement may go to `s`.
  static bool Placeable(const State& s) { return s.member && s.alive && !s.draining; }

  const size_t keys_per_worker_;
  const absl::Duration health_timeout_;
  const double load_weight_;
  const ClientFactory make_client_;
  MetricsRegistry* const metrics_;

  mutable absl::Mutex mu_;
  std::vector<State> states_[2] ABSL_GUARDED_BY(mu_);  // by WorkerRole
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::thread refresh_thread_;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_WORKER_POOL_H_
