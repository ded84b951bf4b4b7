// kvtier-router: the OpenAI-compatible HTTP front end of the serving workers. Flags override
// the YAML config (--config); see docs/serving.md, "Router".
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "router/router.h"
#include "router/router_options.h"

namespace {

absl::Status WriteReadyFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "{\"http_port\":" << port << ",\"grpc_port\":" << port << ",\"pid\":" << getpid() << "}\n";
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  kvtier::LogToStderr();
  // Before any thread starts: only sigwait below receives SIGTERM/SIGINT. A client that goes
  // away must not kill the process with SIGPIPE.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  CLI::App app{"kvtier-router: OpenAI-compatible HTTP front end of the kvtier workers"};
  kvtier::router::RouterFlags flags;
  flags.Register(app);
  CLI11_PARSE(app, argc, argv);
  absl::StatusOr<kvtier::router::RouterOptions> options = flags.Resolve();
  if (!options.ok()) {
    std::fprintf(stderr, "kvtier-router: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  kvtier::SetLogLevel(options->log_level);

  auto router = kvtier::router::Router::Create(*options);
  if (!router.ok()) {
    spdlog::error("{}", router.status().ToString());
    return 1;
  }
  absl::StatusOr<int> port = (*router)->Start();
  if (!port.ok()) {
    spdlog::error("{}", port.status().ToString());
    return 1;
  }
  if (!options->ready_file.empty()) {
    if (absl::Status st = WriteReadyFile(options->ready_file, *port); !st.ok()) {
      spdlog::error("{}", st.ToString());
      return 1;
    }
  }
  spdlog::info("kvtier-router serving '{}' on port {}: {} prefill, {} decode worker(s)",
               options->model_name, *port, options->prefill_workers.size(),
               options->decode_workers.size());
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: shutting down", sig);
  (*router)->Stop();
  spdlog::info("kvtier-router stopped");
  return 0;
}
