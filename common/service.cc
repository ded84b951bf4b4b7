#include "common/service.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

namespace kvtier {

Service::Service(std::string name) : name_(std::move(name)) {
  LogToStderr();
  sigemptyset(&stop_signals_);
  sigaddset(&stop_signals_, SIGTERM);
  sigaddset(&stop_signals_, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals_, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

void Service::ExitBadOptions(const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", name_.c_str(), std::string(status.message()).c_str());
  std::exit(2);
}

int Service::Fail(const absl::Status& status) {
  spdlog::error("{}: {}", name_, status.ToString());
  return 1;
}

void Service::WaitForStop() {
  int sig = 0;
  sigwait(&stop_signals_, &sig);
  spdlog::info("signal {}: shutting down", sig);
}

int Service::Stopped() {
  spdlog::info("{} stopped", name_);
  return 0;
}

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
    const std::string& listen, const std::vector<grpc::Service*>& services, int* port) {
  grpc::ServerBuilder builder;
  *port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), port);
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
