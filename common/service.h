// What every kvtier server's main() does around its own work (kvtier-store, kvtier-prefill,
// kvtier-decode, kvtier-router): log to stderr, stop on SIGTERM/SIGINT, read its options from
// the command line and --config (common/options.h), start a gRPC server, announce itself in a
// ready file, and exit with 0 (stopped), 1 (failed) or 2 (bad options). docs/service-kit.md.
//
// Thread-safety: a Service is created first thing in main(), before any other thread starts
// (the blocked signal mask is inherited by every thread), and used from main()'s thread. The
// free functions are thread-safe.
#ifndef KVTIER_COMMON_SERVICE_H_
#define KVTIER_COMMON_SERVICE_H_

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/options.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace kvtier {

class Service {
 public:
  // Sends logs to stderr, blocks SIGTERM and SIGINT (only WaitForStop receives them) and
  // ignores SIGPIPE (a peer that goes away must not kill the process). `name`: "kvtier-store".
  explicit Service(std::string name);
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Parses the command line with `flags` (--help prints every flag and exits 0), resolves the
  // options and sets the log level from their log_level. Bad flags or options: prints the error
  // and exits with status 2.
  template <typename T>
  T Configure(OptionFlags<T>& flags, absl::string_view about, int argc, char** argv) {
    CLI::App app{absl::StrCat(name_, ": ", about)};
    flags.Register(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      std::exit(app.exit(e));
    }
    absl::StatusOr<T> options = flags.Resolve();
    if (!options.ok()) ExitBadOptions(options.status());
    SetLogLevel(options->log_level);
    return *std::move(options);
  }

  // Logs `status` as the reason the service cannot run; returns 1 for main() to return.
  int Fail(const absl::Status& status);
  // Blocks until SIGTERM or SIGINT arrives and logs it.
  void WaitForStop();
  // Logs that the service stopped; returns 0 for main() to return.
  int Stopped();

 private:
  [[noreturn]] void ExitBadOptions(const absl::Status& status);

  std::string name_;
  sigset_t stop_signals_;
};

// Writes `contents` to `path` atomically (a temporary file renamed over it): a reader sees the
// old file or the whole new one.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// Writes the JSON object {"<key>":<port>,...,"pid":<this pid>} to `path`
// (WriteFileAtomically). Nothing when `path` is empty.
absl::Status WriteReadyFile(const std::string& path,
                            const std::vector<std::pair<std::string, int>>& ports);

// Starts a synchronous gRPC server on `listen` (host:port, port 0: any free port) with
// `services`, and reports the port bound. Messages up to 16 MiB are accepted.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services, int* port);

}  // namespace kvtier

#endif  // KVTIER_COMMON_SERVICE_H_
