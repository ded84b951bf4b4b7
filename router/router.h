// kvtier-router's HTTP layer: the OpenAI-compatible server (cpp-httplib) in front of the prefill
// and decode workers. docs/serving.md, "Router", describes the behaviour.
//
// Per request (one httplib pool thread each): read the body (at most max_body_bytes, whatever its
// framing), parse and validate (router/openai_api.h), check the limits (choices, prompt bytes)
// before any work, tokenize with the prompt token limit (chat: template markers as special
// tokens, content as text), then run the prompts through Generation (router/generation.h) and
// answer with one JSON body or as Server-Sent Events. Also /v1/models, /v1/models/{id},
// /health, /metrics, OpenAI error bodies for every error (429 when the connection queue is full,
// router/http_task_queue.h) and the graceful stop. docs/serving.md, "Limits", lists the bounds;
// the server (router/http_server.h) bounds the bytes any one request may read.
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
#include "membership/membership.h"
#include "router/api_keys.h"
#include "router/generation.h"
#include "router/openai_api.h"
#include "router/router_options.h"
#include "router/worker_client.h"
#include "router/worker_pool.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace httplib {
class Server;
class ContentReader;
struct Request;
struct Response;
}  // namespace httplib

namespace kvtier::router {

class Router {
 public:
  // Loads the tokenizer and creates the worker clients (no connection is made yet).
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterOptions options);
  // As Create, over the given worker clients instead of gRPC ones (the unit tests' fakes,
  // router/fake_worker_client.h); options.decode_workers and prefill_workers are not used.
  // `make_client` makes the clients of workers that membership names (may be null without).
  static absl::StatusOr<std::unique_ptr<Router>> Create(
      RouterOptions options, std::vector<std::unique_ptr<WorkerClient>> decode_workers,
      std::vector<std::unique_ptr<WorkerClient>> prefill_workers,
      WorkerPool::ClientFactory make_client = nullptr);
  ~Router();  // Stop()s.
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // With membership, starts the workers' watches (waiting up to 5 s for etcd's first answer);
  // asks every worker for its info once, binds the HTTP port and starts serving and the
  // workers' refresh. Returns the bound port.
  absl::StatusOr<int> Start();
  // Graceful stop: in-flight generations are cancelled (streams end with an error event,
  // others with 503), the listener closes, handlers finish. Idempotent.
  void Stop();

  int port() const { return port_; }

 private:
  explicit Router(RouterOptions options);

  void RegisterRoutes();
  void HandleGenerate(Endpoint endpoint, const httplib::Request& req,
                      const httplib::ContentReader& reader, httplib::Response& res);
  void HandleModel(const std::string& id, httplib::Response& res);
  void HandleHealth(httplib::Response& res);
  // The one info line per finished generation (docs/observability.md, "Request tracing").
  static void LogFinished(const GenerationRequest& request, const GenerationResult& result);
  static void SendError(const ApiError& error, httplib::Response& res);
  // With API keys: a request to any path but /health without a known key gets 401 (returns
  // false).
  bool Authorized(const httplib::Request& req, httplib::Response& res) const;

  // Reads the body into *body: at most max_body_bytes, with Content-Length, chunked or neither
  // (httplib checks only Content-Length). Over the limit: 413, nothing kept (a bounded excess is
  // read and dropped; past it `res` gets "Connection: close").
  std::optional<ApiError> ReadBody(const httplib::Request& req,
                                   const httplib::ContentReader& reader, std::string* body,
                                   httplib::Response& res) const;
  // Tokenizes the request's prompts (one per completion prompt; one for chat), each at most
  // `max_tokens` tokens: a text prompt's bytes are checked first (max_prompt_bytes), and
  // tokenizing stops at the limit.
  std::optional<ApiError> Tokenize(const ApiRequest& request, int64_t max_tokens,
                                   std::vector<std::vector<TokenId>>* prompts) const;

  const RouterOptions options_;
  std::optional<text::Tokenizer> tokenizer_;
  std::optional<text::ChatFormat> chat_format_;
  const int64_t created_;  // Unix seconds of the start: the served model's "created"
  const uint64_t id_salt_;
  std::atomic<uint64_t> next_id_{0};
  std::optional<ApiKeys> api_keys_;  // none: any caller is tenant "" (plain text only)

  MetricsRegistry metrics_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<Generation> generation_;
  // With membership: the decode and prefill workers' watches (by WorkerRole), feeding pool_.
  std::unique_ptr<membership::MemberWatcher> watches_[2];

  std::unique_ptr<httplib::Server> server_;
  std::thread listen_thread_;
  int port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_ROUTER_H_
