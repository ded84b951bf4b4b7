// Helpers shared by the benchmark programs: monotonic time, pre-touched buffers, a private
// temporary directory, the memcpy anchor, the words of generated chat texts, and the progress
// line of long runs. Child processes
// (stores, client workers, anchor tools) come from common/process.h, one implementation with the
// launcher's and the integration tests'.
//
// Ownership: TouchedBuffer, TempDir and Progress own their resource (Progress: its thread) and
// release it in their destructor.
// Thread-safety: one thread per object (Progress: its counts callback runs on its own thread);
// the free functions are thread-safe.
#ifndef KVTIER_BENCH_BENCH_UTIL_H_
#define KVTIER_BENCH_BENCH_UTIL_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/process.h"

namespace kvtier::bench {

// Common short English words, one token each in Llama-3-style vocabularies: the texts of the
// serve and soak benchmarks' conversations.
inline constexpr const char* kWords[] = {
    "the",   "cache", "block", "token",  "model",  "server", "memory", "store",  "layer",
    "fast",  "slow",  "data",  "query",  "answer", "system", "user",   "time",   "value",
    "first", "last",  "next",  "page",   "shared", "prefix", "key",    "node",   "worker",
    "round", "trip",  "write", "read",   "green",  "river",  "stone",  "light",  "north",
    "south", "east",  "west",  "spring", "summer", "winter", "autumn", "garden", "window",
    "table", "chair", "paper", "music",  "story",  "city",   "road",   "bridge", "market"};
inline constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);

// CLOCK_MONOTONIC in nanoseconds. It is one clock for every process of the host, so a parent
// can hand its children an absolute start time.
int64_t MonoNowNs();
// Sleeps until MonoNowNs() >= t_ns.
void SleepUntilNs(int64_t t_ns);

// Anonymous private memory with every page written once, so that no page fault lands inside
// a measurement. Transparent huge pages are requested (madvise), as a serving process would.
class TouchedBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<TouchedBuffer>> Create(size_t bytes, uint8_t fill = 0x5a);
  ~TouchedBuffer();
  TouchedBuffer(const TouchedBuffer&) = delete;
  TouchedBuffer& operator=(const TouchedBuffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  TouchedBuffer(uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t* data_;
  size_t size_;
};

// Single-thread memcpy bandwidth (GB/s, 1e9 bytes/s) between two pre-touched buffers of `bytes`
// each, far larger than the last-level cache; best of `reps`.
struct MemcpyGbps {
  // One memcpy of the whole buffer. For copies this large glibc switches to non-temporal
  // stores (no read-for-ownership of the destination), so this is close to the DRAM limit.
  double whole = 0;
  // The same bytes copied `chunk` bytes per memcpy call, as a data path moving blocks does;
  // below glibc's non-temporal threshold (about 3/4 of the L3) these are ordinary stores.
  double chunked = 0;
};
absl::StatusOr<MemcpyGbps> MeasureMemcpy(size_t bytes, size_t chunk, int reps);

// MemAvailable of /proc/meminfo, in bytes.
absl::StatusOr<uint64_t> MemAvailableBytes();

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  static absl::StatusOr<std::unique_ptr<TempDir>> Create(absl::string_view prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// What a long run has done so far: requests (batches) that succeeded and failed, and anything
// else worth a look (appended to the line).
struct ProgressCounts {
  int64_t done = 0;
  int64_t failed = 0;
  std::string detail;
};

// The progress line of a long run (`--progress-s`, docs/observability.md): every `interval_s`
// seconds a thread of its own calls `counts` and prints to `out`
//   NAME t=20s: 340 done, 2 failed, 17.1/s[, DETAIL]
// (the rate over the last interval). interval_s <= 0: no thread, no lines. `counts` must be safe
// to call from that thread until destruction, which stops the thread.
class Progress {
 public:
  Progress(std::string name, double interval_s, std::function<ProgressCounts()> counts,
           FILE* out = stderr);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

 private:
  void Loop();

  const std::string name_;
  const double interval_s_;
  const std::function<ProgressCounts()> counts_;
  FILE* const out_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_BENCH_UTIL_H_
