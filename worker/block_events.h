// BlockEvents: what a decode worker's first tier (BlockCache) holds, reported to routers so that
// placement follows facts (docs/serving.md, "Placement"): the set of held blocks by fingerprint
// (the first 8 bytes of the key) and a bounded log of the changes, so that a router that polls
// gets only what changed since its last report, or the whole set when it is new, the worker
// restarted (a new random epoch), or the log no longer reaches back that far. Blocks are named
// by KeyFingerprint (include/kvtier/block_key.h).
//
// Ownership: owns its set and log; memory is bounded by the cache's pages (the set) and
// kMaxLog changes. Thread-safety: Stored/Removed from the engine thread, Report from gRPC
// threads; one mutex.
#ifndef KVTIER_WORKER_BLOCK_EVENTS_H_
#define KVTIER_WORKER_BLOCK_EVENTS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "kvtier/block_key.h"

namespace kvtier::v1 {
class BlockReport;
}

namespace kvtier::worker {

class BlockEvents {
 public:
  // Changes kept for incremental reports.
  static constexpr size_t kMaxLog = 1 << 16;

  BlockEvents();  // a random epoch

  void Stored(const BlockKey& key);
  void Removed(const BlockKey& key);

  // The report for a router whose last report was (epoch, since): the net changes after
  // `since`, or the whole set (full) when that is not possible.
  void Report(uint64_t epoch, uint64_t since, v1::BlockReport* out) const;

  uint64_t epoch() const { return epoch_; }
  size_t held() const;

 private:
  void Log(uint64_t fp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t epoch_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, int> held_ ABSL_GUARDED_BY(mu_);  // fingerprint -> blocks
  std::deque<uint64_t> log_ ABSL_GUARDED_BY(mu_);  // fingerprints changed, seq first_seq_..seq_
  uint64_t seq_ ABSL_GUARDED_BY(mu_) = 0;          // the last change
};

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_BLOCK_EVENTS_H_
