#include "router/router.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/host_port.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "router/grpc_worker_client.h"

namespace kvtier::router {
namespace {

const char* EndpointLabel(const std::string& path) {
  if (path == "/v1/completions") return "completions";
  if (path == "/v1/chat/completions") return "chat_completions";
  if (path == "/v1/models") return "models";
  if (path == "/health") return "health";
  if (path == "/metrics") return "metrics";
  return "other";
}

std::vector<std::unique_ptr<WorkerClient>> GrpcClients(WorkerRole role,
                                                       const std::vector<std::string>& addresses) {
  std::vector<std::unique_ptr<WorkerClient>> clients;
  for (const std::string& a : addresses)
    clients.push_back(std::make_unique<GrpcWorkerClient>(role, a));
  return clients;
}

}  // namespace

Router::Router(RouterOptions options)
    : options_(std::move(options)),
      created_(absl::ToUnixSeconds(absl::Now())),
      id_salt_(std::random_device{}() * uint64_t{0x9E3779B97F4A7C15} ^
               static_cast<uint64_t>(absl::GetCurrentTimeNanos())) {}

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterOptions options) {
  std::unique_ptr<Router> r(new Router(std::move(options)));
  const RouterOptions& o = r->options_;
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
  r->pool_ = std::make_unique<WorkerPool>(o, GrpcClients(WorkerRole::kDecode, o.decode_workers),
                                          GrpcClients(WorkerRole::kPrefill, o.prefill_workers),
                                          &r->metrics_);
  r->generation_ = std::make_unique<Generation>(o, &*r->tokenizer_, std::move(stop_token_ids),
                                                r->pool_.get(), &r->metrics_);
  return r;
}

Router::~Router() { Stop(); }

absl::StatusOr<int> Router::Start() {
  pool_->Refresh();
  server_ = std::make_unique<httplib::Server>();
  const size_t threads = static_cast<size_t>(options_.http_threads);
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
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
  pool_->Stop();    // cancels the worker calls in flight: their requests end with errors
  server_->stop();  // closes the listener; waits for the handler threads
  if (listen_thread_.joinable()) listen_thread_.join();
}

std::optional<ApiError> Router::Tokenize(const ApiRequest& request,
                                         std::vector<std::vector<TokenId>>* prompts) const {
  if (request.endpoint == Endpoint::kChat) {
    if (!chat_format_.has_value()) {
      return ServerError(500, "the served model has no chat template; use /v1/completions");
    }
    absl::StatusOr<std::string> text = text::RenderChat(*chat_format_, request.messages, true);
    if (!text.ok()) return InvalidRequest(std::string(text.status().message()), "messages");
    // The rendered template spells its special tokens out, so it is encoded with special
    // tokens allowed (see docs/serving.md: special-token text inside user content is matched
    // too, as in most servers that render the template to text).
    absl::StatusOr<std::vector<TokenId>> ids = tokenizer_->Encode(*text, /*allow_special=*/true);
    if (!ids.ok()) return ServerError(500, std::string(ids.status().message()));
    prompts->push_back(std::move(*ids));
    return std::nullopt;
  }
  for (const Prompt& p : request.prompts) {
    if (p.text.has_value()) {
      // As HF `encode(text)`: the tokenizer's post-processor adds bos where the model expects it.
      absl::StatusOr<std::vector<TokenId>> ids = tokenizer_->EncodeWithSpecialTokens(*p.text);
      if (!ids.ok()) return ServerError(500, std::string(ids.status().message()));
      if (ids->empty()) return InvalidRequest("'prompt' must not be empty", "prompt");
      prompts->push_back(std::move(*ids));
    } else {
      for (TokenId id : p.token_ids) {
        if (id >= tokenizer_->vocab_size()) {
          return InvalidRequest(absl::StrCat("token id ", id, " is outside the vocabulary (size ",
                                             tokenizer_->vocab_size(), ")"),
                                "prompt");
        }
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

void Router::RegisterRoutes() {
  httplib::Server& s = *server_;
  auto guard = [this](auto fn) {
    // No exception leaves a handler (docs/serving.md, "HTTP API"): the adapter answers 500.
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const std::exception& e) {
        spdlog::error("{} {}: {}", req.method, req.path, e.what());
        SendError(ServerError(500, absl::StrCat("internal error: ", e.what())), res);
      }
    };
  };
  s.Post("/v1/completions", guard([this](const httplib::Request& req, httplib::Response& res) {
           HandleGenerate(Endpoint::kCompletions, req, res);
         }));
  s.Post("/v1/chat/completions", guard([this](const httplib::Request& req, httplib::Response& res) {
           HandleGenerate(Endpoint::kChat, req, res);
         }));
  s.Get("/v1/models", guard([this](const httplib::Request&, httplib::Response& res) {
          res.set_content(ModelsBody(options_.model_name, created_), "application/json");
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
  for (const char* p : {"/v1/models", "/health", "/metrics"}) {
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
                            httplib::Response& res) {
  auto gen = std::make_shared<GenerationRequest>();
  gen->start = std::chrono::steady_clock::now();
  ApiError error;
  std::optional<ApiRequest> request = ParseRequest(endpoint, http_req.body, &error);
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
  if (std::optional<ApiError> e = Tokenize(*request, &gen->prompts)) return SendError(*e, res);

  const int64_t context = pool_->MaxContext();
  if (context == 0) return SendError(ServerError(503, "no decode worker is available"), res);
  const int64_t prompt_limit =
      options_.max_prompt_tokens > 0 ? std::min(options_.max_prompt_tokens, context) : context;
  int64_t max_tokens = request->max_tokens.value_or(options_.default_max_tokens);
  for (const std::vector<TokenId>& p : gen->prompts) {
    const int64_t len = static_cast<int64_t>(p.size());
    if (len > prompt_limit || (len >= context)) {
      return SendError(
          InvalidRequest(absl::StrCat("the prompt is ", len, " tokens, more than the limit of ",
                                      std::min(prompt_limit, context - 1), " tokens"),
                         endpoint == Endpoint::kChat ? "messages" : "prompt"),
          res);
    }
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
  gen->id = absl::StrFormat("%s-%016x%08x", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl",
                            id_salt_, static_cast<uint32_t>(next_id_.fetch_add(1)));
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
    if (r.error.has_value()) return SendError(*r.error, res);
    res.set_content(ResponseBody(endpoint, gen->id, created_, model, choices, r.usage),
                    "application/json");
    return;
  }

  const bool include_usage = request->include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, endpoint, gen, model, include_usage, num_choices](size_t, httplib::DataSink& sink) {
        const std::string& id = gen->id;
        auto write = [&sink](const std::string& s) {
          return sink.is_writable() && sink.write(s.data(), s.size());
        };
        try {
          bool ok = true;
          if (endpoint == Endpoint::kChat) {
            for (int i = 0; i < num_choices && ok; ++i) {
              ok = write(SseEvent(ChunkJson(endpoint, id, created_, model, i, true, "", "")));
            }
          }
          GenerationResult r;
          r.client_gone = !ok;
          if (ok) {
            r = generation_->Run(
                *gen, [&](int index, const std::string& text, const std::string& finish) {
                  if (!text.empty()) {
                    if (!write(SseEvent(
                            ChunkJson(endpoint, id, created_, model, index, false, text, "")))) {
                      return false;
                    }
                  }
                  if (!finish.empty()) {
                    return write(SseEvent(
                        ChunkJson(endpoint, id, created_, model, index, false, "", finish)));
                  }
                  return true;
                });
          }
          if (r.client_gone) {
            spdlog::debug("{}: the client went away; the generation was cancelled", id);
            return false;
          }
          if (r.error.has_value()) {
            write(SseEvent(ErrorBody(*r.error)));
            sink.done();
            return true;
          }
          if (include_usage) {
            write(SseEvent(UsageChunkJson(endpoint, id, created_, model, r.usage)));
          }
          write(SseDone());
          sink.done();
          return true;
        } catch (const std::exception& ex) {
          spdlog::error("{}: {}", id, ex.what());
          write(SseEvent(ErrorBody(ServerError(500, "internal error"))));
          sink.done();
          return true;
        }
      });
}

}  // namespace kvtier::router
