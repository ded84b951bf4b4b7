#include "router/generation.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log_limiter.h"
#include "common/logging.h"
#include "router/placement.h"
#include "router/stop_matcher.h"
#include "text/stream_decoder.h"

namespace kvtier::router {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

const std::string& TraceId(const GenerationRequest& request) {
  return request.request_id.empty() ? request.id : request.request_id;
}

// Failures after which another decode worker may succeed.
bool Retriable(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

ApiError ToApiError(const absl::Status& s) {
  const std::string msg = absl::StrCat("decode worker: ", s.message());
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
      return InvalidRequest(msg);
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
      return ServerError(503, msg);
    default:
      return ServerError(500, msg);
  }
}

// The request id of the worker calls for prompt `p`.
std::string CallId(const GenerationRequest& request, size_t p) {
  return absl::StrCat(TraceId(request), "-", p);
}

}  // namespace

std::string ServerTiming(const RequestTiming& t) {
  return absl::StrFormat(
      "prefill;dur=%.1f, queue;dur=%.1f, fetch;dur=%.1f, compute;dur=%.1f, "
      "ttft;dur=%.1f",
      t.prefill_ms, t.worker.queue_ms(), t.worker.fetch_ms(), t.worker.compute_ms(), t.ttft_ms);
}

std::string TimingLogFields(const Usage& usage, const RequestTiming& t) {
  return absl::StrFormat(
      "prompt=%d cached=%d (first_tier=%u store=%u) prefill_call=%.1fms queue=%.1fms "
      "fetch=%.1fms compute=%.1fms ttft=%.1fms total=%.1fms",
      usage.prompt_tokens, usage.cached_tokens, t.first_tier_tokens, t.store_tokens, t.prefill_ms,
      t.worker.queue_ms(), t.worker.fetch_ms(), t.worker.compute_ms(), t.ttft_ms, t.total_ms);
}

Generation::Generation(const RouterOptions& options, const text::Tokenizer* tokenizer,
                       std::vector<int32_t> stop_token_ids, WorkerPool* pool,
                       MetricsRegistry* metrics)
    : skip_prefill_below_(options.skip_prefill_below),
      request_timeout_(absl::Milliseconds(options.request_timeout_ms)),
      tokenizer_(tokenizer),
      stop_token_ids_(std::move(stop_token_ids)),
      stop_token_set_(stop_token_ids_.begin(), stop_token_ids_.end()),
      pool_(pool),
      prompt_tokens_total_(metrics->AddCounter("kvtier_router_prompt_tokens_total",
                                               "Prompt tokens of finished requests")),
      completion_tokens_total_(
          metrics->AddCounter("kvtier_router_completion_tokens_total", "Generated tokens")),
      cached_tokens_total_(metrics->AddCounter("kvtier_router_cached_tokens_total",
                                               "Prompt tokens whose K/V came from the cache tier")),
      prefill_calls_ok_(metrics->AddCounter("kvtier_router_prefill_calls_total", "Prefill calls",
                                            {{"result", "ok"}})),
      prefill_calls_failed_(metrics->AddCounter("kvtier_router_prefill_calls_total",
                                                "Prefill calls", {{"result", "error"}})),
      prefill_skipped_(metrics->AddCounter("kvtier_router_prefill_calls_total", "Prefill calls",
                                           {{"result", "skipped"}})),
      retries_total_(metrics->AddCounter("kvtier_router_decode_retries_total",
                                         "Generations retried on another decode worker")),
      ttft_seconds_(metrics->AddHistogram("kvtier_router_time_to_first_token_seconds",
                                          "Request start to first generated token",
                                          LatencyBucketsSeconds())),
      latency_seconds_(metrics->AddHistogram("kvtier_router_request_duration_seconds",
                                             "End-to-end latency of generation requests",
                                             LatencyBucketsSeconds())) {}

GenerationResult Generation::Run(const GenerationRequest& request, const EmitFn& emit) {
  GenerationResult result;
  bool first_token = true;
  const EmitFn timed = [&](int index, const std::string& text, const std::string& finish) {
    if (first_token) {
      first_token = false;
      const double ttft = SecondsSince(request.start);
      ttft_seconds_->Observe(ttft);
      result.timing.ttft_ms = ttft * 1e3;
    }
    return emit(index, text, finish);
  };
  // Every return below has the total.
  struct TotalOnReturn {
    GenerationResult* result;
    const GenerationRequest* request;
    ~TotalOnReturn() { result->timing.total_ms = SecondsSince(request->start) * 1e3; }
  } total{&result, &request};
  for (size_t p = 0; p < request.prompts.size(); ++p) {
    Usage u;
    std::optional<ApiError> e;
    if (request.max_tokens == 0) {
      // The workers read 0 as "their default": answer an empty completion here.
      for (uint32_t i = 0; i < request.n; ++i) {
        if (!timed(static_cast<int>(p * request.n + i), "", "length")) result.client_gone = true;
      }
      u.prompt_tokens = static_cast<int64_t>(request.prompts[p].size());
    } else {
      e = RunPrompt(request, p, timed, &u, &result.client_gone, &result.timing);
    }
    result.usage.prompt_tokens += u.prompt_tokens;
    result.usage.completion_tokens += u.completion_tokens;
    result.usage.cached_tokens += u.cached_tokens;
    prompt_tokens_total_->Increment(static_cast<double>(u.prompt_tokens));
    completion_tokens_total_->Increment(static_cast<double>(u.completion_tokens));
    cached_tokens_total_->Increment(static_cast<double>(u.cached_tokens));
    if (e.has_value() || result.client_gone) {
      result.error = std::move(e);
      return result;
    }
  }
  latency_seconds_->Observe(SecondsSince(request.start));
  return result;
}

std::optional<ApiError> Generation::RunPrompt(const GenerationRequest& request, size_t prompt_index,
                                              const EmitFn& emit, Usage* usage, bool* client_gone,
                                              RequestTiming* timing) {
  const std::vector<TokenId>& prompt = request.prompts[prompt_index];
  PromptKeys keys(prompt, request.tenant);  // computed once for placement and remembering
  std::vector<int> tried;
  std::optional<ApiError> last_error;
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::optional<WorkerPool::Lease> lease = pool_->AcquireDecode(keys, tried);
    if (!lease.has_value()) {
      if (last_error.has_value()) return last_error;
      return ServerError(503, "no decode worker is available");
    }
    const int w = lease->index();
    tried.push_back(w);
    const auto prefill_start = std::chrono::steady_clock::now();
    const uint32_t prefilled = request.cache ? MaybePrefill(request, CallId(request, prompt_index),
                                                            prompt, lease->matched_tokens())
                                             : 0;
    const double prefill_ms = SecondsSince(prefill_start) * 1e3;
    Usage u;
    bool emitted = false;
    std::vector<TokenId> generated0;
    v1::Timing worker_timing;
    WorkerClient& worker = lease->client();  // owned by the pool
    const absl::Status st = GenerateOn(worker, request, prompt_index, emit, &u, &emitted,
                                       client_gone, &generated0, &worker_timing);
    lease.reset();
    if (prompt_index == 0) {  // its last attempt explains the time to the first token
      timing->worker = worker_timing;
      timing->prefill_ms = prefill_ms;
    }
    // Blocks the prefill worker computed for this very request reach the decode worker
    // through the store, but they were not cached for the client (usage.cached_tokens).
    u.cached_tokens = std::max<int64_t>(0, u.cached_tokens - int64_t{prefilled});
    if (st.ok()) {
      if (request.cache) pool_->Remember(w, keys, generated0);
      timing->first_tier_tokens += worker_timing.first_tier_tokens();
      timing->store_tokens += worker_timing.store_tokens();
      *usage = u;
      return std::nullopt;
    }
    if (pool_->stopping()) return ServerError(503, "the router is shutting down");
    KVTIER_LOG_LIMITED(warn, "req={} generate on {} failed ({}){}", TraceId(request),
                       worker.address(), st.ToString(), emitted ? "" : ", nothing streamed yet");
    last_error = ToApiError(st);
    if (emitted || !Retriable(st.code()) || attempt == 1) return last_error;
    if (st.code() == absl::StatusCode::kUnavailable) pool_->MarkDown(w);
    retries_total_->Increment();
  }
  return last_error;
}

uint32_t Generation::MaybePrefill(const GenerationRequest& request, const std::string& request_id,
                                  const std::vector<TokenId>& prompt, size_t cached_prefix_tokens) {
  std::optional<WorkerPool::Lease> lease =
      prompt.size() >= cached_prefix_tokens + static_cast<size_t>(skip_prefill_below_)
          ? pool_->AcquirePrefill()
          : std::nullopt;
  if (!lease.has_value()) {
    prefill_skipped_->Increment();
    return 0;
  }
  v1::PrefillRequest req;
  req.set_request_id(absl::StrCat(request_id, "-prefill"));
  req.mutable_tokens()->Add(prompt.begin(), prompt.end());
  req.set_tenant(request.tenant);
  absl::StatusOr<v1::PrefillResponse> resp = lease->client().Prefill(req, request_timeout_);
  if (!resp.ok()) {
    // Not fatal: the decode worker computes what is missing.
    prefill_calls_failed_->Increment();
    KVTIER_LOG_LIMITED(warn, "req={} prefill on {} failed ({}): decode recomputes",
                       TraceId(request), lease->address(), resp.status().ToString());
    return 0;
  }
  prefill_calls_ok_->Increment();
  spdlog::debug("req={} prefill on {}: {} tokens, {} cached, {} computed", TraceId(request),
                lease->address(), resp->prompt_tokens(), resp->cached_tokens(),
                resp->computed_tokens());
  return resp->computed_tokens();
}

absl::Status Generation::GenerateOn(WorkerClient& worker, const GenerationRequest& request,
                                    size_t prompt_index, const EmitFn& emit, Usage* usage,
                                    bool* emitted, bool* client_gone,
                                    std::vector<TokenId>* generated0, v1::Timing* timing) {
  const std::vector<TokenId>& prompt = request.prompts[prompt_index];
  const int index_base = static_cast<int>(prompt_index * request.n);
  v1::GenerateRequest req;
  req.set_request_id(CallId(request, prompt_index));
  req.mutable_tokens()->Add(prompt.begin(), prompt.end());
  v1::SamplingParams* sp = req.mutable_sampling();
  sp->set_temperature(request.temperature);
  sp->set_top_k(request.top_k);
  sp->set_top_p(request.top_p);
  sp->set_seed(request.seed);
  sp->set_max_tokens(request.max_tokens);
  sp->mutable_stop_token_ids()->Add(stop_token_ids_.begin(), stop_token_ids_.end());
  req.set_use_cache(request.cache);
  req.set_n(request.n);
  req.set_tenant(request.tenant);

  struct ChoiceState {
    text::StreamDecoder decoder;
    StopMatcher matcher;
    bool done = false;
  };
  std::vector<ChoiceState> choices;
  choices.reserve(request.n);
  for (uint32_t i = 0; i < request.n; ++i) {
    choices.push_back(
        {text::StreamDecoder(tokenizer_, /*skip_special=*/true), StopMatcher(request.stop)});
  }
  size_t open = request.n;
  bool cancelled_by_us = false;

  absl::StatusOr<std::unique_ptr<GenerateStream>> stream = worker.Generate(req, request_timeout_);
  if (!stream.ok()) return stream.status();
  GenerateStream& s = **stream;
  auto send = [&](int index, const std::string& text, const std::string& finish) {
    if (text.empty() && finish.empty()) return;
    *emitted = true;
    if (!*client_gone && !emit(index_base + index, text, finish)) {
      *client_gone = true;
      cancelled_by_us = true;
      s.Cancel();
    }
  };
  v1::GenerateResponse resp;
  bool first = true;
  while (s.Read(&resp)) {
    if (first) {
      usage->prompt_tokens = resp.prompt_tokens();
      usage->cached_tokens = resp.cached_tokens();
      *timing = resp.timing();
      first = false;
    }
    if (resp.index() >= request.n) continue;
    ChoiceState& c = choices[resp.index()];
    if (c.done) continue;
    for (TokenId t : resp.tokens()) {
      if (c.done) break;
      ++usage->completion_tokens;
      if (resp.index() == 0) generated0->push_back(t);
      if (stop_token_set_.contains(t)) continue;  // never shown
      std::string text = c.matcher.Push(c.decoder.Push(t));
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
      s.Cancel();
    }
    if (*client_gone) break;
  }
  if (cancelled_by_us) {
    while (s.Read(&resp)) {
    }
  }
  const absl::Status st = s.Finish();
  if (cancelled_by_us && open == 0) return absl::OkStatus();
  if (*client_gone) return absl::OkStatus();
  if (st.ok() && open != 0) return absl::InternalError("the stream ended before every completion");
  return st;
}

}  // namespace kvtier::router
