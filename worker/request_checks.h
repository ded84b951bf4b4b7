// Checks of a request's prompt shared by both workers, with messages meant for API users.
//
// Pure functions; thread-safe.
#ifndef KVTIER_WORKER_REQUEST_CHECKS_H_
#define KVTIER_WORKER_REQUEST_CHECKS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model_config.h"

namespace kvtier::worker {

// Most tokens (prompt + generated) of one sequence: max_position_embeddings, and the sliding
// window when the model has one (the engine does not implement sliding-window attention).
int64_t MaxContext(const engine::ModelConfig& config);

// The prompt as engine token ids. InvalidArgument when it is empty, longer than MaxContext, or
// holds an id outside [0, vocab_size).
absl::StatusOr<std::vector<int32_t>> CheckPrompt(absl::Span<const uint32_t> tokens,
                                                 const engine::ModelConfig& config);

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_REQUEST_CHECKS_H_
