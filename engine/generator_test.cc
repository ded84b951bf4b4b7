#include "engine/generator.h"

#include <memory>
#include <string>
#include <vector>

#include "engine/testing/test_util.h"
#include "gtest/gtest.h"

namespace kvtier::engine {
namespace {

using ::kvtier::testing::RandomModelDir;
using ::kvtier::testing::RandomTokens;

// The tiny model, written once per process.
const std::string& TinyModelDir() {
  return RandomModelDir("generator_tiny", *PresetConfig("tiny"), 11, DType::kF32);
}

class GeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = Make(EngineOptions());
    ASSERT_NE(engine_, nullptr);
    allocator_ = std::make_unique<PageAllocator>(engine_->num_pages());
  }
  static std::unique_ptr<Engine> Make(EngineOptions options) {
    options.kv_cache_bytes = int64_t{4} << 20;  // 64 pages
    absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(TinyModelDir(), options);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }
  static std::vector<int32_t> Prompt(size_t n, uint64_t seed) {
    return RandomTokens(n, seed, 4096);
  }
  std::vector<int32_t> Run(Engine& engine, PageAllocator& allocator,
                           const std::vector<int32_t>& prompt, const SamplingParams& p) {
    Sequence seq;
    seq.tokens = prompt;
    absl::StatusOr<std::vector<int32_t>> out = Generate(engine, allocator, seq, p);
    EXPECT_TRUE(out.ok()) << out.status();
    ReleasePages(allocator, seq);
    return out.ok() ? *out : std::vector<int32_t>{};
  }

  std::unique_ptr<Engine> engine_;
  std::unique_ptr<PageAllocator> allocator_;
};

TEST_F(GeneratorTest, MaxTokensRespectedAndStateConsistent) {
  Sequence seq;
  seq.tokens = Prompt(30, 1);
  SamplingParams p;
  p.max_tokens = 5;
  absl::StatusOr<std::vector<int32_t>> out = Generate(*engine_, *allocator_, seq, p);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->size(), 5u);
  EXPECT_EQ(seq.tokens.size(), 35u);
  EXPECT_EQ(std::vector<int32_t>(seq.tokens.begin() + 30, seq.tokens.end()), *out);
  // The last generated token's K/V is not computed.
  EXPECT_EQ(seq.num_computed, 34);
  EXPECT_EQ(seq.pages.size(), 3u);  // 34 positions in pages of 16
  EXPECT_EQ(allocator_->free_pages(), allocator_->num_pages() - 3);
  ReleasePages(*allocator_, seq);
  EXPECT_TRUE(seq.pages.empty());
  EXPECT_EQ(seq.num_computed, 0);
  EXPECT_EQ(allocator_->free_pages(), allocator_->num_pages());

  p.max_tokens = 0;
  seq.tokens = Prompt(30, 1);
  out = Generate(*engine_, *allocator_, seq, p);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->empty());
  EXPECT_EQ(seq.num_computed, 30);
  ReleasePages(*allocator_, seq);
}

TEST_F(GeneratorTest, StopTokenEndsGenerationAndIsIncluded) {
  const std::vector<int32_t> prompt = Prompt(20, 2);
  SamplingParams p;
  p.max_tokens = 24;
  const std::vector<int32_t> free_run = Run(*engine_, *allocator_, prompt, p);
  ASSERT_EQ(free_run.size(), 24u);
  // Stop at the first occurrence of the 6th token.
  const int32_t stop = free_run[5];
  const size_t first = std::find(free_run.begin(), free_run.end(), stop) - free_run.begin();
  p.stop_token_ids = {stop};
  const std::vector<int32_t> stopped = Run(*engine_, *allocator_, prompt, p);
  EXPECT_EQ(stopped, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
}

TEST_F(GeneratorTest, ChunkedPrefillGivesTheSameTokens) {
  EngineOptions small;
  small.max_batch_tokens = 7;
  std::unique_ptr<Engine> chunked = Make(small);
  ASSERT_NE(chunked, nullptr);
  PageAllocator chunked_alloc(chunked->num_pages());
  const std::vector<int32_t> prompt = Prompt(50, 3);
  SamplingParams greedy;
  greedy.max_tokens = 20;
  EXPECT_EQ(Run(*engine_, *allocator_, prompt, greedy),
            Run(*chunked, chunked_alloc, prompt, greedy));
  SamplingParams sampled = greedy;
  sampled.temperature = 0.8f;
  sampled.top_p = 0.95f;
  sampled.seed = 99;
  EXPECT_EQ(Run(*engine_, *allocator_, prompt, sampled),
            Run(*chunked, chunked_alloc, prompt, sampled));
  // Same prompt, same seed, same engine: same tokens.
  EXPECT_EQ(Run(*engine_, *allocator_, prompt, sampled),
            Run(*engine_, *allocator_, prompt, sampled));
}

TEST_F(GeneratorTest, SecondTurnContinuesTheSequence) {
  // Turn 1, then more user tokens, then turn 2, on the same pages...
  Sequence seq;
  seq.tokens = Prompt(25, 4);
  SamplingParams p;
  p.max_tokens = 10;
  ASSERT_TRUE(Generate(*engine_, *allocator_, seq, p).ok());
  const std::vector<int32_t> more = Prompt(9, 5);
  seq.tokens.insert(seq.tokens.end(), more.begin(), more.end());
  const std::vector<int32_t> history = seq.tokens;
  absl::StatusOr<std::vector<int32_t>> turn2 = Generate(*engine_, *allocator_, seq, p);
  ASSERT_TRUE(turn2.ok()) << turn2.status();
  // ...equals generating from the whole history at once.
  EXPECT_EQ(*turn2, Run(*engine_, *allocator_, history, p));
  ReleasePages(*allocator_, seq);
}

TEST_F(GeneratorTest, PrefillNeedsUncomputedTokens) {
  Sequence seq;
  seq.tokens = Prompt(10, 6);
  std::vector<float> logits(engine_->config().vocab_size);
  ASSERT_TRUE(Prefill(*engine_, *allocator_, seq, absl::MakeSpan(logits)).ok());
  EXPECT_EQ(seq.num_computed, 10);
  EXPECT_EQ(Prefill(*engine_, *allocator_, seq, absl::MakeSpan(logits)).code(),
            absl::StatusCode::kInvalidArgument);
  ReleasePages(*allocator_, seq);
}

TEST_F(GeneratorTest, EnsurePagesTakesNothingWhenShort) {
  PageAllocator alloc(3);
  Sequence seq;
  ASSERT_TRUE(EnsurePages(alloc, 16, 17, seq).ok());
  EXPECT_EQ(seq.pages.size(), 2u);
  ASSERT_TRUE(EnsurePages(alloc, 16, 32, seq).ok());  // already covered
  EXPECT_EQ(seq.pages.size(), 2u);
  EXPECT_EQ(EnsurePages(alloc, 16, 64, seq).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(seq.pages.size(), 2u);
  EXPECT_EQ(alloc.free_pages(), 1);
  ReleasePages(alloc, seq);
  EXPECT_EQ(alloc.free_pages(), 3);
}

TEST_F(GeneratorTest, RejectsBadParams) {
  Sequence seq;
  seq.tokens = Prompt(5, 7);
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_EQ(Generate(*engine_, *allocator_, seq, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(seq.pages.empty());
}

}  // namespace
}  // namespace kvtier::engine
