// Helpers shared by the benchmark programs: child processes (posix_spawn only: UCX is not
// fork-safe, so nothing here ever forks), monotonic time, pre-touched buffers, free ports, a
// private temporary directory, and the memcpy anchor.
//
// Ownership: Subprocess, TouchedBuffer and TempDir own their resource and release it in their
// destructor (a Subprocess still running is terminated: SIGTERM, then SIGKILL).
// Thread-safety: one thread per object; the free functions are thread-safe.
#ifndef KVTIER_BENCH_BENCH_UTIL_H_
#define KVTIER_BENCH_BENCH_UTIL_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvtier::bench {

// CLOCK_MONOTONIC in nanoseconds. It is one clock for every process of the host, so a parent
// can hand its children an absolute start time.
int64_t MonoNowNs();
// Sleeps until MonoNowNs() >= t_ns.
void SleepUntilNs(int64_t t_ns);

// The directory holding the running executable (from /proc/self/exe).
absl::StatusOr<std::string> SelfExeDir();

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close).
absl::StatusOr<int> FreeTcpPort();

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

struct SpawnOptions {
  // argv[0] is looked up in PATH when it has no '/'.
  std::vector<std::string> argv;
  // Extra environment on top of the current one, "NAME=value".
  std::vector<std::string> env;
  // Where stdout goes: a file path (truncated), or empty to inherit ours.
  std::string stdout_path;
  // Where stderr goes: a file path (truncated), "&1" for wherever stdout goes, or empty to
  // inherit ours.
  std::string stderr_path;
  // Give the child a pipe as stdin (WriteLine) and/or stdout (ReadLine, ReadAll).
  bool pipe_stdin = false;
  bool pipe_stdout = false;
  // Have the kernel send the child SIGTERM when we die, even by SIGKILL, so that no store or
  // redis-server outlives a benchmark killed by a CI timeout. Uses util-linux's setpriv
  // --pdeathsig as a launcher (posix_spawn cannot set it); without setpriv the child is
  // started directly.
  bool die_with_parent = true;
};

// A child process started with posix_spawn. While it lives, its pid is registered so that
// SIGINT/SIGTERM of the benchmark (see InstallChildCleanupHandlers) takes it down too.
class Subprocess {
 public:
  static absl::StatusOr<std::unique_ptr<Subprocess>> Spawn(const SpawnOptions& options);
  // Terminates the child if it is still running.
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  // True until the child has been reaped (by Wait, Terminate or a poll here).
  bool Running();
  // Writes `line` and a newline to the child's stdin pipe.
  absl::Status WriteLine(absl::string_view line);
  // Closes the child's stdin pipe (the child sees EOF).
  void CloseStdin();
  // One line (without the newline) from the child's stdout pipe, waiting until `deadline`.
  // Unavailable at EOF, DeadlineExceeded on timeout.
  absl::StatusOr<std::string> ReadLine(absl::Time deadline);
  // Everything the child writes to its stdout pipe until EOF, waiting until `deadline`.
  absl::StatusOr<std::string> ReadAll(absl::Time deadline);
  // Waits until the child exits or `deadline` passes; the wait status, or nullopt on timeout.
  std::optional<int> Wait(absl::Time deadline);
  // SIGTERM, then SIGKILL if it has not exited after `grace`; reaps it; the wait status.
  int Terminate(absl::Duration grace = absl::Seconds(5));

 private:
  Subprocess() = default;
  void Reaped(int status);

  pid_t pid_ = -1;
  std::string name_;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string pending_;  // bytes read from stdout past the last returned line
  std::optional<int> exit_status_;
};

// A short description of a wait status ("exit 1", "signal 9").
std::string DescribeWaitStatus(int status);

struct CommandResult {
  int wait_status = 0;
  bool timed_out = false;
  std::string output;  // stdout (and stderr when merged)
  bool ok() const { return !timed_out && wait_status == 0; }
};

// Runs `options.argv` to completion (stdout captured; options.pipe_stdout is forced on),
// killing it if it runs past `timeout`.
absl::StatusOr<CommandResult> RunCommand(SpawnOptions options, absl::Duration timeout);

// The last `max_bytes` of a text file (for failure messages), or "" if unreadable.
std::string FileTail(const std::string& path, size_t max_bytes = 4000);

// On SIGINT/SIGTERM/SIGHUP: SIGTERM every registered child, then exit (status 128+signal).
void InstallChildCleanupHandlers();

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_BENCH_UTIL_H_
