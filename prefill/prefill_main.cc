// kvtier-prefill: the prefill worker (gRPC kvtier.v1.PrefillWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "prefill/prefill_service.h"
#include "worker/server_util.h"
#include "worker/worker_options.h"

int main(int argc, char** argv) {
  kvtier::LogToStderr();
  // Before any thread starts: only Wait() below receives SIGTERM/SIGINT.
  kvtier::worker::StopSignals signals;
  CLI::App app{"kvtier-prefill: prefill worker (computes missing prompt blocks into the store)"};
  kvtier::worker::WorkerFlags flags("prefill");
  flags.Register(app);
  CLI11_PARSE(app, argc, argv);
  absl::StatusOr<kvtier::worker::WorkerOptions> options = flags.Resolve();
  if (!options.ok()) {
    std::fprintf(stderr, "kvtier-prefill: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  kvtier::SetLogLevel(options->log_level);

  absl::StatusOr<kvtier::worker::WorkerParts> parts = kvtier::worker::MakeWorkerParts(
      *options, "Prefill computes nothing (decode workers recompute)");
  if (!parts.ok()) {
    spdlog::error("{}", parts.status().ToString());
    return 1;
  }
  kvtier::prefill::PrefillService service(parts->engine.get(), parts->tier.get(), *options);
  auto server = kvtier::worker::ServeWorker("kvtier-prefill", *options, *parts, &service);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }

  const int sig = signals.Wait();
  spdlog::info("signal {}: shutting down", sig);
  // Stops accepting; the request in progress (at most one computes) gets 2 s to finish.
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  spdlog::info("kvtier-prefill stopped");
  return 0;
}
