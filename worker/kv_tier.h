// KvTier: the bridge between an Engine's KV pages and the store tier (StoreClient).
//
// A page of the engine is exactly a block payload (docs/engine.md, "KV pages are block
// payloads"), so fetching is StoreClient::Get into host staging buffers then
// Engine::ImportPages, and storing is Engine::ExportPages then StoreClient::Put. The cache is an
// optimisation: every failure of the tier (no store, store down, bad slot size, checksum mismatch,
// import failure) is reported as a miss or as skipped blocks and logged, never as an error; the
// caller then computes the K/V itself.
//
// Host staging comes from Engine::AllocateHostBuffer (pinned on the CUDA backend), so the copy
// engine moves blocks straight between the GPU pages and the buffers the store client fills.
// A same-host store's pool is read in place (docs/serving.md, "Decode scheduler"): the pool is
// registered with the engine once (RegisterStorePools), fetched blocks are leased
// (StoreClient::MapPrefix), imported straight from it and then verified against their
// checksums, with no host copy at all. Registrations are keyed by pool identity (address, size
// and store incarnation) and dropped through the store client's unmap callback before the
// client unmaps a pool, so a restarted store's pool mapped at the same address is registered
// anew and never read through the dead one's page-locked pages (docs/serving.md, "KvTier").
//
// Writes are synchronous (StoreBlocks: the prefill worker returns once its blocks are
// committed) or, after EnableAsyncWrites, handed to a BlockWriter thread (StoreBlocksAsync: the
// decode loop exports and goes on; a ticket tells when the blocks are in the store).
//
// Metrics (docs/observability.md): the tier counts its fetches, stores, checksum failures and
// fallbacks to recompute in a WorkerMetrics, which the scheduler and the prefill service that
// drive the tier reach through metrics().
//
// Ownership: borrows the engine, the store client (null: no store tier) and the metrics (null: a
// private set, for unit tests), which must outlive it. Owns its staging buffers, which are
// reused across calls, and the BlockWriter.
// Thread-safety: thread-compatible; called only from the thread that drives the engine.
#ifndef KVTIER_WORKER_KV_TIER_H_
#define KVTIER_WORKER_KV_TIER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "engine/engine.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "worker/block_writer.h"
#include "worker/worker_metrics.h"

namespace kvtier::worker {

class KvTier {
 public:
  // Most blocks moved per store call (bounds the staging memory: 64 blocks of 2 MiB for an 8B
  // model). Longer prefixes take several calls.
  static constexpr size_t kMaxBlocksPerCall = 64;
  // Blocks of a zero-copy fetch imported per call; each chunk is verified while the next one is
  // imported.
  static constexpr size_t kVerifyChunkBlocks = 16;

  KvTier(engine::Engine* engine, StoreClient* store, WorkerMetrics* metrics = nullptr);
  ~KvTier();  // unregisters the store pools
  KvTier(const KvTier&) = delete;
  KvTier& operator=(const KvTier&) = delete;

  // Whether a store is configured (false: FetchPrefix finds nothing, StoreBlocks skips all).
  bool has_store() const { return store_ != nullptr; }
  StoreClient* store() const { return store_; }
  // The worker's metrics (never null); updates are atomics, any thread.
  WorkerMetrics* metrics() const { return metrics_; }
  const NamespaceId& namespace_id() const { return namespace_; }
  size_t block_bytes() const { return block_bytes_; }
  uint32_t block_tokens() const { return block_tokens_; }

  // The namespace `tenant`'s keys are chained from (TenantNamespace of the engine's; "" : the
  // engine's), the parent of a tenant's first block.
  NamespaceId KeyRoot(absl::string_view tenant) const;
  // Keys of the full blocks of `tokens` of `tenant` (docs/block-key.md, "Tenants").
  std::vector<BlockKey> Keys(absl::Span<const TokenId> tokens, absl::string_view tenant = "") const;

  // Leading `keys` present in the store (no data moves); 0 without a store or on failure.
  size_t Lookup(absl::Span<const BlockKey> keys);

  // Fetches the longest stored prefix of `keys` and imports block i into pages[i]; returns the
  // number of blocks imported (pages past it are untouched or hold garbage: recompute them).
  // pages.size() must be >= keys.size(). Same-host pools are read in place.
  size_t FetchPrefix(absl::Span<const BlockKey> keys, absl::Span<const int32_t> pages);

  // Registers the pools of same-host stores with the engine (connecting to the stores), and
  // unregisters pools that went away. FetchPrefix calls it too; call it at start-up to pay
  // the registration (page-locking the pool) before the first request.
  void RegisterStorePools();

  // Exports pages[i] (whose block is completely computed) and stores it under keys[i], whose
  // parent is parents[i] (StoreClient::Put).
  PutResult StoreBlocks(absl::Span<const BlockKey> keys, absl::Span<const BlockKey> parents,
                        absl::Span<const int32_t> pages);

  // Starts a BlockWriter thread with its own store client `writer_store` (a second client for
  // the same stores), at most `buffer_bytes` of queued blocks; `on_written` runs on that thread
  // after each batch. Requires has_store().
  void EnableAsyncWrites(std::unique_ptr<StoreClient> writer_store, size_t buffer_bytes,
                         std::function<void()> on_written);
  bool async_writes() const { return writer_ != nullptr; }
  // Replaces the store nodes of the tier's client and of the writer's (StoreClient::SetStores;
  // membership, docs/membership.md). Any thread, at any time; a writer enabled later starts with
  // the last set given here.
  void SetStores(const std::vector<std::string>& addresses);
  // Exports pages[i] now and queues them for the writer thread; returns the ticket that
  // written() reaches once they are stored (0: nothing was queued). Without async writes (or a
  // store) this is StoreBlocks and returns 0. Waits only while the writer's buffers are full.
  uint64_t StoreBlocksAsync(absl::Span<const BlockKey> keys, absl::Span<const BlockKey> parents,
                            absl::Span<const int32_t> pages);
  // Highest ticket whose blocks are stored (or skipped); any thread.
  uint64_t written() const { return writer_ == nullptr ? final_ticket_ : writer_->written(); }
  // Waits until every queued block is written, then stops the writer thread: later writes are
  // synchronous. written() keeps its last value.
  void StopAsyncWrites();

  // Totals since creation, for logs and tests.
  struct Stats {
    uint64_t fetched_blocks = 0;
    uint64_t stored_blocks = 0;
    uint64_t skipped_blocks = 0;
    uint64_t failures = 0;  // store or engine errors absorbed as misses
  };
  // Blocks of asynchronous writes count once written.
  Stats stats() const;
  // The store pools registered with the engine now (for logs and tests).
  const std::vector<MappedPool>& registered_pools() const { return registered_; }

 private:
  // FetchPrefix from mapped pools: returns the blocks imported; *stored: leading keys stored;
  // *failure: why the prefix ended short of what is stored, if it did.
  size_t FetchMapped(absl::Span<const BlockKey> keys, absl::Span<const int32_t> pages,
                     size_t* stored, std::optional<FallbackReason>* failure);
  // Sets the store_connected gauge from the store client's last call.
  void UpdateConnected();
  // Unregisters `pool` from the engine if it is registered (the store client's unmap callback).
  void Unregister(const MappedPool& pool);
  // Grows the staging buffer to `blocks` payloads and refreshes the pointer tables.
  absl::Status EnsureStaging(size_t blocks);
  void LogFailure(const char* what, const absl::Status& status);

  engine::Engine* engine_;
  StoreClient* store_;
  std::unique_ptr<WorkerMetrics> own_metrics_;  // when none was given
  WorkerMetrics* metrics_;
  NamespaceId namespace_;
  uint32_t block_tokens_;
  size_t block_bytes_;
  engine::HostBuffer staging_;
  std::vector<void*> dst_;
  std::vector<const void*> src_;
  Stats stats_;
  std::vector<MappedPool> registered_;  // pools registered with the engine
  uint64_t final_ticket_ = 0;           // written() once the writer is stopped
  // The writer's client (owned by writer_) and the last SetStores set, for SetStores from
  // another thread.
  absl::Mutex stores_mu_;
  StoreClient* writer_store_ ABSL_GUARDED_BY(stores_mu_) = nullptr;
  std::optional<std::vector<std::string>> stores_ ABSL_GUARDED_BY(stores_mu_);
  std::unique_ptr<BlockWriter> writer_;  // declared last: its thread stops first
};

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_KV_TIER_H_
