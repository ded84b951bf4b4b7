// Test support: child processes (posix_spawn, never fork: UCX is not fork-safe), a
// kvtier-store started on loopback with a private directory, and any other server binary
// that announces itself with a ready file.
//
// Ownership: each object owns its child and kills it (SIGKILL) on destruction.
// Thread-safety: one thread per object.
#ifndef KVTIER_TESTS_PROCESS_H_
#define KVTIER_TESTS_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvtier::testing {

class ChildProcess {
 public:
  // Starts `argv[0]` with `argv`, the current environment plus `env`, stdout and stderr
  // appended to `log_path` (empty: inherited).
  static absl::StatusOr<ChildProcess> Spawn(const std::vector<std::string>& argv,
                                            const std::map<std::string, std::string>& env,
                                            const std::string& log_path);
  ChildProcess() = default;
  ChildProcess(ChildProcess&& o) noexcept : pid_(o.pid_) { o.pid_ = -1; }
  ChildProcess& operator=(ChildProcess&& o) noexcept;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // Sends `sig` and waits up to `timeout` for the exit; returns the wait status, or nullopt
  // if the child is still running (then it is left alone).
  std::optional<int> Signal(int sig, absl::Duration timeout);
  // Waits up to `timeout` for the child to exit by itself.
  std::optional<int> Wait(absl::Duration timeout);

 private:
  pid_t pid_ = -1;
};

struct StoreProcessOptions {
  int grpc_port = 0;  // 0: any free port
  std::string pool_bytes = "64MiB";
  std::string slot_bytes = "2MiB";
  std::string spill_dir;  // empty: spill off
  std::string spill_capacity = "256MiB";
  int64_t reservation_timeout_ms = 30000;
  int64_t lease_timeout_ms = 30000;
  std::map<std::string, std::string> env;  // e.g. UCX_TLS
};

class StoreProcess {
 public:
  // Starts kvtier-store (from KVTIER_BIN_DIR) on 127.0.0.1 with free ports in `dir` and waits
  // (bounded) until it has written its ready file.
  static absl::StatusOr<StoreProcess> Start(const std::string& dir,
                                            const StoreProcessOptions& options);
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  ChildProcess& process() { return process_; }
  std::string log() const;  // the store's log, for failure messages

 private:
  ChildProcess process_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string log_path_;
};

// Any kvtier server binary that takes --ready-file and writes {"grpc_port":..} there once
// serving (kvtier-prefill, kvtier-decode, ...), started with `args` and waited for (bounded).
class ServerProcess {
 public:
  // Starts KVTIER_BIN_DIR/`binary` with `args` plus --ready-file=`dir`/`name`.ready.json, its
  // output appended to `dir`/`name`.log.
  static absl::StatusOr<ServerProcess> Start(const std::string& binary,
                                             const std::vector<std::string>& args,
                                             const std::string& dir, const std::string& name,
                                             const std::map<std::string, std::string>& env = {},
                                             absl::Duration timeout = absl::Seconds(30));
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  ChildProcess& process() { return process_; }
  std::string log() const;

 private:
  ChildProcess process_;
  int grpc_port_ = 0;
  std::string log_path_;
};

// A fresh empty directory under the test temp dir.
std::string MakeTempDir(const std::string& name);

// Polls `done` every 20 ms until it returns true or `timeout` passes.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout);

}  // namespace kvtier::testing

#endif  // KVTIER_TESTS_PROCESS_H_
