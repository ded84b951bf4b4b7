// A local kvtier cluster on one host: K kvtier-store nodes, N kvtier-prefill and M kvtier-decode
// workers and a kvtier-router (and, when asked, an etcd they register with), started in the
// background by `kvtier up` and stopped by `kvtier down`. The cluster lives in a run directory
// that holds the generated model, the processes' logs and ready files, the stores' spill
// directories, etcd's data and the state file (cluster.json: pids, addresses, endpoint).
//
// With `netns` every process runs on a host of its own, a network namespace of a NetnsTopology
// (deploy/netns.h): a multi-host cluster on one machine (docs/serving.md, "A multi-host cluster
// on one machine"). `kvtier up` lets the topology outlive it; `kvtier down` deletes it.
//
// Processes are started with common/process.h (posix_spawn: UCX, linked into the kvtier CLI,
// is not fork-safe), each in its own session and released once ready, so that they outlive
// `kvtier up`. The config is an option table (common/options.h): the YAML file and `kvtier up`
// flags.
//
// Plain functions over value types; not meant for concurrent use on one run directory.
#ifndef KVTIER_DEPLOY_CLUSTER_H_
#define KVTIER_DEPLOY_CLUSTER_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/options.h"
#include "common/tls.h"
#include "deploy/netns.h"

namespace kvtier::deploy {

// deploy/local/cluster.yaml shows every field.
struct ClusterConfig {
  // Run directory (relative paths: to the current directory). Default: .kvtier-run.
  std::string run_dir = ".kvtier-run";
  // Model directory; generated with `kvtier-model init` when it holds no config.json.
  // Default: <run_dir>/models/<model_shape>.
  std::string model_dir;
  // Preset shape and dtype of a generated model. Default: tiny, f32.
  std::string model_shape = "tiny";
  std::string model_dtype = "f32";
  // Weight seed of a generated model. Default: 1.
  uint64_t model_seed = 1;
  // Served model id. Default: the model directory's last component.
  std::string model_name;
  // "cpu", "cuda" or "auto" (cuda when `nvidia-smi -L` lists a GPU). Default: cpu.
  std::string backend = "cpu";
  // Store: gRPC port (0: any free port), pool and slot sizes, spill capacity (0: spill off;
  // the spill directory is <run_dir>/spill). Defaults: 0, 256MiB, 64KiB, 1GiB.
  int store_port = 0;
  // Store nodes; every worker gets all of them (first gRPC port: store_port, then
  // consecutive). Default: 1.
  int store_nodes = 1;
  std::string store_pool_bytes = "256MiB";
  std::string store_slot_bytes = "64KiB";
  std::string store_spill_capacity = "1GiB";
  // Worker counts. Defaults: 1, 1.
  int prefill_workers = 1;
  int decode_workers = 1;
  // Workers: CPU threads each (0 = all cores), paged KV cache, prefill chunk, first gRPC port
  // (0: any free port; otherwise consecutive ports). Defaults: 1, 64MiB, 256, 0.
  int worker_threads = 1;
  std::string worker_kv_cache_bytes = "64MiB";
  int worker_max_batch_tokens = 256;
  int worker_base_port = 0;
  // Decode workers keep finished requests' blocks in their own pages (false: the store is the
  // only cache across requests). Default: true.
  bool worker_keep_blocks = true;
  // Router HTTP port (0: any free port). Default: 8080.
  int router_port = 8080;
  // Router: uncached prompt tokens below which prefill is skipped. Default: 16.
  int router_skip_prefill_below = 16;
  // Start a one-member etcd (Debian's etcd-server; data in <run_dir>/etcd) and give its
  // endpoint to every process with membership.* options (docs/membership.md). Default: false.
  bool etcd = false;
  // Every process on a host of its own: a network namespace joined to a bridge
  // (docs/testing.md, "Hosts as network namespaces"); needs root and iproute2. Default: false.
  bool netns = false;
  // Names (at most 8 of [a-z0-9]) and /24 (three octets) of the namespaces. Defaults: kvtier,
  // 10.213.0.
  std::string netns_prefix = "kvtier";
  std::string netns_subnet = "10.213.0";
  // Log level of every process. Default: info.
  std::string log_level = "info";
  // Bound on the start of the whole cluster, and the grace period between SIGTERM and SIGKILL.
  // Defaults: 120 s, 10 s.
  double ready_timeout_s = 120;
  double stop_grace_s = 10;
};

// The credentials of the cluster of a run directory (docs/security.md), generated once per run
// directory by StartCluster: the local CA, server and client certificates and the service token
// in <run_dir>/tls/, the router's API key table <run_dir>/tls/api_keys ("KEY local") and the
// key itself in <run_dir>/api_key (mode 0600).
struct ClusterCredentials {
  LocalPki pki;
  std::string api_keys_file;
  std::string api_key_file;
};
// Their paths (nothing is read or written).
ClusterCredentials CredentialsOf(const std::string& run_dir);
// Creates what is missing of them; the server certificate names 127.0.0.1 and `server_ips` (the
// namespace hosts' addresses), all made anew when it does not.
absl::StatusOr<ClusterCredentials> EnsureCredentials(
    const std::string& run_dir, const std::vector<std::string>& server_ips = {});

// Reads a YAML config; an empty path gives the defaults. Unknown keys and bad values are
// InvalidArgument naming the key.
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);

// Command-line flags over the YAML config (`kvtier up --config FILE --router-port 0`): Register
// (all fields, or those named), parse, then Resolve (validated).
class ClusterFlags : public OptionFlags<ClusterConfig> {
 public:
  ClusterFlags();
};

// One started process, as recorded in the state file.
struct ClusterProcess {
  // "etcd", "store" (or "store-0", "store-1", ... with several), "prefill-0", "decode-1",
  // "router".
  std::string name;
  pid_t pid = -1;
  // The address its ports listen on: 127.0.0.1, or its namespace host's address.
  std::string host = "127.0.0.1";
  int port = 0;  // gRPC port (router: HTTP port; etcd: client port)
  // Port of its plain-HTTP /metrics on `host` (router: its HTTPS API port, where /metrics
  // takes the API key; etcd: its client port); 0: none (docs/observability.md).
  int metrics_port = 0;
  std::string log;
  // Its command line (with `ip netns exec NS` in front on a namespace host), without
  // --ready-file and with the ports it bound in --listen and --metrics-listen, and the
  // environment it adds: what RestartClusterProcess starts again.
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;

  std::string address() const { return host + ":" + std::to_string(port); }
};

// Whether the pid of `p` still runs one of our binaries (a reused pid does not count).
bool ClusterProcessRunning(const ClusterProcess& p);

struct ClusterState {
  std::string run_dir;   // absolute
  std::string endpoint;  // https://HOST:PORT/v1 (the router's host: 127.0.0.1 or its namespace's)
  std::string model_name;
  std::string backend;
  std::vector<ClusterProcess> processes;  // in start order
  std::string netns_prefix;               // the namespaces' prefix; empty: none
  std::string netns_subnet;
};

// Path of the state file of a run directory.
std::string StateFilePath(const std::string& run_dir);
// The state file, nullopt if there is none.
absl::StatusOr<std::optional<ClusterState>> ReadClusterState(const std::string& run_dir);

// Starts the cluster (generating the model and the credentials first if needed: every process
// serves TLS, mutual between the services, with the service token; the router takes the API
// key of EnsureCredentials; with `netns` the namespaces first), waits until etcd is healthy,
// every process wrote its ready file and the router's /health is 200, and writes the state
// file. Progress lines go to `log`. On failure every started process is stopped, the
// namespaces are deleted and the error carries the failing process's log tail.
// FailedPrecondition if a cluster of this run directory is running.
// `bin_dir` holds the kvtier-* binaries.
absl::StatusOr<ClusterState> StartCluster(const ClusterConfig& config, const std::string& bin_dir,
                                          std::ostream& log);

// The network namespaces of a cluster started with `netns`, to run commands on its hosts and
// cut or slow their links (the hosts are the processes' names without '-': "store1",
// "decode0", "router"); not owned. FailedPrecondition for a cluster without namespaces.
absl::StatusOr<NetnsTopology> ClusterTopology(const ClusterState& state);

// Starts process `name` of a running cluster again after it died (the fault injector of
// `kvtier-bench soak`, bench/soak_bench.h): its recorded command line, on the same port, in a
// session of its own as StartCluster starts it; waits up to `timeout` until it is ready, then
// records its new pid (and metrics port) in `state` and in the state file (etcd: until its
// /health says healthy, with its data kept). FailedPrecondition while it still runs.
absl::Status RestartClusterProcess(ClusterState* state, const std::string& name,
                                   absl::Duration timeout);

// Stops the cluster of `run_dir`: SIGTERM to every live process (router first, etcd last),
// SIGKILL to those still alive after `grace`; deletes its network namespaces; removes the state
// file. NotFound if there is none.
absl::Status StopCluster(const std::string& run_dir, absl::Duration grace, std::ostream& log);

}  // namespace kvtier::deploy

#endif  // KVTIER_DEPLOY_CLUSTER_H_
