// Configuration of kvtier-store: a YAML file, overridden by command-line flags.
// See deploy/store.example.yaml for every field with its default.
#ifndef KVTIER_CACHESTORE_STORE_CONFIG_H_
#define KVTIER_CACHESTORE_STORE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachestore/store.h"
#include "common/parse_bytes.h"

namespace kvtier::cachestore {

struct StoreConfig {
  // gRPC control plane, host:port (port 0: any free port). Default: 127.0.0.1:50051.
  std::string listen = "127.0.0.1:50051";
  // Prometheus /metrics, host:port; empty turns it off. Default: 127.0.0.1:9100.
  std::string metrics_listen = "127.0.0.1:9100";
  // Host pool size; rounded down to whole slots. Default: 1 GiB.
  uint64_t pool_bytes = 1ull << 30;
  // Spill directory (RocksDB); empty turns spill off. Default: empty.
  std::string spill_dir;
  // Write every in-memory block to the spill tier on SIGTERM. Default: true.
  bool spill_on_shutdown = true;
  // Written (atomically) once serving: {"grpc_port":..,"metrics_port":..,"pid":..}. Default: none.
  std::string ready_file;
  // spdlog level. Default: info.
  std::string log_level = "info";
  // slot_bytes, timeouts, batch bound, spill capacity and min hits.
  StoreOptions store;
};

// Reads a YAML config file over the defaults. Unknown keys are an error (a typo must not be
// silently ignored).
absl::StatusOr<StoreConfig> LoadStoreConfig(const std::string& path);

// Checks ranges and derives slot_count from pool_bytes.
absl::Status FinalizeStoreConfig(StoreConfig* config);

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_STORE_CONFIG_H_
