// The cache store's state machine: block index, slot pool, reservations, leases and leaf-first
// LRU eviction, over a spill tier (cachestore/spiller.h). It knows nothing of gRPC or UCX: it
// is given the pool's base pointer (UCX-registered memory in the server, plain memory in tests)
// and works in slot offsets from it. See docs/store-protocol.md for the protocol it implements.
//
// Ownership: borrows the pool memory and the MetricsRegistry (nullptr: a private one), which
// must outlive the Store; owns the Spiller (the spill tier's database and its thread), which
// works on the index through Spiller::Index.
// Thread-safety: safe for concurrent use without external synchronization. One mutex guards
// the index (and the spiller's state) and covers no I/O: Commit verifies checksums outside it,
// Lookup reads promoted blocks outside it, and the spiller thread writes and deletes outside
// it.
#ifndef KVTIER_CACHESTORE_STORE_H_
#define KVTIER_CACHESTORE_STORE_H_

#include <cstdint>
#include <deque>
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
#include "cachestore/spiller.h"
#include "cachestore/store_options.h"
#include "common/log_limiter.h"
#include "common/metrics.h"
#include "kvtier/block_key.h"

namespace kvtier::cachestore {

// kInProgress: another writer has reserved the key and not committed it yet (it may still
// fail): not stored by this call, and not known to be stored.
enum class ReserveOutcome { kReserved, kPresent, kNoSpace, kInProgress };

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
  uint64_t slots_quarantined = 0;  // counted in slots_used too
  uint64_t spill_bytes = 0, spill_capacity_bytes = 0;
  uint64_t lookups = 0, hit_blocks = 0, miss_blocks = 0, bytes_in = 0, bytes_out = 0;
  uint64_t evictions = 0, spills = 0, promotions = 0, spill_drops = 0, checksum_failures = 0;
  uint64_t expired_reservations = 0, expired_leases = 0;
  uint64_t active_leases = 0, active_reservations = 0, namespaces = 0;
  bool spill_online = false;
  uint64_t spill_writes = 0, spill_errors = 0, spill_quarantines = 0, spill_disk_bytes = 0;
};

class Store : private Spiller::Index {
 public:
  using Clock = std::function<absl::Time()>;
  // How many times the data plane's progress thread has found nothing left to do (a count
  // that grows while it runs; transport/progress_thread.h). A quarantined slot is reused only
  // once it has grown by 2 since the slot was freed. nullptr: no data plane (tests).
  using ProgressCount = std::function<uint64_t()>;

  Store(const StoreOptions& options, uint8_t* pool, MetricsRegistry* metrics,
        Clock clock = &absl::Now, ProgressCount data_plane_progress = nullptr);
  ~Store() override;  // Stops the spiller.
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // With a spill directory: opens the spill tier, rebuilds the index from it (after a
  // restart) and starts the spiller. Call once, before serving. An error only when the tier
  // cannot be opened and spill_required is set; otherwise a failure is logged and retried.
  absl::Status Recover();

  // Longest present prefix of `keys`. With `lease`, spilled hits are promoted to memory and
  // every hit is pinned until Release or the lease timeout. An unknown namespace is a miss.
  // `client` names the caller (its gRPC peer) for max_open_per_client.
  absl::StatusOr<LookupResult> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                      bool lease, absl::string_view client = {});

  // Slots for `keys` (consecutive blocks; `parent` is the block before keys[0]). Keys already
  // committed are kPresent, keys another writer has reserved kInProgress; when no slot can be
  // freed the key and all later ones are kNoSpace.
  absl::StatusOr<ReserveResult> Reserve(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                        const std::optional<BlockKey>& parent, uint64_t block_bytes,
                                        absl::string_view client = {});

  // Verifies each reserved slot against its checksum (one per kReserved key, in order) and
  // makes matching blocks visible; mismatches are dropped and reported.
  absl::StatusOr<CommitResult> Commit(uint64_t reservation_id,
                                      absl::Span<const uint64_t> checksums);
  absl::Status Abort(uint64_t reservation_id);
  absl::Status Release(uint64_t lease_id);

  // Aborts reservations and drops leases past their deadline, and returns quarantined slots
  // whose time is up to the free list. Called periodically.
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
    std::string client;
    bool committing = false;
  };
  struct Lease {
    std::vector<Entry*> entries;
    absl::Time deadline;
    std::string client;
  };
  // A slot freed while a write to it may still land (docs/store-protocol.md, "Late writes").
  struct QuarantinedSlot {
    int64_t slot;
    absl::Time until;   // grace period over
    uint64_t progress;  // data_plane_progress_ when freed
  };
  struct NamespaceSlot {
    NamespaceId ns{};
    uint64_t refs = 0;  // entries, and calls under way, that use the id
  };
  using LruSet = std::set<std::pair<uint64_t, Entry*>>;

  // The id of `ns`, a new one if it has none, with one more reference. Ids are reused once
  // nothing refers to them (UnrefNamespace).
  uint32_t RefNamespace(const NamespaceId& ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnrefNamespace(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts one more lease or reservation of `client`; false when it holds max_open_per_client.
  bool TakeClientHandle(absl::string_view client) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReturnClientHandle(absl::string_view client) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees the slot of `e` (a reservation that will not be committed) into the quarantine.
  void QuarantineSlot(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves quarantined slots whose grace period is over, and which the progress thread has
  // passed since, to the free list.
  void ReleaseQuarantine() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  // Writes `batch` (marked busy meanwhile) to the spill tier with the lock released, then
  // records the outcome. Returns how many were written.
  uint64_t WriteBlocks(const std::vector<Entry*>& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the disk copies of `batch` (marked busy, slots allocated) with the lock released;
  // returns each one's status.
  std::vector<absl::Status> ReadBlocks(const std::vector<Entry*>& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Spiller::Index.
  bool SpillRound(bool disk_has_room) override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t ForgetSpilled() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddRecovered(const std::vector<std::pair<BlockKey, SpillMeta>>& metas) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  const ProgressCount data_plane_progress_;
  const absl::Duration quarantine_time_;  // slot_quarantine, resolved
  LogLimiter block_failures_;             // per-block spill faults (read, checksum, bad meta)

  mutable absl::Mutex mu_;
  absl::node_hash_map<BlockKey, Entry> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<NamespaceId, uint32_t> ns_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<NamespaceSlot> ns_by_id_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> free_ns_ids_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> open_by_client_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> free_slots_ ABSL_GUARDED_BY(mu_);
  std::deque<QuarantinedSlot> quarantine_ ABSL_GUARDED_BY(mu_);  // oldest first
  LruSet evictable_ ABSL_GUARDED_BY(mu_);  // committed, in memory, unpinned, no memory children
  LruSet spill_lru_ ABSL_GUARDED_BY(mu_);  // spilled, unpinned, no children
  absl::flat_hash_map<uint64_t, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t blocks_in_memory_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t blocks_spilled_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t spill_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // payload bytes of blocks with on_disk
  // The spill tier (its state and I/O); shares mu_. Declared after what it borrows.
  std::unique_ptr<Spiller> spiller_;

  // Metrics (owned by the registry).
  Counter *lookups_, *hit_blocks_, *miss_blocks_, *bytes_in_, *bytes_out_, *evictions_, *spills_,
      *promotions_, *spill_drops_, *checksum_failures_, *expired_reservations_, *expired_leases_;
  Gauge *slots_total_g_, *pool_bytes_g_, *slots_used_g_, *pool_bytes_used_g_, *spill_bytes_g_,
      *spill_capacity_g_, *blocks_memory_g_, *blocks_spill_g_, *leases_g_, *reservations_g_,
      *slots_quarantined_g_, *namespaces_g_;
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_STORE_H_
