// Child processes for the local-cluster launcher (`kvtier up`, deploy/cluster.h), the
// integration tests and the benchmarks: any program started with posix_spawn (never fork: UCX
// is not fork-safe), with its output in files or pipes; a kvtier-store, or any other kvtier
// server that announces itself with a ready file (common/service.h), started on loopback with
// its log in a directory of the caller's; processes that are not our children stopped by pid;
// free ports and bounded waits.
//
// Ownership: a ChildProcess (and the StoreProcess or ServerProcess holding one) owns its child
// and stops it on destruction (SIGTERM, then SIGKILL after SpawnOptions::stop_grace; SIGKILL at
// once when that is zero), unless Release() let it go.
// Thread-safety: one thread per object; the free functions are thread-safe.
#ifndef KVTIER_COMMON_PROCESS_H_
#define KVTIER_COMMON_PROCESS_H_

#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvtier {

struct SpawnOptions {
  // argv[0] is looked up in PATH when it has no '/'.
  std::vector<std::string> argv;
  // Environment on top of the current one (a name given here replaces ours).
  std::map<std::string, std::string> env;
  // Where stdout goes: a file path, or empty to inherit ours.
  std::string stdout_path;
  // Where stderr goes: a file path, "&1" for wherever stdout goes, or empty to inherit ours.
  std::string stderr_path;
  // Append to the output files rather than truncate them (several children may share a log).
  bool append = false;
  // Give the child a pipe as stdin (WriteLine) and/or stdout (ReadLine, ReadAll).
  bool pipe_stdin = false;
  bool pipe_stdout = false;
  // Have the kernel send the child SIGTERM when the spawning thread dies, even by SIGKILL, so
  // that no store outlives a program killed by a CI timeout. Uses util-linux's setpriv
  // --pdeathsig as a launcher (posix_spawn cannot set it); without setpriv the child is
  // started directly. Spawn from a thread that outlives the child.
  bool die_with_parent = true;
  // How destruction stops a child that still runs: SIGTERM, then SIGKILL after this long;
  // zero: SIGKILL at once.
  absl::Duration stop_grace = absl::Seconds(5);
  // Start the child in a session of its own (setsid) with stdin from /dev/null: neither our
  // terminal's signals nor its hang-up reach it. With die_with_parent off and Release(), the
  // child outlives us (a launcher's servers).
  bool new_session = false;
};

// A child process. While it lives, its pid is registered so that SIGINT/SIGTERM of this
// program (see InstallChildCleanupHandlers) takes it down too. Move-only.
class ChildProcess {
 public:
  static absl::StatusOr<ChildProcess> Spawn(const SpawnOptions& options);
  // `argv` with the current environment plus `env`, stdout and stderr appended to `log_path`
  // (empty: inherited), killed with SIGKILL on destruction.
  static absl::StatusOr<ChildProcess> Spawn(const std::vector<std::string>& argv,
                                            const std::map<std::string, std::string>& env,
                                            const std::string& log_path);
  ChildProcess() = default;
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // Stops the child if it still runs (see SpawnOptions::stop_grace).
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  // True until the child has been reaped (by Wait, Signal, Terminate or a poll here).
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
  // Waits up to `timeout` for the child to exit; its wait status, or nullopt if it still runs
  // (or was never started).
  std::optional<int> Wait(absl::Duration timeout);
  // Sends `sig` (unless the child has exited) and waits up to `timeout` for the exit, as Wait.
  std::optional<int> Signal(int sig, absl::Duration timeout);
  // SIGTERM, then SIGKILL if it has not exited after `grace` (zero: SIGKILL at once); reaps
  // it; the wait status.
  int Terminate(absl::Duration grace = absl::Seconds(5));
  // Lets the child go: this object forgets it (destruction no longer stops it, SIGINT/SIGTERM
  // handlers no longer take it down) and it is never reaped here. Returns its pid.
  pid_t Release();

 private:
  void Reaped(int status);
  void CloseFds();
  // Reads what the stdout pipe has (waiting until `deadline`) onto pending_; false at EOF.
  absl::StatusOr<bool> ReadMore(absl::Time deadline);

  pid_t pid_ = -1;
  std::string name_;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string pending_;  // bytes read from stdout past the last returned line
  std::optional<int> exit_status_;
  absl::Duration stop_grace_ = absl::ZeroDuration();
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

// On SIGINT/SIGTERM/SIGHUP: SIGTERM every registered child, then exit (status 128+signal).
void InstallChildCleanupHandlers();

// Whether `pid` exists and has not exited (a zombie counts as gone).
bool ProcessAlive(pid_t pid);

// Stops processes that need not be our children (say, a launcher's servers of an earlier run):
// SIGTERM to each, SIGKILL to those still alive after `grace`, then waits (bounded) until they
// are gone, reaping the ones that are our children. Returns the pids that needed SIGKILL.
std::vector<pid_t> TerminateAll(const std::vector<pid_t>& pids, absl::Duration grace);

// The directory of the running executable (from /proc/self/exe).
absl::StatusOr<std::string> SelfExeDir();

// Any kvtier server binary that takes --ready-file and writes {"grpc_port":..} there (plus
// "metrics_port" for kvtier-store) once serving: kvtier-store, kvtier-prefill, kvtier-decode,
// kvtier-router.
class ServerProcess {
 public:
  // Starts `binary` (a path, or a name in this build's bin directory) with `args` plus
  // --ready-file=`dir`/`name`.ready.json, its output appended to `dir`/`name`.log, and waits
  // (bounded) until it serves. Destruction kills it with SIGKILL.
  static absl::StatusOr<ServerProcess> Start(const std::string& binary,
                                             const std::vector<std::string>& args,
                                             const std::string& dir, const std::string& name,
                                             const std::map<std::string, std::string>& env = {},
                                             absl::Duration timeout = absl::Seconds(30));
  // Start without the wait, to start several servers at once: `options.argv` (argv[0] a path,
  // or a name in this build's bin directory) plus --ready-file, its output appended to the log
  // (the output fields of `options` are replaced). AwaitReady waits.
  static absl::StatusOr<ServerProcess> Spawn(SpawnOptions options, const std::string& dir,
                                             const std::string& name);
  // Waits up to `timeout` for the ready file. FailedPrecondition if the server exits first,
  // DeadlineExceeded on timeout (both with the tail of its log).
  absl::Status AwaitReady(absl::Duration timeout);

  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }  // 0 when not announced
  ChildProcess& process() { return process_; }
  const std::string& log_path() const { return log_path_; }
  std::string log() const;  // the whole log, for failure messages

 private:
  ChildProcess process_;
  std::string what_;  // "name (binary)", for messages
  std::string ready_path_;
  std::string log_path_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
};

struct StoreProcessOptions {
  // Directory of kvtier-store; empty: this build's bin directory.
  std::string bin_dir;
  // The log is `dir`/`name`.log, the ready file `dir`/`name`.ready.json.
  std::string name = "store";
  int grpc_port = 0;    // 0: any free port
  bool metrics = true;  // false: no metrics endpoint (metrics_port() is 0)
  std::string pool_bytes = "64MiB";
  std::string slot_bytes = "2MiB";
  std::string spill_dir;  // empty: spill off
  std::string spill_capacity = "256MiB";
  int64_t reservation_timeout_ms = 30000;
  int64_t lease_timeout_ms = 30000;
  // How the store secures its gRPC endpoint (the flags of docs/security.md): plain text unless
  // the caller gives TLS flags (--tls-cert-file=..., --service-token-file=..., ...).
  std::vector<std::string> security_args = {"--plaintext"};
  std::vector<std::string> extra_args;     // more flags, e.g. --log-level=debug
  std::map<std::string, std::string> env;  // e.g. UCX_TLS
  absl::Duration start_timeout = absl::Seconds(20);
  // Destruction: SIGTERM, then SIGKILL after this long; zero: SIGKILL at once.
  absl::Duration stop_grace = absl::ZeroDuration();
  // A session of its own and no parent-death signal (SpawnOptions::new_session), so that it can
  // outlive this process once released (a launcher's store).
  bool detached = false;
};

// kvtier-store on 127.0.0.1 with free ports, its files in a directory of the caller's.
class StoreProcess {
 public:
  // Starts it and waits (bounded by options.start_timeout) until it serves.
  static absl::StatusOr<StoreProcess> Start(const std::string& dir,
                                            const StoreProcessOptions& options);
  // Start without the wait, to start several stores at once; AwaitReady waits.
  static absl::StatusOr<StoreProcess> Spawn(const std::string& dir,
                                            const StoreProcessOptions& options);
  absl::Status AwaitReady() { return server_.AwaitReady(start_timeout_); }

  std::string address() const { return server_.address(); }
  int grpc_port() const { return server_.grpc_port(); }
  int metrics_port() const { return server_.metrics_port(); }
  ChildProcess& process() { return server_.process(); }
  const std::string& log_path() const { return server_.log_path(); }
  std::string log() const { return server_.log(); }
  ServerProcess& server() { return server_; }

 private:
  ServerProcess server_;
  absl::Duration start_timeout_;
};

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close).
absl::StatusOr<int> FreeTcpPort();

// Polls `done` every 20 ms until it returns true or `timeout` passes.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout);

// The last `max_bytes` of a text file (for failure messages; npos: all of it), or "" if
// unreadable.
std::string FileTail(const std::string& path, size_t max_bytes = 4000);

}  // namespace kvtier

#endif  // KVTIER_COMMON_PROCESS_H_
