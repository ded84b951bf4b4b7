// kvtier-router's HTTP layer: the OpenAI-compatible server (cpp-httplib) in front of the prefill
// and decode workers. docs/serving.md, "Router", describes the behaviour.
//
// Per request (one httplib pool thread each): parse and validate (router/openai_api.h),
// tokenize (chat template → text → ids), check the limits against the decode workers' context,
// then run the prompts through Generation (router/generation.h) and answer with one JSON body or
// as Server-Sent Events. Also /v1/models, /health, /metrics, OpenAI error bodies for every error
// and the graceful stop.
//
// Ownership: owns the HTTP server, the tokenizer, the metrics registry, the WorkerPool (with its
// gRPC clients, router/grpc_worker_client.h) and the Generation.
// Thread-safety: Create, Start and Stop from one owner thread; handlers run on the server's
// threads.
#ifndef KVTIER_ROUTER_ROUTER_H_
#define KVTIER_ROUTER_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/metrics.h"
#include "router/generation.h"
#include "router/openai_api.h"
#include "router/router_options.h"
#include "router/worker_pool.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace kvtier::router {

class Router {
 public:
  // Loads the tokenizer and creates the worker clients (no connection is made yet).
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterOptions options);
  ~Router();  // Stop()s.
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Asks every worker for its info once, binds the HTTP port and starts serving and the
  // workers' refresh. Returns the bound port.
  absl::StatusOr<int> Start();
  // Graceful stop: in-flight generations are cancelled (streams end with an error event,
  // others with 503), the listener closes, handlers finish. Idempotent.
  void Stop();

  int port() const { return port_; }

 private:
  explicit Router(RouterOptions options);

  void RegisterRoutes();
  void HandleGenerate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  void HandleHealth(httplib::Response& res);
  static void SendError(const ApiError& error, httplib::Response& res);

  // Tokenizes the request's prompts (one per completion prompt; one for chat).
  std::optional<ApiError> Tokenize(const ApiRequest& request,
                                   std::vector<std::vector<TokenId>>* prompts) const;

  const RouterOptions options_;
  std::optional<text::Tokenizer> tokenizer_;
  std::optional<text::ChatFormat> chat_format_;
  const int64_t created_;  // Unix seconds, for "created" fields
  const uint64_t id_salt_;
  std::atomic<uint64_t> next_id_{0};

  MetricsRegistry metrics_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<Generation> generation_;

  std::unique_ptr<httplib::Server> server_;
  std::thread listen_thread_;
  int port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_ROUTER_H_
