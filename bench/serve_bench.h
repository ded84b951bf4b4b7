// `kvtier-bench serve`: replays a multi-turn chat workload against a running kvtier cluster
// through the router's OpenAI API (docs/serving.md) and reports time to first token, time per
// output token, throughput and the cache hit rate, with the cache tier off and on in the same
// run. Results: docs/BENCHMARKS.md.
//
// Workload: `conversations` conversations of `turns` turns each.
// Every conversation starts with the same system prompt (about `system_prompt_tokens` tokens,
// built from repeated words); turn t sends the whole history so far (system, then alternating
// user / assistant messages, the assistant's being the replies it got) to
// /v1/chat/completions with stream=true, stream_options.include_usage=true and temperature 0.
// `concurrency` conversations are in flight at once, one thread each.
//
// Phases: the workload runs twice, first with `"cache": false` (the tier off: no reads, no
// writes), then with the tier on ("cache" omitted). The off phase goes first so that whatever
// warms up in the cluster (page faults of the KV cache, allocator, thread pools) favours the
// off phase, not the tier. Each phase's system prompt starts with a tag naming the phase and a
// random run id, so the on phase can hit nothing cached by an earlier run or phase: every hit
// it reports comes from its own earlier requests.
//
// Metrics, per phase: TTFT = time from sending the request to the first non-empty content
// delta (p50/p99 over all turns, turn 1, turns >= 2); TPOT = (time of the finish chunk - time
// of the first content delta) / (completion_tokens - 1), over requests with >= 2 completion
// tokens; output tokens/s and requests/s over the phase's wall time; cache hit rate = sum of
// usage.prompt_tokens_details.cached_tokens / sum of usage.prompt_tokens. Failed requests
// (transport errors, non-200, an SSE error event, a stream without [DONE]) are counted, and
// the rest of that conversation is skipped (its history would lack a reply).
//
// Thread-safety: RunServeBench is meant to be called once, from main().
#ifndef KVTIER_BENCH_SERVE_BENCH_H_
#define KVTIER_BENCH_SERVE_BENCH_H_

#include <cstdint>
#include <string>

namespace kvtier::bench {

struct ServeBenchOptions {
  // The router, "http(s)://host:port". Required.
  std::string url;
  // HTTPS: PEM CA certificates that verify the router (`kvtier up`: <run_dir>/tls/ca.pem).
  // Default: the system's.
  std::string ca_file;
  // File holding the API key sent as "Authorization: Bearer KEY" (`kvtier up`:
  // <run_dir>/api_key). Default: none.
  std::string api_key_file;
  // The served model id; empty asks GET /v1/models (first entry). Default: empty.
  std::string model;
  // Conversations per phase. Default: 8.
  int conversations = 8;
  // Turns (requests) per conversation. Default: 5.
  int turns = 5;
  // Approximate length of the shared system prompt, in words (about tokens). Default: 200.
  int system_prompt_tokens = 200;
  // Approximate length of each user message, in words. Default: 40.
  int user_tokens = 40;
  // max_tokens of each reply. Default: 32.
  int max_tokens = 32;
  // Conversations in flight at once. Default: 4.
  int concurrency = 4;
  // Seed of the user texts. Default: 1.
  uint64_t seed = 1;
  // Deadline of one request, seconds. Default: 600.
  int timeout_s = 600;
  // Seconds between progress lines on stderr (bench/bench_util.h Progress); 0: none.
  // Default: 10.
  double progress_s = 10;
  // Print one JSON object as the last stdout line. Default: false.
  bool json = false;
};

// Runs both phases; returns the process exit code: 0 when the workload ran (failed requests
// and a missed target are reported, not errors), 1 when the router cannot be reached or
// answers GET /v1/models wrongly.
int RunServeBench(const ServeBenchOptions& options);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_SERVE_BENCH_H_
