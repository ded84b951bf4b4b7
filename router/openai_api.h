// The OpenAI HTTP API as kvtier-router speaks it (docs/serving.md, "Router"): request parsing and
// validation for /v1/completions and /v1/chat/completions, OpenAI-style error bodies, response
// and Server-Sent-Events chunk formatting. Pure functions over value types (nlohmann-json stays
// inside openai_api.cc: every JSON exception is caught there); thread-safe.
#ifndef KVTIER_ROUTER_OPENAI_API_H_
#define KVTIER_ROUTER_OPENAI_API_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "text/chat_template.h"

namespace kvtier::router {

enum class Endpoint { kCompletions, kChat };

// An error answered to the client: HTTP status plus the OpenAI body
// {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";  // or "server_error"
  std::string param;                           // "" → null
  std::string code;                            // "" → null
};

ApiError InvalidRequest(std::string message, std::string param = "");
ApiError ServerError(int http_status, std::string message);
// The JSON body of `error`.
std::string ErrorBody(const ApiError& error);

// One prompt of a completions request: text, or token ids.
struct Prompt {
  std::optional<std::string> text;
  std::vector<TokenId> token_ids;  // when text is nullopt
};

// A parsed, validated request. Fields the client left out keep their defaults.
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  std::vector<Prompt> prompts;              // completions: one or more
  std::vector<text::ChatMessage> messages;  // chat
  std::optional<int64_t> max_tokens;        // max_tokens / max_completion_tokens, >= 0
  float temperature = 1.0f;                 // OpenAI's default
  float top_p = 1.0f;
  int32_t top_k = 0;  // extension; 0 = off
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;  // stop sequences (non-empty strings)
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool cache = true;           // kvtier extension "cache"
};

// Most stop sequences per request (OpenAI allows 4; a few more are harmless).
inline constexpr int kMaxStopSequences = 16;
// Most completions per request.
inline constexpr int kMaxN = 64;

// Parses and validates `body`. Errors (all 400 invalid_request_error, naming `param`):
// malformed JSON, a body that is not an object, missing or mistyped fields, empty prompt or
// messages, an unknown role, negative max_tokens, temperature outside [0, 2], top_p outside
// (0, 1], negative top_k, n outside [1, kMaxN], too many or empty stop sequences. Does not
// check the model name (the caller knows the served one).
// Returns the request, or the error in `error`.
std::optional<ApiRequest> ParseRequest(Endpoint endpoint, absl::string_view body, ApiError* error);

// Usage accounting of a response.
struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};

// One finished choice of a non-streaming response.
struct Choice {
  int index = 0;
  std::string text;
  std::string finish_reason;  // "stop" | "length"
};

// The non-streaming response body ("text_completion" or "chat.completion").
std::string ResponseBody(Endpoint endpoint, const std::string& id, int64_t created,
                         const std::string& model, const std::vector<Choice>& choices,
                         const Usage& usage);

// One SSE event: "data: " + json + "\n\n".
std::string SseEvent(absl::string_view json);
// "data: [DONE]\n\n".
std::string SseDone();
// The JSON of one streaming chunk. Completions: {"id","object":"text_completion","created",
// "model","choices":[{"index","text","logprobs":null,"finish_reason"}]}. Chat:
// {"id","object":"chat.completion.chunk","created","model","choices":[{"index","delta":{...},
// "logprobs":null,"finish_reason"}]}, where delta holds "role":"assistant" when `role` and
// "content" when `text` is non-empty or no role is given. `finish_reason` "" → null.
std::string ChunkJson(Endpoint endpoint, const std::string& id, int64_t created,
                      const std::string& model, int index, bool role, absl::string_view text,
                      absl::string_view finish_reason);
// The usage chunk (stream_options.include_usage): "choices": [] and "usage".
std::string UsageChunkJson(Endpoint endpoint, const std::string& id, int64_t created,
                           const std::string& model, const Usage& usage);

// GET /v1/models/{id} body: {"id","object":"model","created","owned_by":"kvtier"}.
std::string ModelBody(const std::string& model, int64_t created);
// GET /v1/models body: {"object":"list","data":[ModelBody]}.
std::string ModelsBody(const std::string& model, int64_t created);

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_OPENAI_API_H_
