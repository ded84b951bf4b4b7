// The cache store's state machine: block index, slot pool, reservations, leases, leaf-first LRU
// eviction and the RocksDB spill tier. It knows nothing of gRPC or UCX: it is given the pool's
// base pointer (UCX-registered memory in the server, plain memory in tests) and works in slot
// offsets from it. See docs/store-protocol.md for the protocol it implements and for the spill
// tier's states (online, offline and retrying).
//
// Ownership: borrows the pool memory and the MetricsRegistry (nullptr: a private one), which
// must outlive the Store; owns the spill tier (a SpillStore on options.spill_dir) and its
// background spiller thread.
// Thread-safety: safe for concurrent use without external synchronization. One mutex guards
// the index and covers no I/O: Commit verifies checksums outside it, Lookup reads promoted
// blocks outside it, and the spiller thread writes and deletes outside it.
#ifndef KVTIER_CACHESTORE_STORE_H_
#define KVTIER_CACHESTORE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachestore/spill_store.h"
#include "common/log_limiter.h"
#include "common/metrics.h"
#include "kvtier/block_key.h"

namespace kvtier::cachestore {

struct StoreOptions {
  // Bytes per slot: the largest block the store accepts. Default: 2 MiB.
  uint64_t slot_bytes = 2ull << 20;
  // Slots in the pool. Default: 512 (1 GiB at 2 MiB slots).
  uint64_t slot_count = 512;
  // A lease not released within this time is dropped. Default: 30 s.
  absl::Duration lease_timeout = absl::Seconds(30);
  // A reservation not committed within this time is aborted. Default: 30 s.
  absl::Duration reservation_timeout = absl::Seconds(30);
  // Most keys one Lookup or Reserve may name. Default: 4096.
  uint32_t max_batch_keys = 4096;
  // Spill directory (RocksDB in spill_dir/db); empty turns spill off. Default: empty.
  std::string spill_dir;
  // Bytes the whole spill directory may take (payloads and RocksDB's WAL, memtable flushes,
  // blob files; quarantined databases aside). Default: 0.
  uint64_t spill_capacity_bytes = 0;
  // Hits a block needs before eviction writes it to the spill tier (0: every block; a block
  // whose descendants are spilled is always spilled, so chains stay whole). Default: 0.
  uint32_t spill_min_hits = 0;
  // Recover fails when the spill tier cannot be opened; otherwise the store starts from memory
  // only and keeps retrying. Default: false.
  bool spill_required = false;
  // Least recently used evictable blocks the spiller keeps written to disk ahead of eviction
  // (the spill queue), so that eviction moves a block to disk without I/O. Default: 64.
  uint32_t spill_queue_blocks = 64;
  // Longest an eviction waits (without the lock) for the spiller to write a block it would
  // otherwise drop; 0: drop it, control calls never wait for the disk. Default: 0.
  absl::Duration spill_wait = absl::ZeroDuration();
  // Wait before reopening an offline spill tier; doubles after each failed try, up to 64x.
  // Default: 1 s.
  absl::Duration spill_retry = absl::Seconds(1);
  // Damaged databases kept under spill_dir/quarantine (0: deleted instead). Default: 2.
  uint32_t spill_quarantine_max = 2;
  // Threads that verify a large commit's checksums (the committing writer waits on them);
  // 0: half the cores, at least 2 and at most 8. Default: 0.
  int verify_threads = 0;
};

enum class ReserveOutcome { kReserved, kPresent, kNoSpace };

struct BlockLocation {
  uint64_t offset = 0;  // from the pool base
  uint64_t size = 0;
  uint64_t checksum = 0;
};

struct LookupResult {
  uint32_t hit_count = 0;
  std::vector<BlockLocation> blocks;  // one per hit, only when leased
  uint64_t lease_id = 0;              // 0: nothing pinned
  uint32_t promoted = 0;
};

struct ReserveResult {
  uint64_t reservation_id = 0;  // 0: nothing reserved
  std::vector<ReserveOutcome> outcomes;
  std::vector<uint64_t> offsets;
};

struct CommitResult {
  uint32_t committed = 0;
  std::vector<BlockKey> rejected;  // checksum mismatch: dropped
};

struct DropResult {
  uint64_t dropped = 0;
  uint64_t pinned_kept = 0;
};

struct StoreStats {
  uint64_t blocks_in_memory = 0, blocks_spilled = 0, slots_total = 0, slots_used = 0;
  uint64_t spill_bytes = 0, spill_capacity_bytes = 0;
  uint64_t lookups = 0, hit_blocks = 0, miss_blocks = 0, bytes_in = 0, bytes_out = 0;
  uint64_t evictions = 0, spills = 0, promotions = 0, spill_drops = 0, checksum_failures = 0;
  uint64_t expired_reservations = 0, expired_leases = 0;
  uint64_t active_leases = 0, active_reservations = 0, namespaces = 0;
  bool spill_online = false;
  uint64_t spill_writes = 0, spill_errors = 0, spill_quarantines = 0, spill_disk_bytes = 0;
};

class Store {
 public:
  using Clock = std::function<absl::Time()>;

  Store(const StoreOptions& options, uint8_t* pool, MetricsRegistry* metrics,
        Clock clock = &absl::Now);
  ~Store();  // Stops the spiller.
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // With a spill directory: opens the spill tier, rebuilds the index from it (after a
  // restart) and starts the spiller. Call once, before serving. An error only when the tier
  // cannot be opened and spill_required is set; otherwise a failure is logged and retried.
  absl::Status Recover();

  // Longest present prefix of `keys`. With `lease`, spilled hits are promoted to memory and
  // every hit is pinned until Release or the lease timeout. An unknown namespace is a miss.
  absl::StatusOr<LookupResult> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                      bool lease);

  // Slots for `keys` (consecutive blocks; `parent` is the block before keys[0]). Keys already
  // present are kPresent; when no slot can be freed the key and all later ones are kNoSpace.
  absl::StatusOr<ReserveResult> Reserve(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                        const std::optional<BlockKey>& parent,
                                        uint64_t block_bytes);

  // Verifies each reserved slot against its checksum (one per kReserved key, in order) and
  // makes matching blocks visible; mismatches are dropped and reported.
  absl::StatusOr<CommitResult> Commit(uint64_t reservation_id,
                                      absl::Span<const uint64_t> checksums);
  absl::Status Abort(uint64_t reservation_id);
  absl::Status Release(uint64_t lease_id);

  // Aborts reservations and drops leases past their deadline. Called periodically.
  void ReapExpired();

  // Admin: removes every unpinned block of `ns` from memory and the spill tier.
  DropResult DropNamespace(const NamespaceId& ns);

  // Stops the spiller and writes the committed in-memory blocks to the spill tier while
  // capacity lasts, whole prefixes: roots first, then each depth of the chains, hottest first
  // within a depth, and a block only when its parent is on disk (graceful shutdown; no other
  // call may run). Returns how many in-memory blocks are on disk afterwards (written now or
  // by the spiller before).
  uint64_t SpillAll();

  // Blocks until the spiller has nothing to do (tests).
  void WaitForSpiller();

  StoreStats Stats() const;
  const StoreOptions& options() const { return options_; }

 private:
  enum class State { kReserved, kCommitted };
  enum class Tier { kMemory, kSpilled };
  struct Entry {
    BlockKey key{};
    uint64_t id = 0;  // unique per entry, so a re-added parent is not confused with the old one
    uint32_t ns_id = 0;
    State state = State::kReserved;
    Tier tier = Tier::kMemory;
    int64_t slot = -1;
    uint64_t size = 0;
    uint64_t checksum = 0;
    std::optional<BlockKey> parent;
    uint64_t linked_parent_id = 0;  // 0: not counted in a parent's children
    uint32_t leases = 0;
    uint32_t children = 0;      // committed children in any tier
    uint32_t mem_children = 0;  // committed children in memory
    uint32_t hits = 0;
    uint64_t tick = 0;  // last access, from tick_
    bool in_evictable = false;
    bool in_spill_lru = false;
    // A copy is in the spill tier (always so for Tier::kSpilled; a block in memory keeps the
    // copy the spiller wrote or it was promoted from, so evicting it needs no I/O).
    bool on_disk = false;
    // The spiller reads its slot, or a Lookup reads its disk copy into its slot, outside the
    // lock: pinned (neither evicted nor removed) until the I/O is finished.
    bool busy = false;
  };
  struct Reservation {
    std::vector<Entry*> entries;
    absl::Time deadline;
    bool committing = false;
  };
  struct Lease {
    std::vector<Entry*> entries;
    absl::Time deadline;
  };
  using LruSet = std::set<std::pair<uint64_t, Entry*>>;

  uint32_t InternNamespace(const NamespaceId& ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Entry* Find(const BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts `e` into, or takes it out of, the eviction and spill-drop sets per its state.
  void UpdateEligibility(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LinkParent(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entry `e` is counted in as a child; nullptr if none.
  Entry* LinkedParent(const Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnlinkParent(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Parent's mem_children changes when `e` moves between tiers.
  void AdjustParentMemChildren(Entry* e, int delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A free slot, evicting the least recently used evictable leaf if needed; -1 if none. May
  // release the lock (see EvictOne): callers keep no iterators across it.
  int64_t AllocateSlot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // May release the lock while it waits for the spiller (options_.spill_wait).
  bool EvictOne() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The first block of the spill queue that is on disk, if any.
  Entry* CleanVictim() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What EvictOne waits for: a slot, a block it can move to disk, or no reason to wait.
  bool VictimReady() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the I/O of `e` begun in tier epoch `epoch`: not busy, and without its disk copy if
  // the tier failed since.
  void EndIo(Entry* e, uint64_t epoch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether eviction should keep `e` on disk.
  bool EarnedSpill(const Entry* e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes room for `bytes` more on disk by dropping the least recently used spilled leaves.
  bool MakeDiskRoom(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets the disk copy of `e` (queueing its deletion while the tier is online).
  void DropDiskCopy(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes `batch` (marked busy) to the spill tier with the lock released, then records the
  // outcome. Returns how many were written.
  uint64_t WriteBlocks(const std::vector<Entry*>& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the disk copies of `batch` (marked busy, slots allocated) with the lock released;
  // returns each one's status.
  std::vector<absl::Status> ReadBlocks(const std::vector<Entry*>& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes the tier offline after `db` failed: one error line and the metrics, every spilled
  // block forgotten, a reopen scheduled. No-op when `db` is no longer the open one.
  void TierFailed(const SpillStore* db, const absl::Status& s, const char* op)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops a reference to a database taken off db_, closing it without the lock if it is the
  // last one (callers keep no iterators across it).
  void CloseIfLast(std::shared_ptr<SpillStore> db) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Opens the tier (quarantining or wiping the old database as the last failure requires),
  // scans it and adds its blocks to the index. Called without the lock.
  absl::Status OpenTier() ABSL_LOCKS_EXCLUDED(mu_);
  void SpillerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void StopSpiller() ABSL_LOCKS_EXCLUDED(mu_);
  void FreeSlot(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveEntry(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLease(Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AbortReservation(Reservation& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint8_t* SlotPtr(int64_t slot) const { return pool_ + slot * options_.slot_bytes; }

  const StoreOptions options_;
  const int verify_threads_;
  uint8_t* const pool_;
  std::unique_ptr<MetricsRegistry> own_metrics_;
  const Clock clock_;
  LogLimiter block_failures_;  // per-block spill faults (read, checksum, bad meta)

  mutable absl::Mutex mu_;
  absl::node_hash_map<BlockKey, Entry> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<NamespaceId, uint32_t> ns_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<NamespaceId> ns_by_id_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> free_slots_ ABSL_GUARDED_BY(mu_);
  LruSet evictable_ ABSL_GUARDED_BY(mu_);  // committed, in memory, unpinned, no memory children
  LruSet spill_lru_ ABSL_GUARDED_BY(mu_);  // spilled, unpinned, no children
  absl::flat_hash_map<uint64_t, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t blocks_in_memory_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t blocks_spilled_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t spill_bytes_ ABSL_GUARDED_BY(mu_) = 0;          // payload bytes of blocks with on_disk
  uint64_t spill_payload_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // room for them (open tier's)

  // Spill tier. db_ is null while the tier is offline (or spill is off); readers and the
  // spiller hold their own reference while doing I/O, so the database closes when the last
  // of them lets go.
  std::shared_ptr<SpillStore> db_ ABSL_GUARDED_BY(mu_);
  uint64_t tier_epoch_ ABSL_GUARDED_BY(mu_) = 0;        // +1 each time the tier goes offline
  uint64_t disk_bytes_ ABSL_GUARDED_BY(mu_) = 0;        // measured after each spiller round
  uint64_t blocks_in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // the spiller's writes under way
  enum class Reopen { kAsIs, kWipe, kQuarantine };
  Reopen reopen_ ABSL_GUARDED_BY(mu_) = Reopen::kAsIs;
  absl::Time next_open_ ABSL_GUARDED_BY(mu_);  // when the spiller tries to reopen
  absl::Duration retry_ ABSL_GUARDED_BY(mu_);  // current backoff
  std::vector<BlockKey> pending_deletes_ ABSL_GUARDED_BY(mu_);
  bool spiller_wake_ ABSL_GUARDED_BY(mu_) = false;  // work may be waiting
  bool spiller_idle_ ABSL_GUARDED_BY(mu_) = false;  // found nothing to do
  bool spiller_stop_ ABSL_GUARDED_BY(mu_) = false;
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;  // the last write met a RocksDB write stall
  absl::Time stalled_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::thread spiller_;

  // Metrics (owned by the registry).
  Counter *lookups_, *hit_blocks_, *miss_blocks_, *bytes_in_, *bytes_out_, *evictions_, *spills_,
      *promotions_, *spill_drops_, *checksum_failures_, *expired_reservations_, *expired_leases_,
      *spill_writes_, *spill_errors_, *spill_quarantines_;
  Gauge *slots_total_g_, *slots_used_g_, *pool_bytes_used_g_, *spill_bytes_g_, *spill_capacity_g_,
      *blocks_memory_g_, *blocks_spill_g_, *leases_g_, *reservations_g_, *spill_online_g_,
      *spill_disk_bytes_g_;
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_STORE_H_
