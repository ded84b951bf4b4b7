// `kvtier chat`: a multi-turn conversation with a kvtier-router's /v1/chat/completions, streamed
// (SSE), keeping the history and printing per turn the reply, the time to the first content
// chunk, the decode rate and how many prompt tokens came from the cache tier.
//
// Plain functions; one conversation per call, single-threaded.
#ifndef KVTIER_DEPLOY_CHAT_H_
#define KVTIER_DEPLOY_CHAT_H_

#include <istream>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier::deploy {

struct ChatOptions {
  // Router base URL: http(s)://HOST:PORT, with or without a trailing /v1. Required.
  std::string url;
  // HTTPS: PEM CA certificates that verify the router; empty: the system's. Default: empty.
  std::string ca_file;
  // Sent as "Authorization: Bearer API_KEY"; empty: none. Default: empty.
  std::string api_key;
  // Served model id; empty: the first entry of GET /v1/models. Default: empty.
  std::string model;
  // User messages, one per line (blank lines skipped); empty: `turns` or stdin. Default: empty.
  std::string script;
  // Without a script: this many turns from a built-in list (0: read stdin). Default: 0.
  int turns = 0;
  // max_tokens of each reply. Default: 64.
  int max_tokens = 64;
  // false sends "cache": false (no cache reads or writes). Default: true.
  bool cache = true;
  // Sampling temperature. Default: 0 (greedy).
  double temperature = 0;
  // The system message; empty: none. Default: a few sentences (several blocks).
  std::string system =
      "You are the kvtier demo assistant. kvtier keeps the attention keys and values of earlier "
      "turns in a cache tier, so each new turn of this conversation only computes its new "
      "tokens. Answer briefly.";
  // Per-request deadline. Default: 120 s.
  int timeout_s = 120;
};

// What one turn measured.
struct TurnStats {
  std::string reply;
  double ttft_ms = 0;         // request sent -> first content chunk
  double tokens_per_s = 0;    // completion tokens / (last chunk - first chunk)
  int64_t prompt_tokens = 0;  // usage.prompt_tokens
  int64_t cached_tokens = 0;  // usage.prompt_tokens_details.cached_tokens
  int64_t completion_tokens = 0;
};

// The built-in user messages of `--turns` (cycled).
const std::vector<std::string>& BuiltinUserMessages();

// Runs the conversation; user messages come from the script, the built-in list or `in`
// (interactive: one line per turn, an empty line or EOF ends). Writes to `out`. Returns the
// per-turn stats.
absl::StatusOr<std::vector<TurnStats>> RunChat(const ChatOptions& options, std::istream& in,
                                               std::ostream& out);

}  // namespace kvtier::deploy

#endif  // KVTIER_DEPLOY_CHAT_H_
