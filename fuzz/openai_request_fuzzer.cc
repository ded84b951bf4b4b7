// libFuzzer target: the router's OpenAI request parsing (router/openai_api.h), the bytes of an
// HTTP body as any client may send them. The first byte picks the endpoint, the rest is the
// body. Checks that a parse either fails with a 400 and a message, or gives a request within
// the documented bounds.
#include <cstdint>
#include <cstdlib>
#include <optional>

#include "fuzz/fuzz_util.h"
#include "router/openai_api.h"

namespace kvtier::router {
namespace {

bool WithinBounds(const ApiRequest& r) {
  if (r.n < 1 || r.n > kMaxN || static_cast<int>(r.stop.size()) > kMaxStopSequences) return false;
  if (!(r.temperature >= 0.0f && r.temperature <= 2.0f && r.top_p > 0.0f && r.top_p <= 1.0f)) {
    return false;
  }
  if (r.top_k < 0 || (r.max_tokens.has_value() && *r.max_tokens < 0)) return false;
  if (r.endpoint == Endpoint::kCompletions ? r.prompts.empty() : r.messages.empty()) return false;
  for (const Prompt& p : r.prompts) {
    for (TokenId t : p.token_ids) {
      if (t < 0) return false;
    }
  }
  for (const std::string& s : r.stop) {
    if (s.empty()) return false;
  }
  return true;
}

void Check(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const Endpoint endpoint = (data[0] & 1) != 0 ? Endpoint::kChat : Endpoint::kCompletions;
  ApiError error;
  std::optional<ApiRequest> req = ParseRequest(endpoint, fuzz::AsText(data + 1, size - 1), &error);
  if (!req.has_value()) {
    if (error.http_status != 400 || error.message.empty() || ErrorBody(error).empty()) {
      std::abort();
    }
    return;
  }
  if (!WithinBounds(*req)) std::abort();
}

}  // namespace
}  // namespace kvtier::router

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::router::Check(data, size);
  return 0;
}
