// kvtier-prefill: the prefill worker (gRPC kvtier.v1.PrefillWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include "common/service.h"
#include "prefill/prefill_service.h"
#include "worker/server_util.h"
#include "worker/worker_options.h"

int main(int argc, char** argv) {
  kvtier::Service service("kvtier-prefill");
  kvtier::worker::WorkerFlags flags("prefill");
  const kvtier::worker::WorkerOptions options = service.Configure(
      flags, "prefill worker (computes missing prompt blocks into the store)", argc, argv);

  absl::StatusOr<kvtier::worker::WorkerParts> parts = kvtier::worker::MakeWorkerParts(
      options, "Prefill computes nothing (decode workers recompute)");
  if (!parts.ok()) return service.Fail(parts.status());
  kvtier::prefill::PrefillService prefill(parts->engine.get(), parts->tier.get(), options);
  auto server = kvtier::worker::ServeWorker("kvtier-prefill", options, *parts, &prefill);
  if (!server.ok()) return service.Fail(server.status());

  service.WaitForStop();
  // Stops accepting; the request in progress (at most one computes) gets 2 s to finish.
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return service.Stopped();
}
