#include "common/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace kvtier {
namespace {

constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr char kPlainContentType[] = "text/plain; charset=utf-8";

// Limits that keep a misbehaving client from stalling or bloating the endpoint.
constexpr time_t kReadTimeoutSec = 5;
constexpr time_t kWriteTimeoutSec = 5;
// Idle keep-alive connections hold a worker and delay Stop() by up to this long; scrapers come
// back every 10+ s anyway, so keeping connections open longer buys nothing.
constexpr time_t kKeepAliveTimeoutSec = 1;
constexpr size_t kKeepAliveMaxCount = 100;
constexpr size_t kPayloadMaxLength = 64 * 1024;
// Scrapes are rare and cheap; a small pool avoids one idle thread per core.
constexpr size_t kWorkerThreads = 4;
constexpr auto kStartTimeout = std::chrono::seconds(5);

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, const MetricsRegistry* registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("metrics http server: registry is null");
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics http server: port ", port, " is out of range [0, 65535]"));
  }

  auto self = absl::WrapUnique(new MetricsHttpServer());
  self->server_ = std::make_unique<httplib::Server>();
  httplib::Server& server = *self->server_;
  server.set_read_timeout(kReadTimeoutSec, 0);
  server.set_write_timeout(kWriteTimeoutSec, 0);
  server.set_keep_alive_timeout(kKeepAliveTimeoutSec);
  server.set_keep_alive_max_count(kKeepAliveMaxCount);
  server.set_payload_max_length(kPayloadMaxLength);
  // httplib's default sets SO_REUSEPORT, which would let a second process bind the same port
  // and silently take half of the scrapes; SO_REUSEADDR alone still allows quick restarts.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.new_task_queue = [] { return new httplib::ThreadPool(kWorkerThreads); };

  server.Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry->RenderText(), kMetricsContentType);
  });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", kPlainContentType);
  });
  // Unrouted paths get httplib's 404; give errors a short plain-text body.
  server.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {
      res.set_content(
          res.status == 404 ? std::string("404 not found\n") : absl::StrCat(res.status, " error\n"),
          kPlainContentType);
    }
  });

  int bound_port = port;
  if (port == 0) {
    bound_port = server.bind_to_any_port(host);
    if (bound_port <= 0) {
      return absl::UnavailableError(
          absl::StrCat("metrics http server: cannot bind ", host, " on any port"));
    }
  } else if (!server.bind_to_port(host, port)) {
    return absl::UnavailableError(absl::StrCat("metrics http server: cannot bind ", host, ":", port,
                                               " (address in use or not local?)"));
  }
  self->port_ = bound_port;

  // Set by the listener thread when listen_after_bind() returns, so that a failed start can
  // tell "not started yet" from "already gone".
  auto exited = std::make_shared<std::atomic<bool>>(false);
  try {
    self->thread_ = std::thread([srv = self->server_.get(), exited] {
      srv->listen_after_bind();
      exited->store(true);
    });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("metrics http server: cannot start listener thread: ", e.what()));
  }

  const auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  while (!server.is_running() && !exited->load()) {
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!server.is_running()) {
    // httplib's stop() only acts on a running server: keep asking until the listener has
    // either come up (and is stopped) or returned on its own.
    while (!exited->load()) {
      server.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    self->thread_.join();
    return absl::UnavailableError(absl::StrCat("metrics http server on ", host, ":", bound_port,
                                               " did not start listening within 5 s"));
  }
  spdlog::info("metrics endpoint listening on {}:{}", host, bound_port);
  return self;
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::Stop() {
  if (server_ != nullptr) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace kvtier
