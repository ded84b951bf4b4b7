#include "router/router.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/host_port.h"
#include "common/log_limiter.h"
#include "common/logging.h"
#include "common/request_id.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "router/grpc_worker_client.h"
#include "router/http_server.h"
#include "router/http_task_queue.h"

namespace kvtier::router {
namespace {

const char* EndpointLabel(const std::string& path) {
  if (path == "/v1/completions") return "completions";
  if (path == "/v1/chat/completions") return "chat_completions";
  if (path == "/v1/models" || absl::StartsWith(path, "/v1/models/")) return "models";
  if (path == "/health") return "health";
  if (path == "/metrics") return "metrics";
  return "other";
}

// How long Start waits for etcd's first answer about the workers.
constexpr absl::Duration kFirstMembersWait = absl::Seconds(5);

// GET /v1/models/{id}; ids may hold '/' ("meta-llama/Meta-Llama-3-8B-Instruct").
constexpr char kModelPattern[] = R"(/v1/models/(.+))";

std::vector<std::unique_ptr<WorkerClient>> GrpcClients(
    WorkerRole role, const std::vector<std::string>& addresses,
    const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  std::vector<std::unique_ptr<WorkerClient>> clients;
  for (const std::string& a : addresses)
    clients.push_back(std::make_unique<GrpcWorkerClient>(role, a, creds));
  return clients;
}

}  // namespace

Router::Router(RouterOptions options)
    : options_(std::move(options)),
      created_(absl::ToUnixSeconds(absl::Now())),
      id_salt_(std::random_device{}() * uint64_t{0x9E3779B97F4A7C15} ^
               static_cast<uint64_t>(absl::GetCurrentTimeNanos())) {}

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterOptions options) {
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> creds,
                          MakeChannelCredentials(options.tls));
  std::vector<std::unique_ptr<WorkerClient>> decode =
      GrpcClients(WorkerRole::kDecode, options.decode_workers, creds);
  std::vector<std::unique_ptr<WorkerClient>> prefill =
      GrpcClients(WorkerRole::kPrefill, options.prefill_workers, creds);
  return Create(std::move(options), std::move(decode), std::move(prefill),
                [creds](WorkerRole role, const std::string& address) {
                  return std::make_unique<GrpcWorkerClient>(role, address, creds);
                });
}

absl::StatusOr<std::unique_ptr<Router>> Router::Create(
    RouterOptions options, std::vector<std::unique_ptr<WorkerClient>> decode_workers,
    std::vector<std::unique_ptr<WorkerClient>> prefill_workers,
    WorkerPool::ClientFactory make_client) {
  std::unique_ptr<Router> r(new Router(std::move(options)));
  const RouterOptions& o = r->options_;
  if (!o.api_keys_file.empty()) {
    KVTIER_ASSIGN_OR_RETURN(ApiKeys keys, ApiKeys::Load(o.api_keys_file));
    r->api_keys_.emplace(std::move(keys));
  }
  absl::StatusOr<text::Tokenizer> tok = text::Tokenizer::Load(o.model_dir);
  if (!tok.ok()) return tok.status();
  r->tokenizer_.emplace(std::move(*tok));
  if (o.chat_format == "auto") {
    absl::StatusOr<text::ChatFormat> f = text::DetectChatFormat(r->tokenizer_->chat_template());
    if (f.ok()) {
      r->chat_format_ = *f;
    } else {
      spdlog::warn(
          "no usable chat template in {}/tokenizer_config.json ({}): "
          "/v1/chat/completions is off; pass --chat-format",
          o.model_dir, std::string(f.status().message()));
    }
  } else {
    absl::StatusOr<text::ChatFormat> f = text::ParseChatFormat(o.chat_format);
    if (!f.ok()) return f.status();
    r->chat_format_ = *f;
  }
  // The chat end-of-turn and eos ids: sent to the workers, never shown as text.
  std::vector<TokenId> stop_token_ids = r->tokenizer_->eos_ids();
  if (r->chat_format_.has_value()) {
    absl::StatusOr<std::vector<TokenId>> ids =
        text::ChatStopTokenIds(*r->chat_format_, *r->tokenizer_);
    if (!ids.ok()) return ids.status();
    stop_token_ids = *std::move(ids);
  }
  r->pool_ = std::make_unique<WorkerPool>(o, std::move(decode_workers), std::move(prefill_workers),
                                          &r->metrics_, std::move(make_client));
  r->generation_ = std::make_unique<Generation>(o, &*r->tokenizer_, std::move(stop_token_ids),
                                                r->pool_.get(), &r->metrics_);
  return r;
}

Router::~Router() { Stop(); }

absl::StatusOr<int> Router::Start() {
  KVTIER_ASSIGN_OR_RETURN(SslCtxPtr https,
                          MakeHttpsContext(options_.tls, "kvtier-router HTTP " + options_.listen));
  if (api_keys_.has_value()) {
    spdlog::info("kvtier-router: {} API key(s); every path but /health requires one",
                 api_keys_->size());
  } else {
    spdlog::warn(
        "kvtier-router: no api_keys_file: the HTTP API serves ANY caller (as tenant \"\")");
  }
  if (options_.membership.enabled()) {
    // Workers of this model join and leave the pool as they register and go
    // (docs/membership.md); the first answer of etcd is awaited so that the first requests
    // find them.
    for (WorkerRole role : {WorkerRole::kDecode, WorkerRole::kPrefill}) {
      KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<membership::EtcdClient> etcd,
                              membership::MakeEtcdClient(options_.membership));
      auto& watch = watches_[static_cast<int>(role)];
      watch = membership::MemberWatcher::Start(
          std::move(etcd), options_.membership.prefix, RoleName(role),
          [this, role](const std::vector<membership::Member>& members) {
            std::vector<std::string> addresses;
            for (const membership::Member& m : members) {
              if (m.model == options_.model_name) {
                addresses.push_back(m.address);
              } else {
                KVTIER_LOG_LIMITED(warn, "{} worker {} serves model '{}', not '{}': ignored",
                                   RoleName(role), m.address, m.model, options_.model_name);
              }
            }
            pool_->SetWorkers(role, addresses);
          },
          &metrics_);
      const absl::Time deadline = absl::Now() + kFirstMembersWait;
      while (!watch->connected() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
      if (!watch->connected()) {
        spdlog::warn("etcd does not answer yet: {} workers join once it does", RoleName(role));
      }
    }
  }
  pool_->Refresh();
  server_ = std::make_unique<HttpServer>(static_cast<uint64_t>(options_.max_body_bytes),
                                         std::move(https));
  server_->new_task_queue = [threads = options_.http_threads,
                             queued = options_.max_queued_requests] {
    return new BoundedTaskQueue(threads, queued);
  };
  // Bodies are read by ReadBody, which also bounds chunked ones; this covers any other path.
  server_->set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  RegisterRoutes();
  KVTIER_ASSIGN_OR_RETURN(const HostPort hp, ParseHostPort(options_.listen));
  int port = hp.port;
  if (hp.port == 0) {
    port = server_->bind_to_any_port(hp.host);
    if (port < 0) return absl::UnavailableError(absl::StrCat("cannot bind ", options_.listen));
  } else if (!server_->bind_to_port(hp.host, hp.port)) {
    return absl::UnavailableError(absl::StrCat("cannot bind ", options_.listen));
  }
  port_ = port;
  listen_thread_ = std::thread([this] { server_->listen_after_bind(); });
  pool_->Start();
  started_ = true;
  return port_;
}

void Router::Stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  for (auto& w : watches_) w.reset();  // their callbacks update the pool
  pool_->Stop();    // cancels the worker calls in flight: their requests end with errors
  server_->stop();  // closes the listener; waits for the handler threads
  if (listen_thread_.joinable()) listen_thread_.join();
}

std::optional<ApiError> Router::Tokenize(const ApiRequest& request, int64_t max_tokens,
                                         std::vector<std::vector<TokenId>>* prompts) const {
  const bool chat = request.endpoint == Endpoint::kChat;
  const char* const param = chat ? "messages" : "prompt";
  // Text longer than this cannot be max_tokens tokens: refused before any tokenizing.
  const int64_t max_bytes = options_.max_prompt_bytes > 0
                                ? options_.max_prompt_bytes
                                : max_tokens * static_cast<int64_t>(tokenizer_->max_token_bytes());
  auto too_long = [&](absl::string_view what) {
    return InvalidRequest(
        absl::StrCat("the prompt is ", what, ", more than the limit of ", max_tokens, " tokens"),
        param);
  };
  auto encoded = [&](absl::StatusOr<std::vector<TokenId>> ids) -> std::optional<ApiError> {
    if (ids.status().code() == absl::StatusCode::kOutOfRange) {
      return too_long(absl::StrCat("more than ", max_tokens, " tokens"));
    }
    if (!ids.ok()) return ServerError(500, std::string(ids.status().message()));
    if (ids->empty()) return InvalidRequest(absl::StrCat("'", param, "' must not be empty"), param);
    prompts->push_back(*std::move(ids));
    return std::nullopt;
  };
  if (chat) {
    if (!chat_format_.has_value()) {
      return ServerError(500, "the served model has no chat template; use /v1/completions");
    }
    int64_t bytes = 0;
    for (const text::ChatMessage& m : request.messages) bytes += m.content.size();
    if (bytes > max_bytes) return too_long(absl::StrCat(bytes, " bytes of text"));
    // Template markers become special tokens, content is text (docs/serving.md,
    // "Tokenization"): a user cannot forge a turn by typing the template's tokens.
    return encoded(
        text::EncodeChat(*tokenizer_, *chat_format_, request.messages, true, max_tokens));
  }
  for (const Prompt& p : request.prompts) {
    if (p.text.has_value()) {
      if (static_cast<int64_t>(p.text->size()) > max_bytes) {
        return too_long(absl::StrCat(p.text->size(), " bytes of text"));
      }
      // As HF `encode(text)`: special tokens are recognised and the tokenizer's post-processor
      // adds bos where the model expects it (a raw prompt is the client's whole prompt).
      if (std::optional<ApiError> e =
              encoded(tokenizer_->EncodeWithSpecialTokens(*p.text, max_tokens))) {
        return e;
      }
    } else {
      for (TokenId id : p.token_ids) {
        if (id >= tokenizer_->vocab_size()) {
          return InvalidRequest(absl::StrCat("token id ", id, " is outside the vocabulary (size ",
                                             tokenizer_->vocab_size(), ")"),
                                "prompt");
        }
      }
      if (static_cast<int64_t>(p.token_ids.size()) > max_tokens) {
        return too_long(absl::StrCat(p.token_ids.size(), " tokens"));
      }
      prompts->push_back(p.token_ids);
    }
  }
  return std::nullopt;
}

// ---- HTTP ----

void Router::SendError(const ApiError& error, httplib::Response& res) {
  res.status = error.http_status;
  res.set_content(ErrorBody(error), "application/json");
}

bool Router::Authorized(const httplib::Request& req, httplib::Response& res) const {
  if (!api_keys_.has_value() || req.path == "/health" ||
      api_keys_->Tenant(req.get_header_value("Authorization")).has_value()) {
    return true;
  }
  ApiError e =
      InvalidRequest(req.has_header("Authorization")
                         ? "incorrect API key provided"
                         : "no API key provided: send it as 'Authorization: Bearer YOUR_KEY'");
  e.http_status = 401;
  e.code = "invalid_api_key";
  res.set_header("WWW-Authenticate", "Bearer");
  res.set_header("Connection", "close");  // the body, if any, is not read
  SendError(e, res);
  return false;
}

void Router::RegisterRoutes() {
  httplib::Server& s = *server_;
  // Before routing, so that no handler (nor the body reader) runs for an unknown caller.
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    return Authorized(req, res) ? httplib::Server::HandlerResponse::Unhandled
                                : httplib::Server::HandlerResponse::Handled;
  });
  // No exception leaves a handler (docs/serving.md, "HTTP API"): the adapter answers 500.
  auto guarded = [](const httplib::Request& req, httplib::Response& res, const auto& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      KVTIER_LOG_LIMITED(err, "{} {}: {}", req.method, req.path, e.what());
      SendError(ServerError(500, absl::StrCat("internal error: ", e.what())), res);
    }
  };
  auto guard = [guarded](auto fn) {
    return [guarded, fn](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { fn(req, res); });
    };
  };
  // The generation endpoints read their bodies themselves (ReadBody).
  auto generate = [this, guarded](Endpoint endpoint) {
    return [this, guarded, endpoint](const httplib::Request& req, httplib::Response& res,
                                     const httplib::ContentReader& reader) {
      guarded(req, res, [&] { HandleGenerate(endpoint, req, reader, res); });
    };
  };
  s.Post("/v1/completions", generate(Endpoint::kCompletions));
  s.Post("/v1/chat/completions", generate(Endpoint::kChat));
  s.Get("/v1/models", guard([this](const httplib::Request&, httplib::Response& res) {
          res.set_content(ModelsBody(options_.model_name, created_), "application/json");
        }));
  s.Get(kModelPattern, guard([this](const httplib::Request& req, httplib::Response& res) {
          HandleModel(req.matches[1], res);
        }));
  s.Get("/health",
        guard([this](const httplib::Request&, httplib::Response& res) { HandleHealth(res); }));
  s.Get("/metrics", guard([this](const httplib::Request&, httplib::Response& res) {
          res.set_content(metrics_.RenderText(), "text/plain; version=0.0.4");
        }));
  auto not_allowed = [](const httplib::Request& req, httplib::Response& res) {
    ApiError e =
        InvalidRequest(absl::StrCat("method ", req.method, " is not allowed on ", req.path));
    e.http_status = 405;
    SendError(e, res);
  };
  for (const char* p : {"/v1/completions", "/v1/chat/completions"}) {
    s.Get(p, not_allowed);
    s.Put(p, not_allowed);
    s.Delete(p, not_allowed);
  }
  for (const char* p : {"/v1/models", kModelPattern, "/health", "/metrics"}) {
    s.Post(p, not_allowed);
    s.Put(p, not_allowed);
    s.Delete(p, not_allowed);
  }
  // Errors httplib produces itself (404 unknown path, 413 body too large, 400 bad request)
  // get OpenAI bodies too; responses that already have a body are left alone.
  s.set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e;
        e.http_status = res.status;
        if (res.status == 404) {
          e.message = absl::StrCat("no such endpoint: ", req.method, " ", req.path);
          e.code = "not_found";
        } else if (res.status == 413) {
          e.message = "the request body is too large";
        } else if (res.status >= 500) {
          e = ServerError(res.status, "internal error");
        } else {
          e.message = absl::StrCat("bad request (HTTP ", res.status, ")");
        }
        res.set_content(ErrorBody(e), "application/json");
        return httplib::Server::HandlerResponse::Handled;
      }));
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    SendError(ServerError(500, "internal error"), res);
  });
  // Counted before the response is written, so a client that has its answer sees it counted.
  s.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    metrics_
        .AddCounter("kvtier_router_requests_total", "HTTP requests by endpoint and status",
                    {{"endpoint", EndpointLabel(req.path)}, {"status", std::to_string(res.status)}})
        ->Increment();
  });
  s.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    spdlog::debug("{} {} -> {}", req.method, req.path, res.status);
  });
}

void Router::HandleModel(const std::string& id, httplib::Response& res) {
  if (id != options_.model_name) {
    ApiError e =
        InvalidRequest(absl::StrCat("the model '", id, "' does not exist (this server serves '",
                                    options_.model_name, "')"),
                       "model");
    e.http_status = 404;
    e.code = "model_not_found";
    return SendError(e, res);
  }
  res.set_content(ModelBody(options_.model_name, created_), "application/json");
}

std::optional<ApiError> Router::ReadBody(const httplib::Request& req,
                                         const httplib::ContentReader& reader, std::string* body,
                                         httplib::Response& res) const {
  const uint64_t max = static_cast<uint64_t>(options_.max_body_bytes);
  const uint64_t length =
      req.has_header("Content-Length") ? req.get_header_value<uint64_t>("Content-Length") : 0;
  uint64_t seen = 0;
  bool read = false;
  if (length <= max + HttpServer::kDrainBytes) {
    read = reader([&](const char* data, size_t n) {
      seen += n;
      if (seen <= max) {
        body->append(data, n);
        return true;
      }
      std::string().swap(*body);  // past the limit: nothing is kept
      return seen <= max + HttpServer::kDrainBytes;
    });
  }
  // A body not read to its end leaves the connection unusable.
  if (!read) res.set_header("Connection", "close");
  if (length > max || seen > max) {
    ApiError e = InvalidRequest(
        absl::StrCat("the request body is larger than the limit of ", max, " bytes"));
    e.http_status = 413;
    return e;
  }
  if (!read) return InvalidRequest("the request body could not be read");
  return std::nullopt;
}

void Router::LogFinished(const GenerationRequest& request, const GenerationResult& result) {
  // 499: the client closed the connection first (as nginx logs it).
  const int status = result.client_gone         ? 499
                     : result.error.has_value() ? result.error->http_status
                                                : 200;
  spdlog::info("req={} status={} {}", request.request_id, status,
               TimingLogFields(result.usage, result.timing));
}

void Router::HandleHealth(httplib::Response& res) {
  const int up = pool_->DecodeWorkersUp();
  if (up > 0) {
    res.set_content(absl::StrCat("{\"status\":\"ok\",\"decode_workers_up\":", up, "}"),
                    "application/json");
  } else {
    SendError(ServerError(503, "no decode worker answers"), res);
  }
}

void Router::HandleGenerate(Endpoint endpoint, const httplib::Request& http_req,
                            const httplib::ContentReader& reader, httplib::Response& res) {
  auto gen = std::make_shared<GenerationRequest>();
  gen->start = std::chrono::steady_clock::now();
  const int64_t created = absl::ToUnixSeconds(absl::Now());
  gen->id = absl::StrFormat("%s-%016x%08x", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl",
                            id_salt_, static_cast<uint32_t>(next_id_.fetch_add(1)));
  // The trace's id (docs/observability.md, "Request tracing"): the client's when it is safe to
  // log and echo, else the response id. Every response, errors included, carries it.
  const std::string client_id = http_req.get_header_value("X-Request-Id");
  gen->request_id = IsValidRequestId(client_id) ? client_id : gen->id;
  res.set_header("X-Request-Id", gen->request_id);
  std::string body;
  if (std::optional<ApiError> e = ReadBody(http_req, reader, &body, res)) {
    return SendError(*e, res);
  }
  if (BoundedTaskQueue::Overflowing()) {
    ApiError e =
        ServerError(429, absl::StrCat("the router is overloaded (", options_.http_threads,
                                      " requests in progress, ", options_.max_queued_requests,
                                      " waiting); retry later"));
    e.code = "overloaded";
    res.set_header("Retry-After", "1");
    res.set_header("Connection", "close");
    return SendError(e, res);
  }
  ApiError error;
  std::optional<ApiRequest> request = ParseRequest(endpoint, body, &error);
  if (!request.has_value()) return SendError(error, res);
  if (request->model != options_.model_name) {
    ApiError e = InvalidRequest(
        absl::StrCat("the model '", request->model, "' does not exist (this server serves '",
                     options_.model_name, "')"),
        "model");
    e.http_status = 404;
    e.code = "model_not_found";
    return SendError(e, res);
  }
  const int64_t choices = static_cast<int64_t>(
      (endpoint == Endpoint::kChat ? 1 : request->prompts.size()) * request->n);
  if (choices > options_.max_choices) {
    return SendError(InvalidRequest(absl::StrCat("the request asks for ", choices,
                                                 " choices (prompts x n), more than the limit of ",
                                                 options_.max_choices),
                                    "n"),
                     res);
  }

  const int64_t context = pool_->MaxContext();
  if (context == 0) return SendError(ServerError(503, "no decode worker is available"), res);
  // A prompt leaves at least one token of the context to generate.
  const int64_t prompt_limit = options_.max_prompt_tokens > 0
                                   ? std::min(options_.max_prompt_tokens, context - 1)
                                   : context - 1;
  if (std::optional<ApiError> e = Tokenize(*request, prompt_limit, &gen->prompts)) {
    return SendError(*e, res);
  }
  int64_t max_tokens = request->max_tokens.value_or(options_.default_max_tokens);
  for (const std::vector<TokenId>& p : gen->prompts) {
    const int64_t len = static_cast<int64_t>(p.size());
    if (request->max_tokens.has_value()) {
      if (len + max_tokens > context) {
        return SendError(InvalidRequest(absl::StrCat("this model's context is ", context,
                                                     " tokens, but the prompt (", len,
                                                     " tokens) plus "
                                                     "max_tokens (",
                                                     max_tokens, ") needs ", len + max_tokens,
                                                     "; shorten the prompt or lower max_tokens"),
                                        "max_tokens"),
                         res);
      }
    } else {
      max_tokens = std::min(max_tokens, context - len);  // the default is clipped, not refused
    }
  }

  gen->max_tokens = static_cast<uint32_t>(max_tokens);
  gen->temperature = request->temperature;
  gen->top_p = request->top_p;
  gen->top_k = request->top_k;
  gen->seed = request->seed.value_or(next_id_.fetch_add(1) ^ id_salt_);
  gen->n = static_cast<uint32_t>(request->n);
  gen->cache = request->cache && options_.cache;
  gen->stop = request->stop;
  if (api_keys_.has_value()) {  // Authorized() let only known keys through
    gen->tenant = api_keys_->Tenant(http_req.get_header_value("Authorization")).value_or("");
  }
  const std::string& model = options_.model_name;
  const int num_choices = static_cast<int>(gen->prompts.size() * gen->n);

  if (!request->stream) {
    std::vector<Choice> choices(num_choices);
    for (size_t i = 0; i < choices.size(); ++i) choices[i].index = static_cast<int>(i);
    const GenerationResult r =
        generation_->Run(*gen, [&](int index, const std::string& text, const std::string& finish) {
          choices[index].text += text;
          if (!finish.empty()) choices[index].finish_reason = finish;
          return true;
        });
    LogFinished(*gen, r);
    if (r.error.has_value()) return SendError(*r.error, res);
    res.set_header("Server-Timing", ServerTiming(r.timing));
    res.set_content(ResponseBody(endpoint, gen->id, created, model, choices, r.usage),
                    "application/json");
    return;
  }

  const bool include_usage = request->include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=, this](size_t, httplib::DataSink& sink) {  // endpoint, gen, model, created, usage, n
        const std::string& id = gen->id;
        auto write = [&sink](const std::string& s) {
          return sink.is_writable() && sink.write(s.data(), s.size());
        };
        try {
          bool ok = true;
          if (endpoint == Endpoint::kChat) {
            for (int i = 0; i < num_choices && ok; ++i) {
              ok = write(SseEvent(ChunkJson(endpoint, id, created, model, i, true, "", "")));
            }
          }
          GenerationResult r;
          r.client_gone = !ok;
          if (ok) {
            r = generation_->Run(
                *gen, [&](int index, const std::string& text, const std::string& finish) {
                  if (!text.empty()) {
                    if (!write(SseEvent(
                            ChunkJson(endpoint, id, created, model, index, false, text, "")))) {
                      return false;
                    }
                  }
                  if (!finish.empty()) {
                    return write(SseEvent(
                        ChunkJson(endpoint, id, created, model, index, false, "", finish)));
                  }
                  return true;
                });
          }
          LogFinished(*gen, r);
          if (r.client_gone) {
            spdlog::debug("req={}: the client went away; the generation was cancelled",
                          gen->request_id);
            return false;
          }
          if (r.error.has_value()) {
            write(SseEvent(ErrorBody(*r.error)));
            sink.done();
            return true;
          }
          if (include_usage) {
            write(SseEvent(UsageChunkJson(endpoint, id, created, model, r.usage)));
          }
          write(SseDone());
          sink.done();
          return true;
        } catch (const std::exception& ex) {
          KVTIER_LOG_LIMITED(err, "req={}: {}", gen->request_id, ex.what());
          write(SseEvent(ErrorBody(ServerError(500, "internal error"))));
          sink.done();
          return true;
        }
      });
}

}  // namespace kvtier::router
