// `kvtier-bench store --spill`: Reserve and Lookup latency of a kvtier-store while every put
// evicts, with the spill tier off, on, and on with evictions waiting for the disk
// (docs/BENCHMARKS.md). Each mode starts its own store (bench/store_bench.h SpawnStore), a
// writer thread that puts new chains as fast as it can, and times control calls straight over
// gRPC from the calling thread; the stores are stopped on every path out.
//
// Thread-safety: RunSpillBench is meant to be called once, from RunStoreBench.
#ifndef KVTIER_BENCH_SPILL_BENCH_H_
#define KVTIER_BENCH_SPILL_BENCH_H_

#include <string>

#include "absl/status/status.h"
#include "bench/store_bench.h"

namespace kvtier::bench {

// Runs the three modes with `o`'s block size, batch and seconds; the table goes to the results
// file (stderr with --json, then the JSON line to the results file). `exe_dir`: where
// kvtier-store is; `dir`: a scratch directory for the stores' logs and spill files.
absl::Status RunSpillBench(const StoreBenchOptions& o, const std::string& exe_dir,
                           const std::string& dir);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_SPILL_BENCH_H_
