// kvtier-decode: the decode worker (gRPC kvtier.v1.DecodeWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include <memory>

#include "common/service.h"
#include "common/status_macros.h"
#include "decode/decode_service.h"
#include "decode/scheduler.h"
#include "spdlog/spdlog.h"
#include "worker/server_util.h"

namespace kvtier::decode {
namespace {

// What --help says kvtier-decode is.
constexpr char kAbout[] = "decode worker (continuous batching over the KV-cache tier)";

// The decode role: the scheduler and the gRPC service over it (destroyed first).
struct Decode {
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<DecodeService> service;
};

absl::StatusOr<StopFunction> Start(const worker::WorkerOptions& options) {
  SchedulerOptions so;
  so.max_batch_tokens = options.max_batch_tokens;
  so.max_batch_seqs = options.max_batch_seqs;
  so.max_queued_requests = options.max_queued_requests;
  so.keep_blocks = options.keep_blocks;
  auto w = std::make_shared<worker::ServingWorker<Decode>>();
  w->role = std::make_unique<Decode>();
  KVTIER_ASSIGN_OR_RETURN(
      w->parts, worker::MakeWorkerParts("decode", options,
                                        "blocks are reused only from this worker's own cache"));
  // Write-backs go through a client of their own on the scheduler's writer thread.
  std::unique_ptr<StoreClient> writer_store;
  if (w->parts.store != nullptr) {
    KVTIER_ASSIGN_OR_RETURN(writer_store,
                            StoreClient::Create(worker::ToStoreClientOptions(options)));
  }
  w->role->scheduler = std::make_unique<Scheduler>(w->parts.engine.get(), w->parts.tier.get(), so,
                                                   std::move(writer_store));
  w->role->scheduler->Start();
  w->role->service = std::make_unique<DecodeService>(
      w->role->scheduler.get(), w->parts.engine.get(), w->parts.tier.get(), options);
  KVTIER_ASSIGN_OR_RETURN(
      w->server, worker::ServeWorker("kvtier-decode", options, &w->parts, w->role->service.get()));
  return [w, drain = absl::Milliseconds(options.drain_timeout_ms)] {
    // Leaves the cluster (routers stop placing here), finishes what runs within the drain
    // timeout (docs/serving.md, "Draining"); what is left ends now (its streams finish with
    // UNAVAILABLE, and their handlers return within one poll interval), then gRPC stops.
    w->parts.registration.reset();
    const absl::Time t0 = absl::Now();
    const int left = w->role->service->Drain(drain);
    spdlog::info("drained in {:.1f} s{}", absl::ToDoubleSeconds(absl::Now() - t0),
                 left == 0 ? "" : fmt::format(", {} request(s) cancelled", left));
    w->role->scheduler->Stop();
    w->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  };
}

}  // namespace
}  // namespace kvtier::decode

int main(int argc, char** argv) {
  return kvtier::RunServer<kvtier::worker::WorkerFlags>(
      "kvtier-decode", kvtier::decode::kAbout, argc, argv, kvtier::decode::Start, "decode");
}
