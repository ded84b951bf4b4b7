#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace kvtier::engine {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || std::isinf(temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: temperature must be finite and >= 0, got ", temperature));
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: top_k must be >= 0, got ", top_k));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: top_p must be in (0, 1], got ", top_p));
  }
  if (max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: max_tokens must be >= 0, got ", max_tokens));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

namespace {

// A uniform double in [0, 1) from the top 53 bits of one draw: the same numbers with every
// standard library (std::uniform_real_distribution's algorithm is implementation-defined).
double Uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

TokenId Sampler::Sample(absl::Span<const float> logits) {
  if (params_.greedy() || logits.empty()) return Argmax(logits);
  // Candidates: every token with a non-NaN, non -inf logit.
  scratch_.clear();
  float max_logit = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    const float v = logits[i];
    if (v > -std::numeric_limits<float>::infinity()) {  // false for NaN and -inf
      scratch_.emplace_back(v, static_cast<TokenId>(i));
      max_logit = std::max(max_logit, v);
    }
  }
  if (scratch_.empty()) return Argmax(logits);
  if (std::isinf(max_logit)) {
    // +inf logits take all the probability: the first one, as greedy would.
    return Argmax(logits);
  }
  // Most likely first; ties by lowest id, so the order (and the draw) is deterministic.
  auto by_prob = [](const std::pair<float, TokenId>& a, const std::pair<float, TokenId>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  const bool need_order = params_.top_k > 0 || params_.top_p < 1.0f;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < scratch_.size()) {
    std::partial_sort(scratch_.begin(), scratch_.begin() + params_.top_k, scratch_.end(), by_prob);
    scratch_.resize(params_.top_k);
  } else if (need_order) {
    std::sort(scratch_.begin(), scratch_.end(), by_prob);
  }
  // Softmax of logits / temperature over the kept tokens (in double), written over the logit.
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  double total = 0.0;
  std::vector<double> probs(scratch_.size());
  for (size_t i = 0; i < scratch_.size(); ++i) {
    probs[i] = std::exp((static_cast<double>(scratch_[i].first) - max_logit) * inv_t);
    total += probs[i];
  }
  size_t keep = scratch_.size();
  if (params_.top_p < 1.0f) {
    // The smallest prefix of the most likely tokens whose probability reaches top_p.
    const double target = static_cast<double>(params_.top_p) * total;
    double cum = 0.0;
    for (size_t i = 0; i < scratch_.size(); ++i) {
      cum += probs[i];
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
    total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += probs[i];
  }
  const double u = Uniform(rng_) * total;
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += probs[i];
    if (u < cum) return scratch_[i].second;
  }
  return scratch_[keep - 1].second;  // rounding left u at the very end
}

bool Sampler::ShouldStop(TokenId token, int generated) const {
  if (generated >= params_.max_tokens) return true;
  return std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
         params_.stop_token_ids.end();
}

TokenId Argmax(absl::Span<const float> logits) {
  if (logits.empty()) return -1;
  size_t best = 0;
  float best_value = std::isnan(logits[0]) ? -std::numeric_limits<float>::infinity() : logits[0];
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > best_value) {  // false for NaN: NaN counts as -inf
      best_value = logits[i];
      best = i;
    }
  }
  return static_cast<TokenId>(best);
}

}  // namespace kvtier::engine
