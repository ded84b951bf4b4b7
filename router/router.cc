#include "router/router.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "router/stop_matcher.h"

namespace kvtier::router {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::chrono::system_clock::time_point DeadlineIn(int64_t ms) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(ms);
}

// Failures after which another decode worker may succeed.
bool Retriable(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::CANCELLED:
      return true;
    default:
      return false;
  }
}

ApiError FromGrpc(const grpc::Status& s) {
  const std::string msg = absl::StrCat("decode worker: ", s.error_message());
  switch (s.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      return InvalidRequest(msg);
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return ServerError(503, msg);
    default:
      return ServerError(500, msg);
  }
}

std::vector<std::string> SplitHostPort(const std::string& hp) {
  const size_t colon = hp.rfind(':');
  return {hp.substr(0, colon), hp.substr(colon + 1)};
}

const char* EndpointLabel(const std::string& path) {
  if (path == "/v1/completions") return "completions";
  if (path == "/v1/chat/completions") return "chat_completions";
  if (path == "/v1/models") return "models";
  if (path == "/health") return "health";
  if (path == "/metrics") return "metrics";
  return "other";
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
  absl::StatusOr<engine::Tokenizer> tok = engine::Tokenizer::Load(o.model_dir);
  if (!tok.ok()) return tok.status();
  r->tokenizer_.emplace(std::move(*tok));
  if (o.chat_format == "auto") {
    absl::StatusOr<engine::ChatFormat> f = engine::DetectChatFormat(r->tokenizer_->chat_template());
    if (f.ok()) {
      r->chat_format_ = *f;
    } else {
      spdlog::warn(
          "no usable chat template in {}/tokenizer_config.json ({}): "
          "/v1/chat/completions is off; pass --chat-format",
          o.model_dir, std::string(f.status().message()));
    }
  } else {
    absl::StatusOr<engine::ChatFormat> f = engine::ParseChatFormat(o.chat_format);
    if (!f.ok()) return f.status();
    r->chat_format_ = *f;
  }
  if (r->chat_format_.has_value()) {
    absl::StatusOr<std::vector<int32_t>> ids =
        engine::ChatStopTokenIds(*r->chat_format_, *r->tokenizer_);
    if (!ids.ok()) return ids.status();
    r->stop_token_ids_ = *ids;
  } else {
    r->stop_token_ids_ = r->tokenizer_->eos_ids();
  }
  r->stop_token_set_.insert(r->stop_token_ids_.begin(), r->stop_token_ids_.end());

  MetricsRegistry& m = r->metrics_;
  r->prompt_tokens_total_ =
      m.AddCounter("kvtier_router_prompt_tokens_total", "Prompt tokens of finished requests");
  r->completion_tokens_total_ =
      m.AddCounter("kvtier_router_completion_tokens_total", "Generated tokens");
  r->cached_tokens_total_ = m.AddCounter("kvtier_router_cached_tokens_total",
                                         "Prompt tokens whose K/V came from the cache tier");
  r->prefill_calls_ok_ =
      m.AddCounter("kvtier_router_prefill_calls_total", "Prefill calls", {{"result", "ok"}});
  r->prefill_calls_failed_ =
      m.AddCounter("kvtier_router_prefill_calls_total", "Prefill calls", {{"result", "error"}});
  r->prefill_skipped_ =
      m.AddCounter("kvtier_router_prefill_calls_total", "Prefill calls", {{"result", "skipped"}});
  r->retries_total_ = m.AddCounter("kvtier_router_decode_retries_total",
                                   "Generations retried on another decode worker");
  r->ttft_seconds_ =
      m.AddHistogram("kvtier_router_time_to_first_token_seconds",
                     "Request start to first generated token", LatencyBucketsSeconds());
  r->latency_seconds_ =
      m.AddHistogram("kvtier_router_request_duration_seconds",
                     "End-to-end latency of generation requests", LatencyBucketsSeconds());

  grpc::ChannelArguments args;
  // Reconnect quickly after a worker restart.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  absl::MutexLock lock(&r->mu_);
  for (const std::string& a : o.decode_workers) {
    r->decode_stubs_.push_back(v1::DecodeWorker::NewStub(
        grpc::CreateCustomChannel(a, grpc::InsecureChannelCredentials(), args)));
    WorkerState s;
    s.keys = std::make_unique<KeyLru>(static_cast<size_t>(o.affinity_keys_per_worker));
    const MetricLabels labels = {{"worker", a}, {"role", "decode"}};
    s.in_flight_gauge =
        m.AddGauge("kvtier_router_worker_in_flight", "Requests in flight per worker", labels);
    s.up_gauge = m.AddGauge("kvtier_router_worker_up", "Whether the worker answers", labels);
    r->decode_.push_back(std::move(s));
  }
  for (const std::string& a : o.prefill_workers) {
    r->prefill_stubs_.push_back(v1::PrefillWorker::NewStub(
        grpc::CreateCustomChannel(a, grpc::InsecureChannelCredentials(), args)));
    WorkerState s;
    const MetricLabels labels = {{"worker", a}, {"role", "prefill"}};
    s.in_flight_gauge =
        m.AddGauge("kvtier_router_worker_in_flight", "Requests in flight per worker", labels);
    s.up_gauge = m.AddGauge("kvtier_router_worker_up", "Whether the worker answers", labels);
    r->prefill_.push_back(std::move(s));
  }
  return r;
}

Router::~Router() { Stop(); }

absl::StatusOr<int> Router::Start() {
  RefreshWorkers();
  server_ = std::make_unique<httplib::Server>();
  const size_t threads = static_cast<size_t>(options_.http_threads);
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  RegisterRoutes();
  const std::vector<std::string> hp = SplitHostPort(options_.listen);
  const int want = std::stoi(hp[1]);
  int port = want;
  if (want == 0) {
    port = server_->bind_to_any_port(hp[0]);
    if (port < 0) return absl::UnavailableError(absl::StrCat("cannot bind ", options_.listen));
  } else if (!server_->bind_to_port(hp[0], want)) {
    return absl::UnavailableError(absl::StrCat("cannot bind ", options_.listen));
  }
  port_ = port;
  listen_thread_ = std::thread([this] { server_->listen_after_bind(); });
  refresh_thread_ = std::thread([this] { RefreshLoop(); });
  started_ = true;
  return port_;
}

void Router::Stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (grpc::ClientContext* ctx : active_calls_) ctx->TryCancel();
  }
  server_->stop();  // closes the listener; waits for the handler threads
  if (listen_thread_.joinable()) listen_thread_.join();
  {
    absl::MutexLock lock(&refresh_mu_);
    refresh_stop_ = true;
  }
  if (refresh_thread_.joinable()) refresh_thread_.join();
}

bool Router::Register(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  active_calls_.insert(ctx);
  return true;
}

void Router::Unregister(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&mu_);
  active_calls_.erase(ctx);
}

// ---- Workers ----

void Router::RefreshWorkers() {
  auto ask = [&](auto* stub, v1::WorkerInfo* info) {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineIn(options_.health_timeout_ms));
    return stub->GetWorkerInfo(&ctx, v1::WorkerInfoRequest(), info).ok();
  };
  for (size_t i = 0; i < decode_stubs_.size(); ++i) {
    v1::WorkerInfo info;
    const bool ok = ask(decode_stubs_[i].get(), &info);
    absl::MutexLock lock(&mu_);
    WorkerState& s = decode_[i];
    if (ok) {
      absl::StatusOr<NamespaceId> ns = KeyFromBytes(info.namespace_id(), "namespace_id");
      std::optional<NamespaceId> new_ns;
      if (ns.ok()) new_ns = *ns;
      // A worker that was down or changed namespace lost (or cannot use) what it held.
      if (!s.alive || new_ns != s.ns || info.block_tokens() != s.info.block_tokens()) {
        s.keys = std::make_unique<KeyLru>(static_cast<size_t>(options_.affinity_keys_per_worker));
      }
      if (!s.alive) spdlog::info("decode worker {} is up", options_.decode_workers[i]);
      s.ns = new_ns;
      s.info = std::move(info);
    } else if (s.alive) {
      spdlog::warn("decode worker {} does not answer", options_.decode_workers[i]);
    }
    s.alive = ok;
    s.up_gauge->Set(ok ? 1 : 0);
  }
  for (size_t i = 0; i < prefill_stubs_.size(); ++i) {
    v1::WorkerInfo info;
    const bool ok = ask(prefill_stubs_[i].get(), &info);
    absl::MutexLock lock(&mu_);
    WorkerState& s = prefill_[i];
    if (ok) s.info = std::move(info);
    if (ok != s.alive) {
      spdlog::info("prefill worker {} is {}", options_.prefill_workers[i], ok ? "up" : "down");
    }
    s.alive = ok;
    s.up_gauge->Set(ok ? 1 : 0);
  }
}

void Router::RefreshLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&refresh_mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(refresh_mu_) { return refresh_stop_; };
      if (refresh_mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Seconds(1))) return;
    }
    RefreshWorkers();
  }
}

int64_t Router::MaxContext() {
  absl::MutexLock lock(&mu_);
  int64_t ctx = 0;
  for (const WorkerState& s : decode_) {
    if (!s.alive || s.info.max_context() == 0) continue;
    ctx = ctx == 0 ? s.info.max_context() : std::min<int64_t>(ctx, s.info.max_context());
  }
  return ctx;
}

int Router::AcquireDecode(const std::vector<uint32_t>& prompt, const std::vector<int>& exclude,
                          size_t* matched_tokens) {
  // Keys are computed outside the lock, once per (namespace, block size).
  struct Snapshot {
    int w;
    NamespaceId ns;
    uint32_t block_tokens;
  };
  std::vector<Snapshot> snaps;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < decode_.size(); ++i) {
      const WorkerState& s = decode_[i];
      if (!s.alive ||
          std::find(exclude.begin(), exclude.end(), static_cast<int>(i)) != exclude.end()) {
        continue;
      }
      if (s.ns.has_value() && s.info.block_tokens() > 0) {
        snaps.push_back({static_cast<int>(i), *s.ns, s.info.block_tokens()});
      }
    }
  }
  std::vector<std::pair<Snapshot, std::vector<BlockKey>>> keys;
  for (const Snapshot& s : snaps) {
    bool found = false;
    for (auto& [k, v] : keys) {
      if (k.ns == s.ns && k.block_tokens == s.block_tokens) {
        keys.push_back({s, v});
        found = true;
        break;
      }
    }
    if (!found) keys.push_back({s, ComputeBlockKeys(s.ns, prompt, s.block_tokens)});
  }
  absl::MutexLock lock(&mu_);
  std::vector<PlacementCandidate> cands;
  std::vector<int> index;
  std::vector<uint32_t> block_tokens;
  for (size_t i = 0; i < decode_.size(); ++i) {
    WorkerState& s = decode_[i];
    if (!s.alive ||
        std::find(exclude.begin(), exclude.end(), static_cast<int>(i)) != exclude.end()) {
      continue;
    }
    PlacementCandidate c;
    c.in_flight = s.in_flight;
    uint32_t bt = 0;
    for (const auto& [k, v] : keys) {
      if (k.w == static_cast<int>(i)) {
        c.matched_blocks = s.keys->MatchPrefix(v);
        bt = k.block_tokens;
      }
    }
    cands.push_back(c);
    index.push_back(static_cast<int>(i));
    block_tokens.push_back(bt);
  }
  const int pick = PickWorker(cands);
  if (pick < 0) return -1;
  const int w = index[pick];
  *matched_tokens = cands[pick].matched_blocks * block_tokens[pick];
  ++decode_[w].in_flight;
  decode_[w].in_flight_gauge->Set(decode_[w].in_flight);
  return w;
}

void Router::ReleaseDecode(int w) {
  absl::MutexLock lock(&mu_);
  --decode_[w].in_flight;
  decode_[w].in_flight_gauge->Set(decode_[w].in_flight);
}

void Router::RememberKeys(int w, const std::vector<uint32_t>& tokens) {
  std::optional<NamespaceId> ns;
  uint32_t bt = 0;
  {
    absl::MutexLock lock(&mu_);
    ns = decode_[w].ns;
    bt = decode_[w].info.block_tokens();
  }
  if (!ns.has_value() || bt == 0) return;
  const std::vector<BlockKey> keys = ComputeBlockKeys(*ns, tokens, bt);
  absl::MutexLock lock(&mu_);
  if (decode_[w].ns != ns) return;
  for (const BlockKey& k : keys) decode_[w].keys->Touch(k);
}

uint32_t Router::MaybePrefill(const std::vector<uint32_t>& prompt, size_t cached_prefix_tokens) {
  if (prompt.size() < cached_prefix_tokens + static_cast<size_t>(options_.skip_prefill_below) ||
      prefill_stubs_.empty()) {
    prefill_skipped_->Increment();
    return 0;
  }
  int w = -1;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < prefill_.size(); ++i) {
      if (!prefill_[i].alive) continue;
      if (w < 0 || prefill_[i].in_flight < prefill_[w].in_flight) w = static_cast<int>(i);
    }
    if (w < 0) {
      prefill_skipped_->Increment();
      return 0;
    }
    ++prefill_[w].in_flight;
    prefill_[w].in_flight_gauge->Set(prefill_[w].in_flight);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.request_timeout_ms));
  v1::PrefillRequest req;
  req.set_request_id(absl::StrFormat("prefill-%016x-%d", id_salt_, next_id_.fetch_add(1)));
  req.mutable_tokens()->Add(prompt.begin(), prompt.end());
  v1::PrefillResponse resp;
  grpc::Status st;
  if (Register(&ctx)) {
    st = prefill_stubs_[w]->Prefill(&ctx, req, &resp);
    Unregister(&ctx);
  } else {
    st = grpc::Status(grpc::StatusCode::CANCELLED, "router stopping");
  }
  {
    absl::MutexLock lock(&mu_);
    --prefill_[w].in_flight;
    prefill_[w].in_flight_gauge->Set(prefill_[w].in_flight);
  }
  if (st.ok()) {
    prefill_calls_ok_->Increment();
    spdlog::debug("prefill on {}: {} tokens, {} cached, {} computed", options_.prefill_workers[w],
                  resp.prompt_tokens(), resp.cached_tokens(), resp.computed_tokens());
    return resp.computed_tokens();
  } else {
    // Not fatal: the decode worker computes what is missing.
    prefill_calls_failed_->Increment();
    spdlog::warn("prefill on {} failed ({}): decode recomputes", options_.prefill_workers[w],
                 st.error_message());
  }
  return 0;
}

// ---- Generation ----

grpc::Status Router::GenerateOn(int w, const std::vector<uint32_t>& prompt, const GenParams& params,
                                int index_base, const EmitFn& emit, PromptResult* result,
                                bool* emitted, bool* client_gone,
                                std::vector<uint32_t>* generated0) {
  v1::GenerateRequest req;
  req.set_request_id(absl::StrFormat("gen-%016x-%d", id_salt_, next_id_.fetch_add(1)));
  req.mutable_tokens()->Add(prompt.begin(), prompt.end());
  v1::SamplingParams* sp = req.mutable_sampling();
  sp->set_temperature(params.temperature);
  sp->set_top_k(params.top_k);
  sp->set_top_p(params.top_p);
  sp->set_seed(params.seed);
  sp->set_max_tokens(params.max_tokens);
  for (int32_t id : stop_token_ids_) sp->add_stop_token_ids(static_cast<uint32_t>(id));
  req.set_use_cache(params.cache);
  req.set_n(params.n);

  struct ChoiceState {
    engine::StreamDecoder decoder;
    StopMatcher matcher;
    bool done = false;
  };
  std::vector<ChoiceState> choices;
  choices.reserve(params.n);
  for (uint32_t i = 0; i < params.n; ++i) {
    choices.push_back(
        {engine::StreamDecoder(&*tokenizer_, /*skip_special=*/true), StopMatcher(params.stop)});
  }
  size_t open = params.n;
  bool cancelled_by_us = false;

  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(options_.request_timeout_ms));
  if (!Register(&ctx)) return grpc::Status(grpc::StatusCode::CANCELLED, "router stopping");
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      decode_stubs_[w]->Generate(&ctx, req);
  v1::GenerateResponse resp;
  auto send = [&](int index, const std::string& text, const std::string& finish) {
    if (text.empty() && finish.empty()) return;
    *emitted = true;
    if (!*client_gone && !emit(index_base + index, text, finish)) {
      *client_gone = true;
      cancelled_by_us = true;
      ctx.TryCancel();
    }
  };
  bool first = true;
  while (reader->Read(&resp)) {
    if (first) {
      result->prompt_tokens = resp.prompt_tokens();
      result->cached_tokens = resp.cached_tokens();
      first = false;
    }
    if (resp.index() >= params.n) continue;
    ChoiceState& c = choices[resp.index()];
    if (c.done) continue;
    for (uint32_t t : resp.tokens()) {
      if (c.done) break;
      ++result->completion_tokens;
      if (resp.index() == 0) generated0->push_back(t);
      if (stop_token_set_.contains(static_cast<int32_t>(t))) continue;  // never shown
      std::string text = c.matcher.Push(c.decoder.Push(static_cast<int32_t>(t)));
      if (c.matcher.stopped()) {
        c.done = true;
        --open;
        send(resp.index(), text, "stop");
      } else {
        send(resp.index(), text, "");
      }
    }
    if (!c.done && !resp.finish_reason().empty()) {
      std::string text = c.matcher.Push(c.decoder.Flush());
      if (!c.matcher.stopped()) text += c.matcher.Flush();
      c.done = true;
      --open;
      send(resp.index(), text, c.matcher.stopped() ? "stop" : resp.finish_reason());
    }
    if (open == 0 && !cancelled_by_us) {
      // Every choice ended (a stop sequence ends a choice before the worker knows): free the
      // worker's request now.
      cancelled_by_us = true;
      ctx.TryCancel();
    }
    if (*client_gone) break;
  }
  if (cancelled_by_us) {
    while (reader->Read(&resp)) {
    }
  }
  grpc::Status st = reader->Finish();
  Unregister(&ctx);
  if (cancelled_by_us && open == 0) return grpc::Status::OK;
  if (*client_gone) return grpc::Status::OK;
  if (st.ok() && open != 0) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended before every completion");
  }
  return st;
}

std::optional<ApiError> Router::RunPrompt(const std::vector<uint32_t>& prompt,
                                          const GenParams& params, int index_base,
                                          const EmitFn& emit, PromptResult* result,
                                          bool* client_gone) {
  std::vector<int> tried;
  std::optional<ApiError> last_error;
  for (int attempt = 0; attempt < 2; ++attempt) {
    size_t matched = 0;
    const int w = AcquireDecode(prompt, tried, &matched);
    if (w < 0) {
      if (last_error.has_value()) return last_error;
      return ServerError(503, "no decode worker is available");
    }
    tried.push_back(w);
    const uint32_t prefilled = params.cache && options_.cache ? MaybePrefill(prompt, matched) : 0;
    PromptResult r;
    bool emitted = false;
    std::vector<uint32_t> generated0;
    const grpc::Status st =
        GenerateOn(w, prompt, params, index_base, emit, &r, &emitted, client_gone, &generated0);
    ReleaseDecode(w);
    // Blocks the prefill worker computed for this very request reach the decode worker
    // through the store, but they were not cached for the client (usage.cached_tokens).
    r.cached_tokens = std::max<int64_t>(0, r.cached_tokens - int64_t{prefilled});
    if (st.ok()) {
      if (params.cache && options_.cache) {
        std::vector<uint32_t> all = prompt;
        all.insert(all.end(), generated0.begin(), generated0.end());
        RememberKeys(w, all);
      }
      *result = r;
      return std::nullopt;
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return ServerError(503, "the router is shutting down");
    }
    spdlog::warn("generate on {} failed ({}: {}){}", options_.decode_workers[w],
                 static_cast<int>(st.error_code()), st.error_message(),
                 emitted ? "" : ", nothing streamed yet");
    last_error = FromGrpc(st);
    if (emitted || !Retriable(st.error_code()) || attempt == 1) return last_error;
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      absl::MutexLock lock(&mu_);
      decode_[w].alive = false;  // until the next refresh says otherwise
      decode_[w].up_gauge->Set(0);
    }
    retries_total_->Increment();
  }
  return last_error;
}

std::optional<ApiError> Router::Tokenize(const ApiRequest& request,
                                         std::vector<std::vector<uint32_t>>* prompts) const {
  auto to_u32 = [](const std::vector<int32_t>& ids) {
    return std::vector<uint32_t>(ids.begin(), ids.end());
  };
  if (request.endpoint == Endpoint::kChat) {
    if (!chat_format_.has_value()) {
      return ServerError(500, "the served model has no chat template; use /v1/completions");
    }
    absl::StatusOr<std::string> text = engine::RenderChat(*chat_format_, request.messages, true);
    if (!text.ok()) return InvalidRequest(std::string(text.status().message()), "messages");
    // The rendered template spells its special tokens out, so it is encoded with special
    // tokens allowed (see docs/serving.md: special-token text inside user content is matched
    // too, as in most servers that render the template to text).
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(*text, /*allow_special=*/true);
    if (!ids.ok()) return ServerError(500, std::string(ids.status().message()));
    prompts->push_back(to_u32(*ids));
    return std::nullopt;
  }
  for (const Prompt& p : request.prompts) {
    if (p.text.has_value()) {
      // As HF `encode(text)`: the tokenizer's post-processor adds bos where the model expects it.
      absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->EncodeWithSpecialTokens(*p.text);
      if (!ids.ok()) return ServerError(500, std::string(ids.status().message()));
      if (ids->empty()) return InvalidRequest("'prompt' must not be empty", "prompt");
      prompts->push_back(to_u32(*ids));
    } else {
      for (int32_t id : p.token_ids) {
        if (id >= tokenizer_->vocab_size()) {
          return InvalidRequest(absl::StrCat("token id ", id, " is outside the vocabulary (size ",
                                             tokenizer_->vocab_size(), ")"),
                                "prompt");
        }
      }
      prompts->push_back(to_u32(p.token_ids));
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
    // No exception leaves a handler (DESIGN §6): the adapter answers 500.
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
  int alive = 0;
  {
    absl::MutexLock lock(&mu_);
    for (const WorkerState& s : decode_) alive += s.alive ? 1 : 0;
  }
  if (alive > 0) {
    res.set_content(absl::StrCat("{\"status\":\"ok\",\"decode_workers_up\":", alive, "}"),
                    "application/json");
  } else {
    SendError(ServerError(503, "no decode worker answers"), res);
  }
}

void Router::HandleGenerate(Endpoint endpoint, const httplib::Request& http_req,
                            httplib::Response& res) {
  const Clock::time_point start = Clock::now();
  ApiError error;
  std::optional<ApiRequest> parsed = ParseRequest(endpoint, http_req.body, &error);
  if (!parsed.has_value()) return SendError(error, res);
  auto request = std::make_shared<const ApiRequest>(std::move(*parsed));
  if (request->model != options_.model_name) {
    ApiError e = InvalidRequest(
        absl::StrCat("the model '", request->model, "' does not exist (this server serves '",
                     options_.model_name, "')"),
        "model");
    e.http_status = 404;
    e.code = "model_not_found";
    return SendError(e, res);
  }
  auto prompts = std::make_shared<std::vector<std::vector<uint32_t>>>();
  if (std::optional<ApiError> e = Tokenize(*request, prompts.get())) return SendError(*e, res);

  const int64_t context = MaxContext();
  if (context == 0) return SendError(ServerError(503, "no decode worker is available"), res);
  const int64_t prompt_limit =
      options_.max_prompt_tokens > 0 ? std::min(options_.max_prompt_tokens, context) : context;
  int64_t max_tokens = request->max_tokens.value_or(options_.default_max_tokens);
  for (const std::vector<uint32_t>& p : *prompts) {
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

  GenParams params;
  params.max_tokens = static_cast<uint32_t>(max_tokens);
  params.temperature = request->temperature;
  params.top_p = request->top_p;
  params.top_k = request->top_k;
  params.seed = request->seed.value_or(next_id_.fetch_add(1) ^ id_salt_);
  params.n = static_cast<uint32_t>(request->n);
  params.cache = request->cache && options_.cache;
  params.stop = request->stop;

  const std::string id =
      absl::StrFormat("%s-%016x%08x", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl", id_salt_,
                      static_cast<uint32_t>(next_id_.fetch_add(1)));
  const std::string& model = options_.model_name;

  // Runs every prompt; `emit` sees every piece of text. Shared by both response kinds.
  auto run = [this, prompts, params, start](const EmitFn& emit, Usage* usage,
                                            bool* client_gone) -> std::optional<ApiError> {
    bool first_token = true;
    EmitFn timed = [&](int index, const std::string& text, const std::string& finish) {
      if (first_token) {
        first_token = false;
        ttft_seconds_->Observe(SecondsSince(start));
      }
      return emit(index, text, finish);
    };
    for (size_t p = 0; p < prompts->size(); ++p) {
      PromptResult r;
      std::optional<ApiError> e;
      if (params.max_tokens == 0) {
        // The workers read 0 as "their default": answer an empty completion here.
        for (uint32_t i = 0; i < params.n; ++i) {
          if (!timed(static_cast<int>(p * params.n + i), "", "length")) *client_gone = true;
        }
        r.prompt_tokens = static_cast<int64_t>((*prompts)[p].size());
      } else {
        e = RunPrompt((*prompts)[p], params, static_cast<int>(p * params.n), timed, &r,
                      client_gone);
      }
      usage->prompt_tokens += r.prompt_tokens;
      usage->completion_tokens += r.completion_tokens;
      usage->cached_tokens += r.cached_tokens;
      prompt_tokens_total_->Increment(static_cast<double>(r.prompt_tokens));
      completion_tokens_total_->Increment(static_cast<double>(r.completion_tokens));
      cached_tokens_total_->Increment(static_cast<double>(r.cached_tokens));
      if (e.has_value() || *client_gone) return e;
    }
    latency_seconds_->Observe(SecondsSince(start));
    return std::nullopt;
  };

  if (!request->stream) {
    std::vector<Choice> choices(prompts->size() * params.n);
    for (size_t i = 0; i < choices.size(); ++i) choices[i].index = static_cast<int>(i);
    Usage usage;
    bool client_gone = false;
    std::optional<ApiError> e = run(
        [&](int index, const std::string& text, const std::string& finish) {
          choices[index].text += text;
          if (!finish.empty()) choices[index].finish_reason = finish;
          return true;
        },
        &usage, &client_gone);
    if (e.has_value()) return SendError(*e, res);
    res.set_content(ResponseBody(endpoint, id, created_, model, choices, usage),
                    "application/json");
    return;
  }

  const bool include_usage = request->include_usage;
  const int num_choices = static_cast<int>(prompts->size() * params.n);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [this, endpoint, id, model, include_usage,
                                                         num_choices,
                                                         run](size_t, httplib::DataSink& sink) {
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
      Usage usage;
      bool client_gone = !ok;
      std::optional<ApiError> e;
      if (ok) {
        e = run(
            [&](int index, const std::string& text, const std::string& finish) {
              if (!text.empty()) {
                if (!write(SseEvent(
                        ChunkJson(endpoint, id, created_, model, index, false, text, "")))) {
                  return false;
                }
              }
              if (!finish.empty()) {
                return write(
                    SseEvent(ChunkJson(endpoint, id, created_, model, index, false, "", finish)));
              }
              return true;
            },
            &usage, &client_gone);
      }
      if (client_gone) {
        spdlog::debug("{}: the client went away; the generation was cancelled", id);
        return false;
      }
      if (e.has_value()) {
        write(SseEvent(ErrorBody(*e)));
        sink.done();
        return true;
      }
      if (include_usage) {
        write(SseEvent(UsageChunkJson(endpoint, id, created_, model, usage)));
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
