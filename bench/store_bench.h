// `kvtier-bench store`: bandwidth and lookup latency of a kvtier-store through the client
// library (include/kvtier/store_client.h), with the anchors of docs/BENCHMARKS.md measured in the
// same run: a single-thread memcpy over buffers far larger than the caches, ucx_perftest's
// ucp_put_bw, and a real redis-server driven by redis-benchmark.
//
// The benchmark starts what it measures itself (kvtier-store, redis-server, ucx_perftest, and
// for --clients > 1 copies of itself in the hidden `store-worker` mode) with posix_spawn only,
// never fork, and takes them down again on every path out, error paths included.
//
// Thread-safety: both entry points are meant to be called once, from main().
#ifndef KVTIER_BENCH_STORE_BENCH_H_
#define KVTIER_BENCH_STORE_BENCH_H_

#include <cstdint>
#include <string>

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
};

// Runs the whole benchmark; returns the process exit code (0 unless something failed; a
// target that is missed is reported, not an error).
int RunStoreBench(const StoreBenchOptions& options);

// One client process of a multi-client run (the hidden `store-worker` mode). It reads phase
// commands from stdin and answers each with one JSON line on stdout.
struct StoreWorkerOptions {
  std::string store;   // host:port
  std::string ns_hex;  // namespace of the run
  uint32_t client_id = 0;
  uint64_t block_bytes = 0;
  uint32_t batch = 0;
  uint32_t get_batches = 0;  // batches of the get working set
};
int RunStoreWorker(const StoreWorkerOptions& options);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_STORE_BENCH_H_
