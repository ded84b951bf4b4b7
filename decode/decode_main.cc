// kvtier-decode: the decode worker (gRPC kvtier.v1.DecodeWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include <memory>

#include "common/service.h"
#include "decode/decode_service.h"
#include "decode/scheduler.h"
#include "worker/server_util.h"
#include "worker/worker_options.h"

int main(int argc, char** argv) {
  kvtier::Service service("kvtier-decode");
  kvtier::worker::WorkerFlags flags("decode");
  const kvtier::worker::WorkerOptions options = service.Configure(
      flags, "decode worker (continuous batching over the KV-cache tier)", argc, argv);

  absl::StatusOr<kvtier::worker::WorkerParts> parts = kvtier::worker::MakeWorkerParts(
      options, "blocks are reused only from this worker's own cache");
  if (!parts.ok()) return service.Fail(parts.status());

  kvtier::decode::SchedulerOptions so;
  so.max_batch_tokens = options.max_batch_tokens;
  so.max_batch_seqs = options.max_batch_seqs;
  so.max_queued_requests = options.max_queued_requests;
  so.keep_blocks = options.keep_blocks;
  // Write-backs go through a client of their own on the scheduler's writer thread.
  std::unique_ptr<kvtier::StoreClient> writer_store;
  if (parts->store != nullptr) {
    absl::StatusOr<std::unique_ptr<kvtier::StoreClient>> c =
        kvtier::StoreClient::Create(kvtier::worker::ToStoreClientOptions(options));
    if (!c.ok()) return service.Fail(c.status());
    writer_store = std::move(*c);
  }
  kvtier::decode::Scheduler scheduler(parts->engine.get(), parts->tier.get(), so,
                                      std::move(writer_store));
  scheduler.Start();

  kvtier::decode::DecodeService decode(&scheduler, parts->engine.get(), parts->tier.get(), options);
  auto server = kvtier::worker::ServeWorker("kvtier-decode", options, *parts, &decode);
  if (!server.ok()) return service.Fail(server.status());

  service.WaitForStop();
  // Running requests end now (their streams finish with UNAVAILABLE, and their handlers
  // return within one poll interval), then gRPC stops.
  scheduler.Stop();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  return service.Stopped();
}
