// Options shared by the serving workers kvtier-prefill and kvtier-decode: a YAML file
// (--config), overridden by command-line flags, both from one option table (common/options.h).
// docs/serving.md lists every field.
//
// Plain value types; thread-compatible.
#ifndef KVTIER_WORKER_WORKER_OPTIONS_H_
#define KVTIER_WORKER_WORKER_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/options.h"
#include "engine/engine.h"
#include "kvtier/store_client.h"
#include "membership/membership_options.h"

namespace kvtier::worker {

struct WorkerOptions {
  // Hugging Face model directory (config.json + safetensors). Required.
  std::string model_dir;
  // "cpu" or "cuda". Default: cpu.
  std::string backend = "cpu";
  // gRPC host:port (port 0: any free port). Default: 127.0.0.1:50061 (prefill),
  // 127.0.0.1:50062 (decode).
  std::string listen = "127.0.0.1:50061";
  // Prometheus /metrics and /healthz, plain HTTP, host:port (port 0: any free port, logged and
  // written to the ready file); empty (flag: "off") turns it off (docs/observability.md).
  // Default: 127.0.0.1:0.
  std::string metrics_listen = "127.0.0.1:0";
  // Control-plane addresses of the store nodes; empty: no store tier (recompute only).
  // Default: empty.
  std::vector<std::string> stores;
  // Deadline of each store control-plane call. Default: 2000 ms.
  int64_t store_rpc_timeout_ms = 2000;
  // Deadline of each batch of store transfers; past it the data-plane connection is closed and
  // the node skipped (docs/store-protocol.md, "Failure model"). Default: 10000 ms.
  int64_t store_transfer_timeout_ms = 10000;
  // How long a failed store node is skipped. Default: 1000 ms.
  int64_t store_retry_after_ms = 1000;
  // The store data plane's network interface: a name, an address of one, or "all"
  // (docs/store-protocol.md, "Data plane: interfaces and trust"). Empty: the interfaces that
  // reach the stores (loopback for stores on 127.0.0.1). Default: empty.
  std::string data_interface;
  // Memory of the engine's paged KV cache. Default: 256 MiB.
  int64_t kv_cache_bytes = int64_t{256} << 20;
  // Tokens per page and per stored block (the same for every worker of one model). Default: 16.
  int block_tokens = 16;
  // Most new tokens in one Forward call: the prefill chunk size. Default: 512.
  int max_batch_tokens = 512;
  // Most sequences in one Forward call (decode: most running sequences). Default: 64.
  int max_batch_seqs = 64;
  // CPU backend threads; 0 = all cores. Default: 0.
  int threads = 0;
  // Name reported in WorkerInfo. Default: the model directory's last component.
  std::string model_name;
  // Written (atomically) once serving: {"grpc_port":..,"metrics_port":..,"pid":..}
  // (metrics_port 0: metrics off). Default: none.
  std::string ready_file;
  // spdlog level. Default: info.
  std::string log_level = "info";
  // Decode: most requests waiting for admission; more are refused (RESOURCE_EXHAUSTED).
  // Default: 256.
  int max_queued_requests = 256;
  // Decode: max_tokens of a request that leaves it 0. Default: 256.
  int default_max_tokens = 256;
  // Decode: on SIGTERM, how long running and queued requests may take to finish after the
  // worker has left the cluster and refuses new ones (docs/serving.md, "Draining"); then they
  // are cancelled. 0: cancel at once. Default: 30000 ms.
  int64_t drain_timeout_ms = 30000;
  // Decode: keep finished requests' blocks in the engine's pages as a first tier (false: every
  // request fetches its prefix from the store). Default: true.
  bool keep_blocks = true;
  // Threads copying blocks to and from a same-host store; 0: half the cores, at most 8.
  // Default: 0.
  int store_copy_threads = 0;
  // TLS of the gRPC endpoint and of the calls to the stores, and the service token, or plain
  // text (the tls.* keys and service_token_file, docs/security.md). Default: none (one of them
  // must be given).
  TlsOptions tls;
  // Cluster membership through etcd (membership.*, docs/membership.md): the worker registers
  // its role, address and load, and, when `stores` is empty, follows the store nodes' live set.
  // Default: off.
  membership::MembershipOptions membership;
};

// Defaults for "prefill" or "decode" (they differ in the listen port only).
WorkerOptions DefaultWorkerOptions(absl::string_view role);

// The engine and store-client options these options describe.
engine::EngineOptions ToEngineOptions(const WorkerOptions& options);
StoreClientOptions ToStoreClientOptions(const WorkerOptions& options);

// Command-line flags over a config file: Register() adds --config and one flag per field to a
// CLI::App; after parsing, Resolve() loads the config (if any) over the role's defaults, applies
// the flags that were given, checks every field (InvalidArgument naming it) and fills
// model_name.
class WorkerFlags : public OptionFlags<WorkerOptions> {
 public:
  explicit WorkerFlags(absl::string_view role);
};

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_WORKER_OPTIONS_H_
