// WorkerMetrics: every `kvtier_worker_*` Prometheus family of a prefill or decode worker
// (docs/observability.md, "Worker families"), registered at construction with the worker's
// `role` label, so that each family is exported from the first scrape on.
//
// The worker binary owns one (WorkerParts) and serves its registry on /metrics; the parts that
// update it (KvTier, BlockWriter, the decode Scheduler, the PrefillService) borrow it. A unit
// test makes one of its own. The members point into the registry this object owns.
//
// Thread-safety: every update is an atomic of common/metrics.h (no lock), so any thread may
// update any member, the engine thread included; RenderText takes the registry's mutex.
#ifndef KVTIER_WORKER_WORKER_METRICS_H_
#define KVTIER_WORKER_WORKER_METRICS_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "kvtier/store_client.h"

namespace kvtier::worker {

// Where a block's K/V came from when it was reused (label `path`).
enum class FetchPath { kFirstTier, kMapped, kUcx };
// Why a fetch ended short of the stored prefix (label `reason`).
// kStoreError: a store call failed or a node went down during the fetch (the store client reports
// a node's refusal the same way); kChecksum: a fetched block did not match its checksum;
// kImport: the engine could not take the blocks (staging or import failed).
enum class FallbackReason { kStoreError, kChecksum, kImport };
// Where a prompt token's K/V came from (label `source`).
enum class TokenSource { kComputed, kFirstTier, kStore };
// How a request ended (label `finish_reason`).
enum class FinishReason { kStop, kLength, kCancelled, kError };

class WorkerMetrics {
  // Declared first: the registry is built before the pointers into it.
  const std::string role_;
  MetricsRegistry registry_;

 public:
  // `role`: "prefill" or "decode" (the label of every family).
  explicit WorkerMetrics(absl::string_view role);
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  const std::string& role() const { return role_; }
  const MetricsRegistry& registry() const { return registry_; }
  MetricsRegistry& registry() { return registry_; }  // for more families (membership)

  // One fetch of `blocks` blocks of `bytes` over `path`; `seconds` < 0: not timed (the first
  // tier has no fetch to time).
  void Fetched(FetchPath path, uint64_t blocks, uint64_t bytes, double seconds = -1);
  // One write of a batch to the store: `r` its result, blocks of `block_bytes`. Blocks count by
  // path (mapped: through a same-host pool; ucx); the batch's time counts as mapped when every
  // block it stored went through a mapped pool, else as ucx.
  void Stored(const PutResult& r, uint64_t block_bytes, double seconds);
  void Fallback(FallbackReason reason) { fallbacks_[static_cast<int>(reason)]->Increment(); }
  void PromptTokens(TokenSource source, uint64_t tokens) {
    prompt_tokens_[static_cast<int>(source)]->Increment(static_cast<double>(tokens));
  }
  void Finished(FinishReason reason) { requests_[static_cast<int>(reason)]->Increment(); }
  // Decode: the first token of a request; `hit` when any prompt token came from a cache.
  void FirstToken(bool hit, absl::Duration since_received) {
    (hit ? ttft_hit_ : ttft_miss_)->Observe(absl::ToDoubleSeconds(since_received));
  }

  // The families without a label besides `role`, updated directly (set by the constructor).
  Histogram* inter_token_latency = nullptr;
  Histogram* e2e_request_latency = nullptr;
  Histogram* request_queue_time = nullptr;
  Histogram* request_prefill_time = nullptr;
  Gauge* num_requests_running = nullptr;
  Gauge* num_requests_waiting = nullptr;
  Gauge* kv_cache_usage_perc = nullptr;
  Counter* generation_tokens = nullptr;
  Counter* checksum_failures = nullptr;
  Gauge* write_queue_bytes = nullptr;
  Gauge* store_connected = nullptr;

  // For tests: the counters and histograms behind the labelled families.
  const Counter& fetch_blocks(FetchPath p) const { return *fetch_blocks_[static_cast<int>(p)]; }
  const Counter& fetch_bytes(FetchPath p) const { return *fetch_bytes_[static_cast<int>(p)]; }
  const Counter& fallbacks(FallbackReason r) const { return *fallbacks_[static_cast<int>(r)]; }
  const Counter& prompt_tokens(TokenSource s) const { return *prompt_tokens_[static_cast<int>(s)]; }
  const Counter& requests(FinishReason r) const { return *requests_[static_cast<int>(r)]; }
  const Histogram& ttft(bool hit) const { return hit ? *ttft_hit_ : *ttft_miss_; }
  // Over both paths, or one (kMapped or kUcx).
  double store_blocks() const { return store_blocks_[1]->Value() + store_blocks_[2]->Value(); }
  const Counter& store_blocks(FetchPath p) const { return *store_blocks_[static_cast<int>(p)]; }
  uint64_t store_batches() const {
    return store_seconds_[1]->Snap().count + store_seconds_[2]->Snap().count;
  }
  const Histogram& fetch_seconds(FetchPath p) const {
    return *fetch_seconds_[static_cast<int>(p)];  // not kFirstTier
  }

 private:
  Histogram* ttft_hit_;
  Histogram* ttft_miss_;
  Counter* fetch_blocks_[3];
  Counter* fetch_bytes_[3];
  Histogram* fetch_seconds_[3];  // [kFirstTier] is null: nothing to time
  Counter* store_blocks_[3];     // [kFirstTier] is null: the first tier stores nothing
  Counter* store_bytes_[3];
  Histogram* store_seconds_[3];
  Counter* fallbacks_[3];
  Counter* prompt_tokens_[3];
  Counter* requests_[4];
};

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_WORKER_METRICS_H_
