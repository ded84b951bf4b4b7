// Generation of one HTTP request's completions (docs/serving.md, "Router"): for each prompt,
// pick a decode worker (WorkerPool), have a prefill worker compute the prompt's blocks first
// when enough of it is uncached, stream Generate and turn the tokens into text incrementally
// (text::StreamDecoder, StopMatcher, stop tokens never shown), retry once on another decode
// worker when the first fails before any text was emitted, and remember the sequence's block
// keys on the worker on success. Usage counts what the decode worker reported, less the tokens
// prefill computed for this very request (they were not cached for the client).
//
// Talks to the workers only through WorkerClient (router/worker_client.h). Borrows the tokenizer
// and the pool, which must outlive it; owns the generation counters and histograms (in the
// caller's MetricsRegistry). Thread-safe: Run is called by many request threads at once and
// blocks its caller.
#ifndef KVTIER_ROUTER_GENERATION_H_
#define KVTIER_ROUTER_GENERATION_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/metrics.h"
#include "router/openai_api.h"
#include "router/router_options.h"
#include "router/worker_client.h"
#include "router/worker_pool.h"
#include "text/tokenizer.h"

namespace kvtier::router {

// One request's prompts and what to generate from each.
struct GenerationRequest {
  // The response id. Default: "".
  std::string id;
  // The request id of the traces (docs/observability.md, "Request tracing"): the client's
  // X-Request-Id or `id`; the worker calls' request ids derive from it ("<request_id>-<i>" for
  // prompt i, "<request_id>-<i>-prefill"). Empty: `id`. Default: "".
  std::string request_id;
  // When the HTTP request arrived (for the time to the first token). Default: now.
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  // Token ids of each prompt; choice index = prompt × n + i. Default: none.
  std::vector<std::vector<TokenId>> prompts;
  // Most tokens per choice (0: every choice is empty, finish_reason "length"). Default: 0.
  uint32_t max_tokens = 0;
  // Default: 1.
  float temperature = 1.0f;
  // Default: 1.
  float top_p = 1.0f;
  // Default: 0 (off).
  int32_t top_k = 0;
  // Default: 0.
  uint64_t seed = 0;
  // Choices per prompt. Default: 1.
  uint32_t n = 1;
  // Use the cache tier (prefill calls, use_cache, remembered keys). Default: true.
  bool cache = true;
  // Stop sequences. Default: none.
  std::vector<std::string> stop;
  // The caller's tenant (its API key's): the workers key its blocks in its own namespace, so
  // it is served only its own tenant's cached blocks (docs/security.md). Default: "" (no API
  // keys).
  std::string tenant;
};

// Called for each piece of a choice's text, in order; `finish_reason` is non-empty on its last
// call. Returns false when the client is gone.
using EmitFn =
    std::function<bool(int index, const std::string& text, const std::string& finish_reason)>;

// Where a request's time went (docs/observability.md, "Request tracing"), in milliseconds.
struct RequestTiming {
  // The prefill call of the first prompt (0: none).
  double prefill_ms = 0;
  // The decode worker's timing of the first prompt's first completion (its first message).
  v1::Timing worker;
  // Prompt tokens from the worker's own pages and from the store, over every prompt (the store's
  // include blocks the prefill worker computed for this very request).
  uint32_t first_tier_tokens = 0;
  uint32_t store_tokens = 0;
  // Request start to the first text emitted, and to the end.
  double ttft_ms = 0;
  double total_ms = 0;
};

// The `Server-Timing` header value of `t`: "prefill;dur=X, queue;dur=Y, fetch;dur=Z,
// compute;dur=W, ttft;dur=T".
std::string ServerTiming(const RequestTiming& t);
// The fields of the router's line per finished request after "req=ID status=S ": "prompt=N
// cached=M (first_tier=A store=B) prefill_call=Xms queue=Yms fetch=Zms compute=Wms ttft=Tms
// total=Ums".
std::string TimingLogFields(const Usage& usage, const RequestTiming& t);

struct GenerationResult {
  Usage usage;
  RequestTiming timing;
  // `emit` returned false: the generation was cancelled.
  bool client_gone = false;
  // Why the request failed (what was emitted before stands).
  std::optional<ApiError> error;
};

class Generation {
 public:
  // Uses options.skip_prefill_below and options.request_timeout_ms. `stop_token_ids` are sent to
  // the decode workers and never shown as text.
  Generation(const RouterOptions& options, const text::Tokenizer* tokenizer,
             std::vector<TokenId> stop_token_ids, WorkerPool* pool, MetricsRegistry* metrics);

  // Runs the prompts in order, emitting every piece of text; stops at the first error or when
  // the client is gone.
  GenerationResult Run(const GenerationRequest& request, const EmitFn& emit);

 private:
  // The prompt `prompt_index` of `request`, retried once on another decode worker. Adds the
  // worker's tokens by source to *timing, and (prompt 0) the prefill and worker timings.
  std::optional<ApiError> RunPrompt(const GenerationRequest& request, size_t prompt_index,
                                    const EmitFn& emit, Usage* usage, bool* client_gone,
                                    RequestTiming* timing);
  // Prefill on the least-loaded live prefill worker when at least skip_prefill_below tokens
  // of the prompt are uncached. Returns the prompt tokens it computed (0 when skipped or
  // failed). The call carries request.tenant.
  uint32_t MaybePrefill(const GenerationRequest& request, const std::string& request_id,
                        const std::vector<TokenId>& prompt, size_t cached_prefix_tokens);
  // One Generate call. `emitted` tells whether any text reached `emit`; `generated0` gets the
  // tokens of choice 0 and *timing the worker's Timing of its first message.
  absl::Status GenerateOn(WorkerClient& worker, const GenerationRequest& request,
                          size_t prompt_index, const EmitFn& emit, Usage* usage, bool* emitted,
                          bool* client_gone, std::vector<TokenId>* generated0, v1::Timing* timing);

  const int64_t skip_prefill_below_;
  const absl::Duration request_timeout_;
  const text::Tokenizer* const tokenizer_;
  const std::vector<TokenId> stop_token_ids_;
  const absl::flat_hash_set<TokenId> stop_token_set_;
  WorkerPool* const pool_;

  Counter* const prompt_tokens_total_;
  Counter* const completion_tokens_total_;
  Counter* const cached_tokens_total_;
  Counter* const prefill_calls_ok_;
  Counter* const prefill_calls_failed_;
  Counter* const prefill_skipped_;
  Counter* const retries_total_;
  Histogram* const ttft_seconds_;
  Histogram* const latency_seconds_;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_GENERATION_H_
