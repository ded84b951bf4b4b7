// kvtier-store: the cache store server. Flags override the YAML config (--config).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "cachestore/store_config.h"
#include "cachestore/store_server.h"
#include "common/logging.h"

namespace {

using kvtier::ParseBytes;

bool WriteReadyFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << "{\"grpc_port\":" << grpc_port << ",\"metrics_port\":" << metrics_port
      << ",\"pid\":" << getpid() << "}\n";
    if (!f) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  kvtier::LogToStderr();
  CLI::App app{"kvtier-store: KV-cache block store (UCX data plane, gRPC control plane)"};
  std::string config_path, listen, metrics_listen, pool, slot, spill_dir, spill_capacity, log_level,
      ready_file;
  int64_t lease_ms = -1, reservation_ms = -1;
  int64_t spill_min_hits = -1;
  app.add_option("--config", config_path, "YAML config file (flags override it)");
  app.add_option("--listen", listen, "gRPC host:port (port 0: any free port)");
  app.add_option("--metrics-listen", metrics_listen, "Prometheus host:port; 'off' disables");
  app.add_option("--pool-bytes", pool, "host pool size, e.g. 8GiB");
  app.add_option("--slot-bytes", slot, "slot size (largest block), e.g. 2MiB");
  app.add_option("--spill-dir", spill_dir, "RocksDB spill directory ('' = spill off)");
  app.add_option("--spill-capacity", spill_capacity, "spill tier capacity, e.g. 100GiB");
  app.add_option("--spill-min-hits", spill_min_hits, "hits a block needs to be spilled");
  app.add_option("--lease-timeout-ms", lease_ms, "lease timeout");
  app.add_option("--reservation-timeout-ms", reservation_ms, "reservation timeout");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error");
  app.add_option("--ready-file", ready_file, "write {grpc_port, metrics_port, pid} when serving");
  CLI11_PARSE(app, argc, argv);

  kvtier::cachestore::StoreConfig config;
  if (!config_path.empty()) {
    auto c = kvtier::cachestore::LoadStoreConfig(config_path);
    if (!c.ok()) {
      std::fprintf(stderr, "kvtier-store: %s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    config = *c;
  }
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "kvtier-store: %s\n", std::string(s.message()).c_str());
    return 2;
  };
  auto set_bytes = [&](const std::string& text, uint64_t* out) -> absl::Status {
    if (text.empty()) return absl::OkStatus();
    auto b = ParseBytes(text);
    if (!b.ok()) return b.status();
    *out = *b;
    return absl::OkStatus();
  };
  if (!listen.empty()) config.listen = listen;
  if (!metrics_listen.empty())
    config.metrics_listen = metrics_listen == "off" ? "" : metrics_listen;
  if (auto s = set_bytes(pool, &config.pool_bytes); !s.ok()) return fail(s);
  if (auto s = set_bytes(slot, &config.store.slot_bytes); !s.ok()) return fail(s);
  if (auto s = set_bytes(spill_capacity, &config.store.spill_capacity_bytes); !s.ok()) {
    return fail(s);
  }
  if (app.count("--spill-dir")) config.spill_dir = spill_dir;
  if (spill_min_hits >= 0) config.store.spill_min_hits = static_cast<uint32_t>(spill_min_hits);
  if (lease_ms > 0) config.store.lease_timeout = absl::Milliseconds(lease_ms);
  if (reservation_ms > 0) config.store.reservation_timeout = absl::Milliseconds(reservation_ms);
  if (!log_level.empty()) config.log_level = log_level;
  if (!ready_file.empty()) config.ready_file = ready_file;
  if (!kvtier::SetLogLevel(config.log_level)) {
    return fail(absl::InvalidArgumentError(absl::StrCat("unknown log level ", config.log_level)));
  }

  // Block the stop signals before any thread starts, so only sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = kvtier::cachestore::StoreServer::Start(config);
  if (!server.ok()) {
    spdlog::error("kvtier-store failed to start: {}", server.status().ToString());
    return 1;
  }
  if (!config.ready_file.empty() &&
      !WriteReadyFile(config.ready_file, (*server)->grpc_port(), (*server)->metrics_port())) {
    spdlog::error("cannot write ready file {}", config.ready_file);
    return 1;
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("signal {}: shutting down", sig);
  (*server)->Shutdown();
  server->reset();
  spdlog::info("kvtier-store stopped");
  return 0;
}
