// KvTier: the bridge between an Engine's KV pages and the store tier (StoreClient).
//
// A page of the engine is exactly a block payload (DESIGN §2), so fetching is StoreClient::Get
// into host staging buffers then Engine::ImportPages, and storing is Engine::ExportPages then
// StoreClient::Put. The cache is an optimisation: every failure of the tier (no store, store
// down, bad slot size, checksum mismatch, import failure) is reported as a miss or as skipped
// blocks and logged, never as an error; the caller then computes the K/V itself.
//
// Ownership: borrows the engine and the store client (null: no store tier), which must outlive
// it. Owns its staging buffers, which are reused across calls.
// Thread-safety: thread-compatible; called only from the thread that drives the engine.
#ifndef KVTIER_WORKER_KV_TIER_H_
#define KVTIER_WORKER_KV_TIER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "common/block_key.h"
#include "engine/engine.h"
#include "kvtier/store_client.h"

namespace kvtier::worker {

class KvTier {
 public:
  // Most blocks moved per store call (bounds the staging memory: 64 blocks of 2 MiB for an 8B
  // model). Longer prefixes take several calls.
  static constexpr size_t kMaxBlocksPerCall = 64;

  KvTier(engine::Engine* engine, StoreClient* store);
  KvTier(const KvTier&) = delete;
  KvTier& operator=(const KvTier&) = delete;

  // Whether a store is configured (false: FetchPrefix finds nothing, StoreBlocks skips all).
  bool has_store() const { return store_ != nullptr; }
  StoreClient* store() const { return store_; }
  const NamespaceId& namespace_id() const { return namespace_; }
  uint32_t block_tokens() const { return block_tokens_; }

  // Keys of the full blocks of `tokens` under the engine's namespace.
  std::vector<BlockKey> Keys(absl::Span<const int32_t> tokens) const;

  // Leading `keys` present in the store (no data moves); 0 without a store or on failure.
  size_t Lookup(absl::Span<const BlockKey> keys);

  // Fetches the longest stored prefix of `keys` and imports block i into pages[i]; returns the
  // number of blocks imported (pages past it are untouched or hold garbage: recompute them).
  // pages.size() must be >= keys.size().
  size_t FetchPrefix(absl::Span<const BlockKey> keys, absl::Span<const int32_t> pages);

  // Exports pages[i] (whose block is completely computed) and stores it under keys[i].
  PutResult StoreBlocks(absl::Span<const BlockKey> keys, absl::Span<const int32_t> pages);

  // Totals since creation, for logs and tests.
  struct Stats {
    uint64_t fetched_blocks = 0;
    uint64_t stored_blocks = 0;
    uint64_t skipped_blocks = 0;
    uint64_t failures = 0;  // store or engine errors absorbed as misses
  };
  const Stats& stats() const { return stats_; }

 private:
  // Grows the staging buffer to `blocks` payloads and refreshes the pointer tables.
  void EnsureStaging(size_t blocks);
  void LogFailure(const char* what, const absl::Status& status);

  engine::Engine* engine_;
  StoreClient* store_;
  NamespaceId namespace_;
  uint32_t block_tokens_;
  size_t block_bytes_;
  std::vector<uint8_t> staging_;
  std::vector<void*> dst_;
  std::vector<const void*> src_;
  Stats stats_;
  bool failure_logged_ = false;
};

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_KV_TIER_H_
