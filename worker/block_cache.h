// BlockCache: a worker's own first tier of KV blocks (docs/serving.md), kept in the engine's pages.
//
// It maps block keys to pages holding completely computed full blocks. Full blocks never
// change, so one cached page is shared read-only by every sequence whose prefix contains the
// block: each user holds a reference (Acquire / Insert) and gives it back with Release. Pages
// with no reference stay cached in an LRU list and are evicted (returned to the allocator)
// only when AllocatePages finds the allocator short.
//
// The cache is also the page manager of its users: every page a sequence holds, cached or
// private, goes back through Release, which unreferences cached pages and frees the others.
//
// Eviction order: least recently released first. Callers release a sequence's pages last block
// first, so the deepest block of a prefix is evicted before its parents (a block without its
// prefix can never be hit, as Acquire finds prefixes only).
//
// Ownership: borrows the allocator (which must outlive it); owns the cached pages it holds.
// Thread-safety: thread-compatible; used by the one thread that drives the engine.
#ifndef KVTIER_WORKER_BLOCK_CACHE_H_
#define KVTIER_WORKER_BLOCK_CACHE_H_

#include <cstdint>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/page_allocator.h"
#include "kvtier/block_key.h"
#include "worker/block_events.h"

namespace kvtier::worker {

class BlockCache {
 public:
  // `events` (may be null; must outlive the cache) hears of every block that enters or leaves.
  explicit BlockCache(engine::PageAllocator* allocator, BlockEvents* events = nullptr);
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // Pages of the longest prefix of `keys` that is cached, in order; each gets one more
  // reference, which the caller gives back with Release.
  std::vector<int32_t> Acquire(absl::Span<const BlockKey> keys);

  // Hands `page`, a page of the caller (from AllocatePages, not cached) whose block `key` is
  // completely computed, to the cache; the caller keeps one reference to it. Returns false and
  // changes nothing when `key` is already cached (the caller keeps its private page).
  bool Insert(const BlockKey& key, int32_t page);

  // Gives back one reference to each page: a cached page whose last reference goes becomes
  // evictable (most recently used); a page the cache does not hold is freed.
  void Release(absl::Span<const int32_t> pages);

  // `n` pages for the caller (not cached), evicting unreferenced cached pages, least recently
  // used first, when the allocator is short. ResourceExhausted, with nothing taken or evicted,
  // when free plus evictable pages are fewer than n.
  absl::StatusOr<std::vector<int32_t>> AllocatePages(int n);

  // Evicts every unreferenced cached page.
  void EvictAll();

  // Pages AllocatePages could hand out now: free plus evictable.
  int available_pages() const { return allocator_->free_pages() + evictable_pages(); }
  int free_pages() const { return allocator_->free_pages(); }
  int cached_pages() const { return static_cast<int>(by_key_.size()); }
  int evictable_pages() const { return static_cast<int>(lru_.size()); }
  bool IsCached(int32_t page) const { return entries_[page].cached; }
  // References to a cached page (0 for pages not cached).
  int refs(int32_t page) const { return entries_[page].refs; }

  struct Stats {
    uint64_t hit_blocks = 0;  // blocks returned by Acquire
    uint64_t inserts = 0;
    uint64_t evictions = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Entry {
    bool cached = false;
    int refs = 0;
    BlockKey key{};
    std::list<int32_t>::iterator lru;  // valid while cached and refs == 0
  };

  void Ref(int32_t page);
  void Evict(int32_t page);

  engine::PageAllocator* allocator_;
  BlockEvents* const events_;
  absl::flat_hash_map<BlockKey, int32_t> by_key_;
  std::vector<Entry> entries_;  // by page id
  std::list<int32_t> lru_;      // unreferenced cached pages, least recently used first
  Stats stats_;
};

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_BLOCK_CACHE_H_
