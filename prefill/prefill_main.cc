// kvtier-prefill: the prefill worker (gRPC kvtier.v1.PrefillWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include <memory>

#include "common/service.h"
#include "common/status_macros.h"
#include "prefill/prefill_service.h"
#include "worker/server_util.h"

namespace kvtier::prefill {
namespace {

// What --help says kvtier-prefill is.
constexpr char kAbout[] = "prefill worker (computes missing prompt blocks into the store)";

absl::StatusOr<StopFunction> Start(const worker::WorkerOptions& options) {
  auto w = std::make_shared<worker::ServingWorker<PrefillService>>();
  KVTIER_ASSIGN_OR_RETURN(
      w->parts, worker::MakeWorkerParts("prefill", options,
                                        "Prefill computes nothing (decode workers recompute)"));
  w->role = std::make_unique<PrefillService>(w->parts.engine.get(), w->parts.tier.get(), options);
  KVTIER_ASSIGN_OR_RETURN(w->server,
                          worker::ServeWorker("kvtier-prefill", options, &w->parts, w->role.get()));
  // Leaves the cluster, stops accepting; queued requests are refused (UNAVAILABLE) as soon as
  // they would start, and the request in progress (at most one computes) gets 2 s to finish.
  return [w] {
    w->parts.registration.reset();
    w->role->Stop();
    w->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  };
}

}  // namespace
}  // namespace kvtier::prefill

int main(int argc, char** argv) {
  return kvtier::RunServer<kvtier::worker::WorkerFlags>(
      "kvtier-prefill", kvtier::prefill::kAbout, argc, argv, kvtier::prefill::Start, "prefill");
}
