// kvtier-prefill: the prefill worker (gRPC kvtier.v1.PrefillWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "engine/engine.h"
#include "kvtier/store_client.h"
#include "prefill/prefill_service.h"
#include "worker/kv_tier.h"
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

  auto engine =
      kvtier::engine::Engine::Create(options->model_dir, kvtier::worker::ToEngineOptions(*options));
  if (!engine.ok()) {
    spdlog::error("cannot load the model: {}", engine.status().ToString());
    return 1;
  }
  std::unique_ptr<kvtier::StoreClient> store;
  if (!options->stores.empty()) {
    auto s = kvtier::StoreClient::Create(kvtier::worker::ToStoreClientOptions(*options));
    if (!s.ok()) {
      spdlog::error("store client: {}", s.status().ToString());
      return 1;
    }
    store = std::move(*s);
  } else {
    spdlog::warn("no store configured: Prefill computes nothing (decode workers recompute)");
  }
  kvtier::worker::KvTier tier(engine->get(), store.get());
  kvtier::prefill::PrefillService service(engine->get(), &tier, *options);
  int port = 0;
  auto server = kvtier::worker::StartGrpcServer(options->listen, {&service}, &port);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  if (!options->ready_file.empty()) {
    if (absl::Status st = kvtier::worker::WriteReadyFile(options->ready_file, port); !st.ok()) {
      spdlog::error("{}", st.ToString());
      return 1;
    }
  }
  spdlog::info("kvtier-prefill serving {} on port {}: {} KV pages of {} tokens, {} store node(s)",
               options->model_name, port, (*engine)->num_pages(), options->block_tokens,
               options->stores.size());

  const int sig = signals.Wait();
  spdlog::info("signal {}: shutting down", sig);
  // Stops accepting; the request in progress (at most one computes) gets 2 s to finish.
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  spdlog::info("kvtier-prefill stopped");
  return 0;
}
