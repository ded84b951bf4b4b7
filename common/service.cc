#include "common/service.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "spdlog/spdlog.h"

namespace kvtier {

namespace service_internal {
namespace {

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

void Prepare() {
  LogToStderr();
  const sigset_t set = StopSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int BadOptions(absl::string_view name, const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", std::string(name).c_str(),
               std::string(status.message()).c_str());
  return 2;
}

int Serve(absl::string_view name, const std::function<absl::StatusOr<StopFunction>()>& start) {
  absl::StatusOr<StopFunction> stop = start();
  if (!stop.ok()) {
    spdlog::error("{}: {}", std::string(name), stop.status().ToString());
    return 1;
  }
  const sigset_t set = StopSignals();
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: shutting down", sig);
  (*stop)();
  *stop = nullptr;  // destroys what it stopped
  spdlog::info("{} stopped", std::string(name));
  return 0;
}

}  // namespace service_internal

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << contents;
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status WriteReadyFile(const std::string& path,
                            const std::vector<std::pair<std::string, int>>& ports) {
  if (path.empty()) return absl::OkStatus();
  std::vector<std::pair<std::string, int>> fields = ports;
  fields.emplace_back("pid", getpid());
  const std::string json =
      absl::StrCat("{",
                   absl::StrJoin(fields, ",",
                                 [](std::string* out, const std::pair<std::string, int>& f) {
                                   absl::StrAppend(out, "\"", f.first, "\":", f.second);
                                 }),
                   "}\n");
  return WriteFileAtomically(path, json);
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    absl::string_view name, const std::string& listen, const TlsOptions& tls,
    const std::vector<grpc::Service*>& services, int* port) {
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds,
                          MakeServerCredentials(tls, absl::StrCat(name, " gRPC ", listen)));
  grpc::ServerBuilder builder;
  *port = 0;
  builder.AddListeningPort(listen, creds, port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  // A prompt of 128k u32 tokens is 512 KiB on the wire (plus varint overhead).
  builder.SetMaxReceiveMessageSize(16 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen));
  }
  return server;
}

}  // namespace kvtier
