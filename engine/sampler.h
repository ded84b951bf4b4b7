// Token sampling from logits: greedy, temperature, top-k, top-p, with a per-request seed.
//
// A Sampler belongs to one sequence (it owns that sequence's random stream); not thread-safe.
#ifndef KVTIER_ENGINE_SAMPLER_H_
#define KVTIER_ENGINE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvtier/token.h"

namespace kvtier::engine {

struct SamplingParams {
  // 0 = greedy (argmax; ties go to the lowest id). Default: 0.
  float temperature = 0.0f;
  // Keep only the k most likely tokens; 0 = all. Default: 0.
  int top_k = 0;
  // Keep the smallest set of most likely tokens whose probability reaches top_p. Default: 1.
  float top_p = 1.0f;
  // Seed of the sequence's random stream: same seed, same logits → same tokens. Default: 0.
  uint64_t seed = 0;
  // Most tokens generated. Default: 16.
  int max_tokens = 16;
  // Generation stops after emitting any of these (the stop token is included in the output).
  std::vector<TokenId> stop_token_ids;

  // InvalidArgument for negative temperature/top_k/max_tokens or top_p outside (0, 1].
  absl::Status Validate() const;
  bool greedy() const { return temperature == 0.0f; }
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks the next token from one row of logits.
  TokenId Sample(absl::Span<const float> logits);
  // Whether generation must stop after `token`, the `generated`-th generated token.
  bool ShouldStop(TokenId token, int generated) const;

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, TokenId>> scratch_;
};

// Lowest index of the largest value.
TokenId Argmax(absl::Span<const float> logits);

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_SAMPLER_H_
