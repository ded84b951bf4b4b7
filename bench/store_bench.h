// `kvtier-bench store`: bandwidth and lookup latency of a kvtier-store through the client
// library (include/kvtier/store_client.h), with the anchors of docs/BENCHMARKS.md measured in the
// same run: a single-thread memcpy over buffers far larger than the caches, ucx_perftest's
// ucp_put_bw, and a real redis-server driven by redis-benchmark. With --netns the stores run on
// hosts made of network namespaces and the clients on another, and the anchors are iperf3 and
// Redis over the same veth link.
//
// The benchmark starts what it measures itself (kvtier-store, redis-server, ucx_perftest, and
// for --clients > 1 copies of itself in the hidden `store-worker` mode) with posix_spawn only,
// never fork, and takes them down again on every path out, error paths included.
//
// The helpers at the end are shared with `--spill` (bench/spill_bench.h).
//
// Thread-safety: both entry points are meant to be called once, from main(); the helpers are
// thread-safe except RedirectStdoutToStderr (once, before any other thread starts).
#ifndef KVTIER_BENCH_STORE_BENCH_H_
#define KVTIER_BENCH_STORE_BENCH_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/process.h"
#include "kvtier/block_key.h"

namespace kvtier::bench {

struct StoreBenchOptions {
  // Data-plane transport: "shm" (UCX_TLS=posix,sysv,cma,self) or "tcp" (UCX_TLS=tcp,self).
  // Set for the benchmark itself and every process it starts. Default: shm.
  std::string transport = "shm";
  // Bytes per block. Default: 2 MiB (a 16-token block of Llama-3-8B in bf16).
  uint64_t block_bytes = 2ull << 20;
  // Blocks per Put/Get call. Default: 16.
  uint32_t batch = 16;
  // Client processes (1: in-process). Default: 1.
  uint32_t clients = 1;
  // Length of each timed phase (put, get) when iterations is 0. Default: 3 s.
  double seconds = 3.0;
  // If > 0, each client runs exactly this many batches per timed phase. Default: 0.
  int64_t iterations = 0;
  // A running store "host:port" to use instead of starting one. Default: empty.
  std::string store;
  // Seconds between progress lines on stderr (bench/bench_util.h Progress); 0: none.
  // Default: 10.
  double progress_s = 10;
  // Print one JSON object as the last stdout line (the table goes to stderr). Default: false.
  bool json = false;
  // Skip the ucx_perftest and redis anchors (reported as null). Default: false.
  bool skip_anchors = false;
  // Instead: Reserve and Lookup latency while every put evicts, with the spill tier on and
  // off (docs/BENCHMARKS.md). Default: false.
  bool spill = false;
  // Instead: the stores and the clients on different hosts made of network namespaces
  // (deploy/netns.h), UCX over TCP across a veth link, beside iperf3 and Redis over the same
  // link in the same run (docs/BENCHMARKS.md). Needs root. Default: false.
  bool netns = false;
  // With netns: store nodes, each on a host of its own (1 to 3). Default: 1.
  uint32_t store_nodes = 1;
  // UCX endpoints per client and store node (StoreClientOptions::lanes). Default: 1.
  uint32_t lanes = 1;
};

// Runs the whole benchmark; returns the process exit code (0 unless something failed; a
// target that is missed is reported, not an error).
int RunStoreBench(const StoreBenchOptions& options);

// One client process of a multi-client run (the hidden `store-worker` mode). It reads phase
// commands from stdin and answers each with one JSON line on stdout.
struct StoreWorkerOptions {
  std::string store;   // host:port[,host:port...]
  std::string ns_hex;  // namespace of the run
  uint32_t client_id = 0;
  uint64_t block_bytes = 0;
  uint32_t batch = 0;
  uint32_t get_batches = 0;  // batches of the get working set
  bool map_pool = true;      // StoreClientOptions::map_same_host_pool
  uint32_t lanes = 1;        // StoreClientOptions::lanes
};
int RunStoreWorker(const StoreWorkerOptions& options);

// ---------------------------------------------------------------------------------------------
// Shared by the store benchmarks.

// Nearest-rank percentile, p in (0, 100]; 0 for no values.
double Percentile(std::vector<double> v, double p);
// "2 MiB", "4 KiB", "1 GiB", or "N B" when not a whole multiple.
std::string HumanBytes(uint64_t b);
// A 32-byte key that looks like a SHA-256 output (what real block keys are), unique per
// (client, sequence number, position in the batch).
BlockKey MakeKey(uint32_t client, uint64_t seq, uint32_t j);
// kvtier-store from the benchmark's own directory `exe_dir`, its log and ready file in `dir`,
// without a metrics endpoint, spill on when `spill_dir` is set; stopped with SIGTERM (then
// SIGKILL) when dropped. StoreProcess::AwaitReady waits for it, so several stores start at once.
absl::StatusOr<StoreProcess> SpawnStore(const std::string& exe_dir, const std::string& dir,
                                        const std::string& name, uint64_t pool_bytes,
                                        uint64_t slot_bytes, const std::string& spill_dir = "",
                                        std::vector<std::string> extra_args = {});
// Moves our stdout to a private descriptor (ResultsFile()) and points fd 1 at stderr, so that
// everything else (our logs, the client library's and UCX's, which may print to stdout) goes to
// stderr and a --json run's stdout holds nothing but the JSON line.
absl::Status RedirectStdoutToStderr();
// The output channel for results: the original stdout (stdout before RedirectStdoutToStderr).
FILE* ResultsFile();

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_STORE_BENCH_H_
