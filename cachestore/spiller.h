// The spiller: the store's spill tier at run time. It owns the open SpillStore (RocksDB on
// options.spill_dir) and its background thread, which keeps the coldest blocks written to disk
// ahead of eviction (the spill queue), runs the deletes the index queues, and takes the tier
// offline after a RocksDB failure and reopens it with backoff (quarantining a damaged database
// or wiping one the index forgot). docs/store-protocol.md, "Eviction and spill" and "Spill
// tier: faults, states, options", describes what it does; this class is the "how".
//
// Split of work with the Store (cachestore/store.h): the Store owns the index (entries, LRU
// sets, slots) and implements Spiller::Index; the spiller owns the tier's state (the database,
// its epoch, queued deletes, backoff, write stalls) and all RocksDB I/O. Which blocks to write
// and what a write or a failure means for the index are the Store's decisions, made through
// Index; the spiller never sees an index entry.
//
// Ownership: owned by the Store; borrows the Store's mutex, its Index, the options and the
// MetricsRegistry, which outlive it. It owns the database (shared with readers and writers
// doing I/O, so that it closes when the last of them lets go) and the spiller thread.
// Threads and locking: the spiller shares the Store's one mutex (a tier failure and the index
// forgetting the spilled blocks are one step). Methods marked "lock held" are called with it
// held; Write and Read release it during their I/O (callers keep no iterators across them).
// Start, Stop and WaitIdle are called without it. Index methods are called with it held, from
// the spiller thread or from within Write/Read on the caller's thread.
#ifndef KVTIER_CACHESTORE_SPILLER_H_
#define KVTIER_CACHESTORE_SPILLER_H_

#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachestore/spill_store.h"
#include "cachestore/store_options.h"
#include "common/log_limiter.h"
#include "common/metrics.h"
#include "kvtier/block_key.h"

namespace kvtier::cachestore {

class Spiller {
 public:
  // The index side of the tier (the Store). Called with the mutex held.
  class Index {
   public:
    virtual ~Index() = default;
    // One round of the spiller thread: picks the next blocks of the spill queue (only when
    // `disk_has_room`), writes them (and the queued deletes) with Write and records the
    // outcome. False when there was nothing to do.
    virtual bool SpillRound(bool disk_has_room) = 0;
    // The tier went offline: forget every spilled block and every disk copy (blocks whose I/O
    // is under way are left to it). Returns how many spilled blocks were dropped.
    virtual uint64_t ForgetSpilled() = 0;
    // A tier was opened: validate and add the blocks found in it (QueueDelete what is bad).
    virtual void AddRecovered(const std::vector<std::pair<BlockKey, SpillMeta>>& metas) = 0;
  };

  struct WriteJob {
    BlockKey key{};
    SpillMeta meta;
    const uint8_t* data = nullptr;  // meta.size bytes, unchanged until Write returns
  };
  struct ReadJob {
    BlockKey key{};
    uint8_t* dst = nullptr;
    uint64_t size = 0;
    uint64_t checksum = 0;
  };

  Spiller(const StoreOptions& options, absl::Mutex* mu, Index* index, MetricsRegistry* metrics);
  ~Spiller();  // Stops the thread.
  Spiller(const Spiller&) = delete;
  Spiller& operator=(const Spiller&) = delete;

  // With a spill directory: opens the tier (adding its blocks to the index) and starts the
  // thread. An error only when the tier cannot be opened and spill_required is set; otherwise
  // the failure is logged and retried in the background. Lock not held.
  absl::Status Start();
  // Stops and joins the thread (the database stays open). Idempotent. Lock not held.
  void Stop();
  // Blocks until the thread has nothing to do (tests). Lock not held.
  void WaitIdle();

  // Lock held from here on.
  bool online() const { return db_ != nullptr; }
  // +1 each time the tier goes offline: I/O begun in an older epoch does not count.
  uint64_t epoch() const { return epoch_; }
  // Payload bytes the open tier may hold.
  uint64_t payload_bytes() const { return payload_bytes_; }
  // Blocks being written now (they may become eviction candidates on disk soon).
  uint64_t blocks_in_flight() const { return blocks_in_flight_; }
  bool has_pending_deletes() const { return !pending_deletes_.empty(); }
  uint64_t disk_bytes() const { return disk_bytes_; }
  uint64_t writes() const { return static_cast<uint64_t>(writes_->Value()); }
  uint64_t errors() const { return static_cast<uint64_t>(errors_->Value()); }
  uint64_t quarantines() const { return static_cast<uint64_t>(quarantines_->Value()); }
  // Work may be waiting: the thread looks now rather than at its next poll.
  void Wake() { wake_ = true; }
  // Deletes the disk copy of `key` (in order with the writes) while the tier is online.
  void QueueDelete(const BlockKey& key);
  // Whether the file system has room for `bytes` more beside RocksDB's headroom (others may
  // be filling it); logs, rate-limited, when it has not.
  bool FileSystemHasRoom(uint64_t bytes);
  // Runs the queued deletes, then writes `jobs`, with the lock released. Returns how many of
  // `jobs` (a prefix) are on disk: 0 when the tier failed meanwhile. A write stall keeps what
  // is left for later; any other failure takes the tier offline.
  size_t Write(const std::vector<WriteJob>& jobs);
  // Reads each job's block into its dst with the lock released; returns each one's status
  // (DataLoss: the block is damaged, NotFound: gone; others: the tier failed and is offline).
  std::vector<absl::Status> Read(const std::vector<ReadJob>& jobs);

 private:
  enum class Reopen { kAsIs, kWipe, kQuarantine };

  // Takes the tier offline after `db` failed: one error line and the metrics, the index
  // forgets every spilled block, a reopen is scheduled. No-op when `db` is no longer the open
  // one.
  void TierFailed(const SpillStore* db, const absl::Status& s, const char* op);
  // Drops a reference to a database taken off db_, closing it without the lock if it is the
  // last one.
  void CloseIfLast(std::shared_ptr<SpillStore> db);
  // Opens the tier (quarantining or wiping the old database as the last failure requires),
  // scans it and adds its blocks to the index. Lock not held.
  absl::Status OpenTier();
  void Loop();

  const StoreOptions& options_;
  absl::Mutex* const mu_;
  Index* const index_;
  LogLimiter pauses_;  // spilling paused for lack of room

  std::shared_ptr<SpillStore> db_ ABSL_GUARDED_BY(mu_);  // null while offline or spill is off
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t payload_bytes_ ABSL_GUARDED_BY(mu_) = 0;     // room for payloads (open tier's)
  uint64_t disk_bytes_ ABSL_GUARDED_BY(mu_) = 0;        // measured after each write round
  uint64_t blocks_in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // writes under way
  Reopen reopen_ ABSL_GUARDED_BY(mu_) = Reopen::kAsIs;
  absl::Time next_open_ ABSL_GUARDED_BY(mu_);  // when the thread tries to reopen
  absl::Duration retry_ ABSL_GUARDED_BY(mu_);  // current backoff
  std::vector<BlockKey> pending_deletes_ ABSL_GUARDED_BY(mu_);
  bool wake_ ABSL_GUARDED_BY(mu_) = false;  // work may be waiting
  bool idle_ ABSL_GUARDED_BY(mu_) = false;  // found nothing to do
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;  // the last write met a RocksDB write stall
  absl::Time stalled_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::thread thread_;

  // Metrics (owned by the registry).
  Counter *writes_, *errors_, *quarantines_;
  Gauge *online_g_, *disk_bytes_g_;
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_SPILLER_H_
