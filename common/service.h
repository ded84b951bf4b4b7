// The life of every kvtier server process (kvtier-store, kvtier-prefill, kvtier-decode,
// kvtier-router), written once: logs to stderr, SIGTERM/SIGINT as the stop request, options from
// the command line and --config (an option table, common/options.h), start, ready file, wait,
// graceful stop, exit status 0 (stopped), 1 (failed to start) or 2 (bad options). Also the gRPC
// server start and the ready file. docs/service-kit.md.
//
//   absl::StatusOr<kvtier::StopFunction> Start(const StoreConfig& config) { ... }
//   int main(int argc, char** argv) {
//     return kvtier::RunServer<StoreFlags>("kvtier-store", "KV-cache block store", argc, argv,
//                                          Start);
//   }
//
// Thread-safety: RunServer is called from main() before any other thread starts (it blocks the
// stop signals for every thread to come). The other functions are thread-safe.
#ifndef KVTIER_COMMON_SERVICE_H_
#define KVTIER_COMMON_SERVICE_H_

#include <functional>
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
#include "kvtier/tls_options.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace kvtier {

// Stops what a server's start function started: gracefully, in bounded time. It owns what it
// stops (RunServer destroys it, and so them, after calling it).
using StopFunction = std::function<void()>;

namespace service_internal {
// Sends logs to stderr, blocks SIGTERM and SIGINT (only Serve's sigwait receives them) and
// ignores SIGPIPE (a peer that goes away must not kill the process).
void Prepare();
// Prints "`name`: `status`" to stderr; returns 2.
int BadOptions(absl::string_view name, const absl::Status& status);
// start(), then waits for SIGTERM/SIGINT and stops; the exit status.
int Serve(absl::string_view name, const std::function<absl::StatusOr<StopFunction>()>& start);
}  // namespace service_internal

// main() of a server: parses the command line with a `Flags` (an OptionFlags of the server's
// options, constructed from `flags_args`; --help prints every flag and returns 0), resolves the
// options (bad flags or options: the error on stderr, returns 2) and sets the log level from
// their log_level; then `start(options)` brings the server up and writes its ready file (an
// error is logged, returns 1), and once SIGTERM or SIGINT arrives the stop function it returned
// stops it (returns 0).
template <typename Flags, typename Start, typename... FlagsArgs>
int RunServer(absl::string_view name, absl::string_view about, int argc, char** argv,
              const Start& start, FlagsArgs&&... flags_args) {
  service_internal::Prepare();
  Flags flags(std::forward<FlagsArgs>(flags_args)...);
  CLI::App app{absl::StrCat(name, ": ", about)};
  flags.Register(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  auto options = flags.Resolve();
  if (!options.ok()) return service_internal::BadOptions(name, options.status());
  SetLogLevel(options->log_level);
  return service_internal::Serve(name, [&] { return start(*options); });
}

// Writes `contents` to `path` atomically (a temporary file renamed over it): a reader sees the
// old file or the whole new one.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// Writes the JSON object {"<key>":<port>,...,"pid":<this pid>} to `path`
// (WriteFileAtomically). Nothing when `path` is empty.
absl::Status WriteReadyFile(const std::string& path,
                            const std::vector<std::pair<std::string, int>>& ports);

// Starts a synchronous gRPC server `name` (for the log, e.g. "kvtier-store") on `listen`
// (host:port, port 0: any free port) with `services`, secured as `tls` says (common/tls.h:
// TLS and the service token, or plain text with a WARNING), and reports the port bound.
// Messages up to 16 MiB are accepted.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    absl::string_view name, const std::string& listen, const TlsOptions& tls,
    const std::vector<grpc::Service*>& services, int* port);

}  // namespace kvtier

#endif  // KVTIER_COMMON_SERVICE_H_
