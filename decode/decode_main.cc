// kvtier-decode: the decode worker (gRPC kvtier.v1.DecodeWorker). Flags override the YAML
// config (--config); see docs/serving.md.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "decode/decode_service.h"
#include "decode/scheduler.h"
#include "engine/engine.h"
#include "kvtier/store_client.h"
#include "worker/kv_tier.h"
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
    spdlog::warn("no store configured: blocks are reused only from this worker's own cache");
  }
  kvtier::worker::KvTier tier(engine->get(), store.get());

  kvtier::decode::SchedulerOptions so;
  so.max_batch_tokens = options->max_batch_tokens;
  so.max_batch_seqs = options->max_batch_seqs;
  so.max_queued_requests = options->max_queued_requests;
  kvtier::decode::Scheduler scheduler(engine->get(), &tier, so);
  scheduler.Start();

  kvtier::decode::DecodeService service(&scheduler, engine->get(), &tier, *options);
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
  spdlog::info("kvtier-decode serving {} on port {}: {} KV pages of {} tokens, {} store node(s)",
               options->model_name, port, (*engine)->num_pages(), options->block_tokens,
               options->stores.size());

  const int sig = signals.Wait();
  spdlog::info("signal {}: shutting down", sig);
  // Running requests end now (their streams finish with UNAVAILABLE, and their handlers
  // return within one poll interval), then gRPC stops.
  scheduler.Stop();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  spdlog::info("kvtier-decode stopped");
  return 0;
}
