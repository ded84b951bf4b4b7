// Configuration of kvtier-store: a YAML file (--config), overridden by command-line flags, both
// from one option table (common/options.h). deploy/store.example.yaml shows every YAML key with
// its default; `kvtier-store --help` every flag.
//
// Plain value types; thread-compatible.
#ifndef KVTIER_CACHESTORE_STORE_CONFIG_H_
#define KVTIER_CACHESTORE_STORE_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachestore/store.h"
#include "common/options.h"
#include "membership/membership_options.h"

namespace kvtier::cachestore {

struct StoreConfig {
  // gRPC control plane, host:port (port 0: any free port). Default: 127.0.0.1:50051.
  std::string listen = "127.0.0.1:50051";
  // Prometheus /metrics, host:port; empty (flag: "off") turns it off. Default: 127.0.0.1:9100.
  std::string metrics_listen = "127.0.0.1:9100";
  // Host pool size; rounded down to whole slots. Default: 1 GiB.
  uint64_t pool_bytes = 1ull << 30;
  // The data plane's network interface: a name ("eth1"), an address of one, or "all"; UCX
  // listens and connects only there (docs/store-protocol.md, "Data plane: interfaces and
  // trust"). Empty: the interface of `listen`'s host (loopback for 127.0.0.1; every interface
  // for 0.0.0.0). Default: empty.
  std::string data_interface;
  // Write every in-memory block to the spill tier on SIGTERM. Default: true.
  bool spill_on_shutdown = true;
  // Written (atomically) once serving: {"grpc_port":..,"metrics_port":..,"pid":..}. Default: none.
  std::string ready_file;
  // spdlog level. Default: info.
  std::string log_level = "info";
  // slot_bytes, timeouts, batch bound, the spill tier's options.
  StoreOptions store;
  // TLS, mutual TLS and the service token of the gRPC endpoint, or plain text (the tls.* keys
  // and service_token_file, docs/security.md). Default: none (one of them must be given).
  TlsOptions tls;
  // etcd membership: the store registers itself (docs/membership.md). Default: off.
  membership::MembershipOptions membership;
};

// Reads a YAML config file over the defaults. Unknown keys are an error (a typo must not be
// silently ignored).
absl::StatusOr<StoreConfig> LoadStoreConfig(const std::string& path);

// Checks ranges and derives slot_count from pool_bytes.
absl::Status FinalizeStoreConfig(StoreConfig* config);

// Command-line flags over the YAML config: Register, parse, then Resolve (finalized).
class StoreFlags : public OptionFlags<StoreConfig> {
 public:
  StoreFlags();
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_STORE_CONFIG_H_
