// gRPC service kvtier.v1.PrefillWorker (proto/kvtier/v1/worker.proto): computes a prompt's
// missing full blocks into the store tier (docs/serving.md, "Workers").
//
// Per request: the keys of the prompt's full blocks; the longest prefix already in the store
// (Lookup; when every block is there, nothing else happens); that prefix fetched into fresh
// pages; the remaining full blocks computed (chunked prefill) and stored; pages freed. The
// partial last block is left to the decode worker. Without a store configured there is
// nothing to prefill for: requests succeed at once with nothing computed. With a store that
// is down the blocks are computed and reported as not stored (the decode worker recomputes).
//
// Metrics (docs/observability.md): queue (received to holding the engine) and prefill (holding
// the engine to the blocks stored) times, running and waiting requests, KV page usage, prompt
// tokens from the store and computed, and finished requests ("stop" when it succeeded, "error"
// otherwise) go to the tier's WorkerMetrics.
//
// Ownership: borrows the engine and tier, which must outlive it; owns the page allocator.
// Thread-safety: safe for concurrent calls; requests are serialized on the one engine by a
// mutex (one prefill at a time per worker; scale out with more workers). After Stop() (any
// thread), requests that have not started computing get UNAVAILABLE, so that a SIGTERM waits
// for the one prefill that computes, not for every queued request (docs/serving.md).
#ifndef KVTIER_PREFILL_PREFILL_SERVICE_H_
#define KVTIER_PREFILL_PREFILL_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "engine/page_allocator.h"
#include "kvtier/v1/worker.grpc.pb.h"
#include "worker/kv_tier.h"
#include "worker/worker_options.h"

namespace kvtier::prefill {

struct PrefillResult {
  uint32_t prompt_tokens = 0;
  uint32_t cached_tokens = 0;    // leading tokens whose blocks were already stored
  uint32_t computed_tokens = 0;  // tokens computed now (whole blocks)
  uint32_t stored_blocks = 0;    // blocks written to the store now
  double compute_ms = 0;
};

class PrefillService final : public v1::PrefillWorker::Service {
 public:
  PrefillService(engine::Engine* engine, worker::KvTier* tier, worker::WorkerOptions options);

  grpc::Status Prefill(grpc::ServerContext* context, const v1::PrefillRequest* request,
                       v1::PrefillResponse* response) override;
  grpc::Status GetWorkerInfo(grpc::ServerContext* context, const v1::WorkerInfoRequest* request,
                             v1::WorkerInfo* info) override;

  // The work of one request on a checked prompt of `tenant` (its blocks are keyed in the
  // tenant's namespace), counted in the metrics; `request_id` is named in its log lines.
  // ResourceExhausted when its full blocks do not fit in the KV cache; Unavailable once
  // stopping.
  absl::StatusOr<PrefillResult> Run(absl::Span<const TokenId> prompt, absl::string_view tenant = "",
                                    absl::string_view request_id = "");

  // Requests that have not started computing are refused from now on (the worker stops).
  void Stop() { stopping_.store(true); }

 private:
  // Run without the request counts.
  absl::StatusOr<PrefillResult> Compute(absl::Span<const TokenId> prompt, absl::string_view tenant,
                                        absl::string_view request_id, absl::Time received);
  void SetFreePages(int free_pages);

  engine::Engine* const engine_;
  worker::KvTier* const tier_;
  worker::WorkerMetrics* const metrics_;  // the tier's
  const worker::WorkerOptions options_;
  std::atomic<int> active_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<int> free_pages_;

  absl::Mutex engine_mu_;  // serializes requests on the engine
  engine::PageAllocator allocator_ ABSL_GUARDED_BY(engine_mu_);
  std::vector<float> logits_ ABSL_GUARDED_BY(engine_mu_);
};

}  // namespace kvtier::prefill

#endif  // KVTIER_PREFILL_PREFILL_SERVICE_H_
