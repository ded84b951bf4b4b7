// gRPC service kvtier.v1.DecodeWorker (proto/kvtier/v1/worker.proto) over a Scheduler.
//
// Each Generate call runs on a gRPC thread: it converts the request, submits it to the
// scheduler and streams the scheduler's events until the request finishes; when the client
// cancels or goes away it cancels the request (the scheduler frees its pages). gRPC threads
// never touch the engine.
//
// Ownership: borrows the scheduler, engine and tier, which must outlive it.
// Thread-safety: safe for concurrent calls (gRPC's threads).
#ifndef KVTIER_DECODE_DECODE_SERVICE_H_
#define KVTIER_DECODE_DECODE_SERVICE_H_

#include <atomic>

#include "absl/time/time.h"
#include "decode/scheduler.h"
#include "kvtier/v1/worker.grpc.pb.h"
#include "worker/kv_tier.h"
#include "worker/worker_options.h"

namespace kvtier::decode {

class DecodeService final : public v1::DecodeWorker::Service {
 public:
  DecodeService(Scheduler* scheduler, const engine::Engine* engine, const worker::KvTier* tier,
                worker::WorkerOptions options);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status GetWorkerInfo(grpc::ServerContext* context, const v1::WorkerInfoRequest* request,
                             v1::WorkerInfo* info) override;

  // Drains (docs/serving.md, "Draining"): new Generate calls are refused with UNAVAILABLE (a
  // router retries them on another worker) and GetWorkerInfo says draining; then waits up to
  // `timeout` until the requests already submitted have finished. Returns how many had not.
  int Drain(absl::Duration timeout);

  // The scheduler's request for a GenerateRequest (defaults applied: max_tokens 0 → the
  // worker's default, top_p 0 → 1, n 0 → 1). InvalidArgument for a bad prompt.
  absl::StatusOr<GenerateSpec> ToSpec(const v1::GenerateRequest& request) const;

 private:
  Scheduler* scheduler_;
  const engine::Engine* engine_;
  const worker::KvTier* tier_;
  const worker::WorkerOptions options_;
  std::atomic<bool> draining_{false};
};

}  // namespace kvtier::decode

#endif  // KVTIER_DECODE_DECODE_SERVICE_H_
