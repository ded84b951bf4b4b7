// `kvtier-bench soak`: a local cluster (deploy/cluster.h, as `kvtier up` starts it: CPU engine,
// the generated tiny model, a small store pool so that eviction happens, spill on) under a
// mixed multi-turn chat workload through the router while a fault injector kill -9s and
// restarts the store and the workers, SIGSTOPs the store, resets TCP connections between them
// and drops client connections mid-stream. It passes only if every check holds (docs/testing.md,
// "Soak"):
//
// - wrong responses: every reply with the tier on equals the reply to the same request with
//   `"cache": false` (greedy decoding; the cache-off reply is computed once per distinct
//   request and remembered);
// - unexplained errors: a failed request is retried (bounded) and counted; a failure that no
//   worker fault explains (a worker killed or its connections reset while the request ran, or
//   shortly before) fails the soak: faults of the store must cost misses, never an error;
// - crashes: no process dies that the injector did not kill;
// - leases and reservations: the store's active leases and reservations drain to 0 after the
//   workload (bounded by the store's lease and reservation timeouts after the last fault);
// - lost blocks: probe prefixes written and committed by the soak's own store client must be
//   read back whole, byte for byte, at the end of their store process's life (before the
//   injector kills it, and at the end), unless the store's eviction counters account for the
//   missing blocks (the rule: docs/testing.md, "Soak");
// - RSS: every process's resident memory, sampled every 2 s, stays under a cap, and its
//   maximum over the last quarter of the run is at most 1.25x (+16 MiB) its maximum over the
//   first quarter after warm-up.
//
// It prints the figures as a table (and one JSON line with --json) and returns non-zero when a
// check fails. Results: docs/BENCHMARKS.md.
//
// Threads: RunSoakBench runs on main(); it starts `concurrency` client threads, the fault
// injector, the probe writer and the monitor (RSS, crashes), all joined before it returns.
#ifndef KVTIER_BENCH_SOAK_BENCH_H_
#define KVTIER_BENCH_SOAK_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

namespace kvtier::bench {

struct SoakBenchOptions {
  // Length of the workload. Default: 600.
  double seconds = 600;
  // Faults stop this long before the workload ends. Longer than the store's lease timeout
  // (30 s) + 5 s, the lease check is strict: no lease a fault orphaned can still be held at the
  // end, so one that is was leaked (docs/testing.md, "Soak"). Default: 40.
  double quiet_seconds = 40;
  // Distinct conversations (each replayed whenever a client picks it again). Default: 48.
  int conversations = 48;
  // Turns per conversation. Default: 4.
  int turns = 4;
  // Clients in flight at once. Default: 4.
  int concurrency = 4;
  // Seed of the conversations and of the fault schedule. Default: 1.
  uint64_t seed = 1;
  // Mean seconds between faults (exponential, at least 1 s). Default: 6.
  double fault_interval_s = 6;
  // Fault kinds to inject: store-kill (kill -9, restart on the same port), store-stop
  // (SIGSTOP for 1 s to stop_max_s), worker-kill (a prefill or decode worker: kill -9,
  // restart), conn-kill (`ss -K` the TCP connections to the store or a worker; left out where
  // that needs privileges we lack). Default: all.
  std::vector<std::string> faults = {"store-kill", "store-stop", "worker-kill", "conn-kill"};
  // store-stop lasts 1 s to this long (uniform). Default: 5.
  double stop_max_s = 5;
  // Fraction of streamed requests whose client closes the connection after the first text,
  // while faults run. Default: 0.05.
  double drop_rate = 0.05;
  // Absolute RSS cap of every process, bytes. Default: 1 GiB.
  uint64_t rss_cap_bytes = uint64_t{1} << 30;
  // Run directory (model, logs, spill); empty: a fresh one under $TMPDIR, removed when the soak
  // passes. Default: empty.
  std::string run_dir;
  // Seconds between progress lines on stderr (bench/bench_util.h Progress); 0: none.
  // Default: 10.
  double progress_s = 10;
  // Print one JSON object as the last stdout line. Default: false.
  bool json = false;
};

// Runs the soak; returns the process exit code: 0 when every check passed, 1 when one failed,
// 2 when the cluster could not be started.
int RunSoakBench(const SoakBenchOptions& options);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_SOAK_BENCH_H_
