#include "engine/generator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvtier::engine {

absl::Status EnsurePages(PageAllocator& allocator, int block_tokens, int num_tokens,
                         Sequence& seq) {
  if (block_tokens <= 0 || num_tokens < 0) {
    return absl::InvalidArgumentError("EnsurePages: block_tokens must be positive");
  }
  const size_t needed = (static_cast<size_t>(num_tokens) + block_tokens - 1) / block_tokens;
  if (seq.pages.size() >= needed) return absl::OkStatus();
  KVTIER_ASSIGN_OR_RETURN(std::vector<int32_t> pages,
                          allocator.Allocate(static_cast<int>(needed - seq.pages.size())));
  seq.pages.insert(seq.pages.end(), pages.begin(), pages.end());
  return absl::OkStatus();
}

void ReleasePages(PageAllocator& allocator, Sequence& seq) {
  allocator.Free(seq.pages);
  seq.pages.clear();
  seq.num_computed = 0;  // no K/V is held any more
}

absl::Status Prefill(Engine& engine, PageAllocator& allocator, Sequence& seq,
                     absl::Span<float> last_logits) {
  const int vocab = engine.config().vocab_size;
  if (last_logits.size() < static_cast<size_t>(vocab)) {
    return absl::InvalidArgumentError("prefill: logits buffer smaller than vocab_size");
  }
  const int total = static_cast<int>(seq.tokens.size());
  if (seq.num_computed < 0 || seq.num_computed >= total) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill: nothing to compute (", seq.num_computed, " of ", total, " tokens computed)"));
  }
  KVTIER_RETURN_IF_ERROR(EnsurePages(allocator, engine.kv_layout().block_tokens, total, seq));
  const int chunk = engine.options().max_batch_tokens;
  while (seq.num_computed < total) {
    const int n = std::min(chunk, total - seq.num_computed);
    SeqInput in;
    in.tokens = absl::MakeConstSpan(seq.tokens).subspan(seq.num_computed, n);
    in.start_pos = seq.num_computed;
    in.pages = seq.pages;
    KVTIER_RETURN_IF_ERROR(engine.Forward(absl::MakeConstSpan(&in, 1), last_logits));
    seq.num_computed += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Generate(Engine& engine, PageAllocator& allocator,
                                              Sequence& seq, const SamplingParams& params) {
  KVTIER_RETURN_IF_ERROR(params.Validate());
  const ModelConfig& cfg = engine.config();
  std::vector<float> logits(cfg.vocab_size);
  KVTIER_RETURN_IF_ERROR(Prefill(engine, allocator, seq, absl::MakeSpan(logits)));
  std::vector<TokenId> out;
  if (params.max_tokens == 0) return out;

  // The engine computes positions below this limit; a token sampled at the limit is still
  // returned, but nothing can follow it.
  int64_t limit = cfg.max_position_embeddings;
  if (cfg.sliding_window > 0) limit = std::min<int64_t>(limit, cfg.sliding_window);

  Sampler sampler(params);
  const int block_tokens = engine.kv_layout().block_tokens;
  TokenId token = sampler.Sample(logits);
  while (true) {
    out.push_back(token);
    seq.tokens.push_back(token);
    if (sampler.ShouldStop(token, static_cast<int>(out.size()))) break;
    if (static_cast<int64_t>(seq.tokens.size()) >= limit) break;
    // One decode step: the K/V of `token`, and the logits after it.
    KVTIER_RETURN_IF_ERROR(
        EnsurePages(allocator, block_tokens, static_cast<int>(seq.tokens.size()), seq));
    SeqInput in;
    in.tokens = absl::MakeConstSpan(&seq.tokens.back(), 1);
    in.start_pos = seq.num_computed;
    in.pages = seq.pages;
    if (params.greedy()) {
      KVTIER_RETURN_IF_ERROR(
          engine.ForwardGreedy(absl::MakeConstSpan(&in, 1), absl::MakeSpan(&token, 1)));
    } else {
      KVTIER_RETURN_IF_ERROR(engine.Forward(absl::MakeConstSpan(&in, 1), absl::MakeSpan(logits)));
      token = sampler.Sample(logits);
    }
    ++seq.num_computed;
  }
  return out;
}

}  // namespace kvtier::engine
