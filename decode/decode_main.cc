// kvtier-decode: the decode worker (gRPC kvtier.v1.DecodeWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <memory>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "decode/decode_service.h"
#include "decode/scheduler.h"
#include "worker/server_util.h"
#include "worker/worker_options.h"

int main(int argc, char** argv) {
  kvtier::LogToStderr();
  // Before any thread starts: only Wait() below receives SIGTERM/SIGINT.
  kvtier::worker::StopSignals signals;
  CLI::App app{"kvtier-decode: decode worker (continuous batching over the KV-cache tier)"};
  kvtier::worker::WorkerFlags flags("decode");
  flags.Register(app);
  CLI11_PARSE(app, argc, argv);
  absl::StatusOr<kvtier::worker::WorkerOptions> options = flags.Resolve();
  if (!options.ok()) {
    std::fprintf(stderr, "kvtier-decode: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  kvtier::SetLogLevel(options->log_level);

  absl::StatusOr<kvtier::worker::WorkerParts> parts = kvtier::worker::MakeWorkerParts(
      *options, "blocks are reused only from this worker's own cache");
  if (!parts.ok()) {
    spdlog::error("{}", parts.status().ToString());
    return 1;
  }

  kvtier::decode::SchedulerOptions so;
  so.max_batch_tokens = options->max_batch_tokens;
  so.max_batch_seqs = options->max_batch_seqs;
  so.max_queued_requests = options->max_queued_requests;
  so.keep_blocks = options->keep_blocks;
  // Write-backs go through a client of their own on the scheduler's writer thread.
  std::unique_ptr<kvtier::StoreClient> writer_store;
  if (parts->store != nullptr) {
    absl::StatusOr<std::unique_ptr<kvtier::StoreClient>> c =
        kvtier::StoreClient::Create(kvtier::worker::ToStoreClientOptions(*options));
    if (!c.ok()) {
      spdlog::error("store client: {}", c.status().ToString());
      return 1;
    }
    writer_store = std::move(*c);
  }
  kvtier::decode::Scheduler scheduler(parts->engine.get(), parts->tier.get(), so,
                                      std::move(writer_store));
  scheduler.Start();

  kvtier::decode::DecodeService service(&scheduler, parts->engine.get(), parts->tier.get(),
                                        *options);
  auto server = kvtier::worker::ServeWorker("kvtier-decode", *options, *parts, &service);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }

  const int sig = signals.Wait();
  spdlog::info("signal {}: shutting down", sig);
  // Running requests end now (their streams finish with UNAVAILABLE, and their handlers
  // return within one poll interval), then gRPC stops.
  scheduler.Stop();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  spdlog::info("kvtier-decode stopped");
  return 0;
}
