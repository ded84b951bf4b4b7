// Single-sequence and batched generation on top of Engine: chunked prefill, decode steps,
// sampling, page bookkeeping. The building block of kvtier-model and the workers.
//
// Not thread-safe: used by the thread that drives the Engine.
#ifndef KVTIER_ENGINE_GENERATOR_H_
#define KVTIER_ENGINE_GENERATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/engine.h"
#include "engine/page_allocator.h"
#include "engine/sampler.h"

namespace kvtier::engine {

// A sequence's tokens and the pages that hold their K/V.
struct Sequence {
  std::vector<TokenId> tokens;  // prompt, then generated tokens
  std::vector<int32_t> pages;   // page i holds positions [i*B, (i+1)*B)
  int32_t num_computed = 0;     // leading tokens whose K/V is in `pages`
};

// Grows seq.pages so they cover `num_tokens` positions. ResourceExhausted when the allocator
// has too few pages (nothing taken).
absl::Status EnsurePages(PageAllocator& allocator, int block_tokens, int num_tokens, Sequence& seq);
// Returns every page of `seq` to the allocator and clears its page table.
void ReleasePages(PageAllocator& allocator, Sequence& seq);

// Computes K/V of tokens[num_computed, size) in chunks of at most max_batch_tokens and writes
// the logits after the last token into `last_logits` (vocab_size floats). Needs at least one
// uncomputed token.
absl::Status Prefill(Engine& engine, PageAllocator& allocator, Sequence& seq,
                     absl::Span<float> last_logits);

// Prefill, then decode with `params` until a stop token or max_tokens. Returns the generated
// tokens (also appended to seq.tokens). Greedy decoding uses Engine::ForwardGreedy. The
// caller keeps the pages (ReleasePages when done), so a later turn can continue the sequence.
absl::StatusOr<std::vector<TokenId>> Generate(Engine& engine, PageAllocator& allocator,
                                              Sequence& seq, const SamplingParams& params);

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_GENERATOR_H_
