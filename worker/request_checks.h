// Checks of a request's prompt and id shared by both workers, with messages meant for API users.
//
// Pure functions; thread-safe.
#ifndef KVTIER_WORKER_REQUEST_CHECKS_H_
#define KVTIER_WORKER_REQUEST_CHECKS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/model_config.h"
#include "kvtier/token.h"

namespace kvtier::worker {

// Most tokens (prompt + generated) of one sequence: max_position_embeddings, and the sliding
// window when the model has one (the engine does not implement sliding-window attention).
int64_t MaxContext(const engine::ModelConfig& config);

// InvalidArgument when the prompt is empty, longer than MaxContext, or holds an id outside
// [0, vocab_size).
absl::Status CheckPrompt(absl::Span<const TokenId> tokens, const engine::ModelConfig& config);

// InvalidArgument unless `id` is empty or 1..128 characters of [A-Za-z0-9._:-]: it is named in
// log lines (docs/observability.md, "Request tracing"), which it must not be able to forge.
absl::Status CheckRequestId(absl::string_view id);

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_REQUEST_CHECKS_H_
