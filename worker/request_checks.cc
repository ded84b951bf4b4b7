#include "worker/request_checks.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/request_id.h"

namespace kvtier::worker {

int64_t MaxContext(const engine::ModelConfig& config) {
  int64_t limit = config.max_position_embeddings;
  if (config.sliding_window > 0) limit = std::min<int64_t>(limit, config.sliding_window);
  return limit;
}

absl::Status CheckPrompt(absl::Span<const TokenId> tokens, const engine::ModelConfig& config) {
  if (tokens.empty()) return absl::InvalidArgumentError("the prompt is empty");
  const int64_t limit = MaxContext(config);
  if (static_cast<int64_t>(tokens.size()) > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", tokens.size(), " tokens, more than the model's context of ", limit));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at position ", i,
                                                     " is outside the vocabulary (vocab_size ",
                                                     config.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRequestId(absl::string_view id) {
  // The router's id (at most kMaxRequestIdChars) with the call's suffix ("-<i>-prefill").
  constexpr size_t kMaxCallIdChars = 128;
  if (id.empty() || IsValidRequestId(id, kMaxCallIdChars)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("request_id must be at most ", kMaxCallIdChars,
                                                 " characters of [A-Za-z0-9._:-]"));
}

}  // namespace kvtier::worker
