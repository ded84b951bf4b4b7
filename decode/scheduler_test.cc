#include "decode/scheduler.h"

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cachestore/fake_store_client.h"
#include "engine/generator.h"
#include "engine/testing/test_util.h"
#include "gtest/gtest.h"

namespace kvtier::decode {
namespace {

using ::kvtier::testing::RandomModelDir;
using worker::FetchPath;
using worker::FinishReason;
using worker::TokenSource;

// The tiny model (fp32), written once per process.
const std::string& ModelDir() {
  return RandomModelDir("scheduler_tiny", *engine::PresetConfig("tiny"), 11, engine::DType::kF32);
}

std::vector<int32_t> Prompt(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = static_cast<int32_t>(3 + rng() % 4000);
  return out;
}

// What a request produced, per completion index.
struct Completion {
  std::vector<int32_t> tokens;
  uint32_t prompt_tokens = 0;
  uint32_t cached_tokens = 0;
  FirstTokenTiming timing;
  int first_events = 0;
  std::string finish_reason;
};
struct Result {
  std::map<int, Completion> by_index;
  absl::Status status;
};

Result Collect(GenerationStream& stream) {
  Result r;
  std::vector<StreamEvent> events;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  bool more = true;
  while (more && absl::Now() < deadline) {
    events.clear();
    more = stream.Next(&events, absl::Milliseconds(100));
    for (StreamEvent& e : events) {
      Completion& c = r.by_index[e.index];
      EXPECT_TRUE(c.finish_reason.empty()) << "event after the last one of index " << e.index;
      if (e.first) {
        ++c.first_events;
        c.prompt_tokens = e.prompt_tokens;
        c.cached_tokens = e.cached_tokens;
        c.timing = e.timing;
      }
      c.tokens.insert(c.tokens.end(), e.tokens.begin(), e.tokens.end());
      if (!e.finish_reason.empty()) c.finish_reason = e.finish_reason;
    }
  }
  EXPECT_FALSE(more) << "stream did not finish";
  r.status = stream.status();
  return r;
}

class SchedulerTest : public ::testing::Test {
 protected:
  static constexpr int kPages = 64;  // 4 MiB of 64 KiB pages

  void SetUp() override {
    engine::EngineOptions eo;
    eo.kv_cache_bytes = int64_t{kPages} * 64 * 1024;
    eo.max_batch_tokens = 64;  // prompts over 64 tokens are prefilled in chunks
    eo.max_batch_seqs = 8;
    eo.num_threads = 1;
    auto e = engine::Engine::Create(ModelDir(), eo);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    ASSERT_EQ(engine_->num_pages(), kPages);
    auto r = engine::Engine::Create(ModelDir(), eo);
    ASSERT_TRUE(r.ok()) << r.status();
    reference_ = std::move(*r);
    ref_alloc_ = std::make_unique<engine::PageAllocator>(reference_->num_pages());
    tier_ = std::make_unique<worker::KvTier>(engine_.get(), nullptr);
    SchedulerOptions so;
    so.max_batch_tokens = 64;
    so.max_batch_seqs = 8;
    so.max_queued_requests = 16;
    scheduler_ = std::make_unique<Scheduler>(engine_.get(), tier_.get(), so);
    scheduler_->Start();
  }
  void TearDown() override {
    if (scheduler_ != nullptr) scheduler_->Stop();
  }

  // engine::Generate on a separate engine: the full recompute.
  std::vector<int32_t> Reference(const std::vector<int32_t>& prompt,
                                 const engine::SamplingParams& p) {
    engine::Sequence seq;
    seq.tokens = prompt;
    auto out = engine::Generate(*reference_, *ref_alloc_, seq, p);
    EXPECT_TRUE(out.ok()) << out.status();
    engine::ReleasePages(*ref_alloc_, seq);
    return out.ok() ? *out : std::vector<int32_t>{};
  }

  static GenerateSpec Spec(std::vector<int32_t> prompt, int max_tokens) {
    GenerateSpec s;
    s.prompt = std::move(prompt);
    s.sampling.max_tokens = max_tokens;
    return s;
  }

  std::shared_ptr<GenerationStream> Submit(GenerateSpec spec) {
    auto s = scheduler_->Submit(std::move(spec));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : nullptr;
  }

  Result Run(GenerateSpec spec) {
    auto s = Submit(std::move(spec));
    if (s == nullptr) return {};
    return Collect(*s);
  }

  void ExpectIdleAndPagesBack() {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (scheduler_->stats().active_requests != 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    const Scheduler::Stats st = scheduler_->stats();
    EXPECT_EQ(st.active_requests, 0);
    EXPECT_EQ(st.running_sequences, 0);
    EXPECT_EQ(st.free_pages, kPages - st.cached_pages);
    EXPECT_EQ(st.available_pages, kPages);  // every cached page is unreferenced
  }

  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::Engine> reference_;
  std::unique_ptr<engine::PageAllocator> ref_alloc_;
  std::unique_ptr<worker::KvTier> tier_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, SingleGreedyRequestMatchesGenerate) {
  const std::vector<int32_t> prompt = Prompt(40, 1);
  Result r = Run(Spec(prompt, 20));
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.by_index.size(), 1u);
  const Completion& c = r.by_index[0];
  EXPECT_EQ(c.tokens, Reference(prompt, Spec(prompt, 20).sampling));
  EXPECT_EQ(c.finish_reason, "length");
  EXPECT_EQ(c.prompt_tokens, 40u);
  EXPECT_EQ(c.cached_tokens, 0u);
  EXPECT_EQ(c.first_events, 1);
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, ConcurrentRequestsEachMatchTheirSoloResult) {
  // Lengths around block and chunk boundaries; 150 tokens take three prefill chunks while the
  // others decode.
  const std::vector<size_t> lengths = {5, 37, 100, 150};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::shared_ptr<GenerationStream>> streams;
  for (size_t i = 0; i < lengths.size(); ++i) {
    prompts.push_back(Prompt(lengths[i], 10 + i));
    streams.push_back(Submit(Spec(prompts.back(), 12 + static_cast<int>(i))));
  }
  for (size_t i = 0; i < lengths.size(); ++i) {
    ASSERT_NE(streams[i], nullptr);
    Result r = Collect(*streams[i]);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.by_index[0].tokens,
              Reference(prompts[i], Spec(prompts[i], 12 + static_cast<int>(i)).sampling))
        << "request " << i;
  }
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, NCompletionsSampleWithTheirOwnSeeds) {
  const std::vector<int32_t> prompt = Prompt(50, 3);
  GenerateSpec spec = Spec(prompt, 10);
  spec.n = 2;
  spec.sampling.temperature = 50.0f;  // close to uniform: the two completions differ
  spec.sampling.seed = 7;
  Result r = Run(spec);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.by_index.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    engine::SamplingParams p = spec.sampling;
    p.seed = 7 + i;
    EXPECT_EQ(r.by_index[i].tokens, Reference(prompt, p)) << "index " << i;
    EXPECT_EQ(r.by_index[i].first_events, 1);
    EXPECT_EQ(r.by_index[i].prompt_tokens, 50u);
    EXPECT_EQ(r.by_index[i].finish_reason, "length");
  }
  EXPECT_NE(r.by_index[0].tokens, r.by_index[1].tokens);
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, CancellationFreesEveryPage) {
  auto stream = Submit(Spec(Prompt(20, 4), 800));
  ASSERT_NE(stream, nullptr);
  std::vector<StreamEvent> events;
  while (events.empty()) stream->Next(&events, absl::Seconds(10));
  EXPECT_GT(scheduler_->stats().running_sequences, 0);
  const worker::WorkerMetrics& m = *tier_->metrics();
  EXPECT_EQ(m.num_requests_running->Value(), 1);
  EXPECT_EQ(m.num_requests_waiting->Value(), 0);
  EXPECT_GT(m.kv_cache_usage_perc->Value(), 0);  // its pages are reserved
  stream->Cancel();
  Result r = Collect(*stream);
  EXPECT_TRUE(absl::IsCancelled(r.status)) << r.status;
  ExpectIdleAndPagesBack();
  EXPECT_EQ(m.requests(FinishReason::kCancelled).Value(), 1);
  EXPECT_EQ(m.requests(FinishReason::kLength).Value(), 0);
  EXPECT_EQ(m.num_requests_running->Value(), 0);
  EXPECT_EQ(m.kv_cache_usage_perc->Value(), 0);  // cached pages nobody uses count as free
}

// docs/observability.md: the families move as requests run; a hit is a first token after any
// cached prompt token.
TEST_F(SchedulerTest, MetricsMoveAsRequestsRun) {
  const worker::WorkerMetrics& m = *tier_->metrics();
  const std::vector<int32_t> a = Prompt(40, 5);  // blocks 0 and 1 full
  Result ra = Run(Spec(a, 5));
  ASSERT_TRUE(ra.status.ok()) << ra.status;
  EXPECT_EQ(m.ttft(/*hit=*/false).Snap().count, 1u);
  EXPECT_EQ(m.ttft(/*hit=*/true).Snap().count, 0u);
  EXPECT_EQ(m.prompt_tokens(TokenSource::kComputed).Value(), 40);
  EXPECT_EQ(m.prompt_tokens(TokenSource::kFirstTier).Value(), 0);
  EXPECT_EQ(m.generation_tokens->Value(), 5);
  EXPECT_EQ(m.inter_token_latency->Snap().count, 4u);
  EXPECT_EQ(m.requests(FinishReason::kLength).Value(), 1);
  EXPECT_EQ(m.e2e_request_latency->Snap().count, 1u);
  EXPECT_EQ(m.request_queue_time->Snap().count, 1u);
  EXPECT_EQ(m.request_prefill_time->Snap().count, 1u);
  const FirstTokenTiming& ta = ra.by_index[0].timing;
  EXPECT_GT(ta.first_step_ms, 0);
  EXPECT_GE(ta.queue_ms, 0);
  EXPECT_EQ(ta.fetch_ms, 0);  // no store
  EXPECT_EQ(ta.first_tier_tokens, 0u);

  // Two blocks of the next prompt are in the first tier: a hit.
  std::vector<int32_t> b(a.begin(), a.begin() + 32);
  const std::vector<int32_t> tail = Prompt(20, 6);
  b.insert(b.end(), tail.begin(), tail.end());
  Result rb = Run(Spec(b, 3));
  ASSERT_TRUE(rb.status.ok()) << rb.status;
  EXPECT_EQ(rb.by_index[0].timing.first_tier_tokens, 32u);
  EXPECT_EQ(rb.by_index[0].timing.store_tokens, 0u);
  EXPECT_EQ(m.ttft(/*hit=*/true).Snap().count, 1u);
  EXPECT_EQ(m.ttft(/*hit=*/false).Snap().count, 1u);
  EXPECT_EQ(m.prompt_tokens(TokenSource::kFirstTier).Value(), 32);
  EXPECT_EQ(m.prompt_tokens(TokenSource::kComputed).Value(), 40 + 20);
  EXPECT_EQ(m.fetch_blocks(FetchPath::kFirstTier).Value(), 2);
  EXPECT_EQ(m.fetch_bytes(FetchPath::kFirstTier).Value(), 2 * tier_->block_bytes());

  // A stop token ends the third.
  GenerateSpec stop = Spec(a, 10);
  stop.sampling.stop_token_ids = {ra.by_index[0].tokens[0]};
  ASSERT_TRUE(Run(stop).status.ok());
  EXPECT_EQ(m.requests(FinishReason::kStop).Value(), 1);
  EXPECT_EQ(m.requests(FinishReason::kLength).Value(), 2);
  EXPECT_EQ(m.generation_tokens->Value(), 5 + 3 + 1);
  ExpectIdleAndPagesBack();
  EXPECT_EQ(m.num_requests_running->Value(), 0);
  EXPECT_EQ(m.num_requests_waiting->Value(), 0);
}

// Prompt tokens from the store: a scheduler that keeps no blocks fetches the prefix it wrote.
TEST(SchedulerStoreTest, PromptTokensFromTheStoreAreCountedAndTimed) {
  engine::EngineOptions eo;
  eo.kv_cache_bytes = int64_t{32} * 64 * 1024;
  eo.max_batch_tokens = 64;
  eo.max_batch_seqs = 8;
  eo.num_threads = 1;
  auto engine = engine::Engine::Create(ModelDir(), eo);
  ASSERT_TRUE(engine.ok()) << engine.status();
  FakeStoreOptions so;
  so.slot_bytes = (*engine)->kv_layout().BlockBytes();
  so.slot_count = 16;
  FakeStore store(so);
  std::unique_ptr<StoreClient> client = store.NewClient();
  worker::WorkerMetrics metrics("decode");
  worker::KvTier tier(engine->get(), client.get(), &metrics);
  SchedulerOptions opts;
  opts.max_batch_tokens = 64;
  opts.max_batch_seqs = 8;
  opts.keep_blocks = false;
  Scheduler scheduler(engine->get(), &tier, opts);
  scheduler.Start();
  const std::vector<int32_t> prompt = Prompt(40, 13);
  for (int i = 0; i < 2; ++i) {
    GenerateSpec spec;
    spec.prompt = prompt;
    spec.sampling.max_tokens = 2;
    auto stream = scheduler.Submit(spec);
    ASSERT_TRUE(stream.ok()) << stream.status();
    Result r = Collect(**stream);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.by_index[0].timing.store_tokens, i == 0 ? 0u : 32u);
    EXPECT_EQ(r.by_index[0].timing.first_tier_tokens, 0u);
  }
  scheduler.Stop();
  EXPECT_EQ(metrics.prompt_tokens(TokenSource::kStore).Value(), 32);
  EXPECT_EQ(metrics.prompt_tokens(TokenSource::kFirstTier).Value(), 0);
  EXPECT_EQ(metrics.prompt_tokens(TokenSource::kComputed).Value(), 40 + 8);
  EXPECT_EQ(metrics.fetch_blocks(FetchPath::kMapped).Value(), 2);  // a same-host store
  EXPECT_GE(metrics.store_blocks(), 2);                            // what the first wrote
  EXPECT_EQ(metrics.ttft(/*hit=*/true).Snap().count, 1u);
  EXPECT_EQ(metrics.ttft(/*hit=*/false).Snap().count, 1u);
  EXPECT_EQ(metrics.store_connected->Value(), 1);
  // Every family is in the worker's registry with its role (what /metrics serves).
  EXPECT_NE(metrics.registry().RenderText().find(
                "kvtier_worker_prompt_tokens_total{role=\"decode\",source=\"store\"} 32\n"),
            std::string::npos);
}

TEST_F(SchedulerTest, SharedPrefixComesFromTheCacheAndMatchesRecompute) {
  const std::vector<int32_t> a = Prompt(40, 5);  // blocks 0 and 1 full
  Result ra = Run(Spec(a, 5));
  ASSERT_TRUE(ra.status.ok()) << ra.status;
  EXPECT_EQ(ra.by_index[0].cached_tokens, 0u);

  std::vector<int32_t> b(a.begin(), a.begin() + 32);
  const std::vector<int32_t> tail = Prompt(20, 6);
  b.insert(b.end(), tail.begin(), tail.end());
  Result rb = Run(Spec(b, 15));
  ASSERT_TRUE(rb.status.ok()) << rb.status;
  EXPECT_EQ(rb.by_index[0].cached_tokens, 32u);
  EXPECT_EQ(rb.by_index[0].tokens, Reference(b, Spec(b, 15).sampling));
  EXPECT_GE(scheduler_->stats().cache_hit_blocks, 2u);

  // A continuation of the conversation finds the blocks filled during generation too.
  std::vector<int32_t> c = b;
  c.insert(c.end(), rb.by_index[0].tokens.begin(), rb.by_index[0].tokens.end());  // 67 tokens
  c.push_back(9);
  Result rc = Run(Spec(c, 6));
  ASSERT_TRUE(rc.status.ok()) << rc.status;
  EXPECT_EQ(rc.by_index[0].cached_tokens, 64u);  // blocks 0..3: positions 0..63 were computed
  EXPECT_EQ(rc.by_index[0].tokens, Reference(c, Spec(c, 6).sampling));
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, ConcurrentIdenticalPromptsAndNShareBlocks) {
  // Two requests computing the same blocks at once (the second insert of a block keeps its
  // page private), and n = 2 greedy completions sharing the prompt's blocks.
  const std::vector<int32_t> prompt = Prompt(70, 12);
  const std::vector<int32_t> ref = Reference(prompt, Spec(prompt, 10).sampling);
  auto s1 = Submit(Spec(prompt, 10));
  auto s2 = Submit(Spec(prompt, 10));
  ASSERT_NE(s1, nullptr);
  ASSERT_NE(s2, nullptr);
  Result r1 = Collect(*s1);
  Result r2 = Collect(*s2);
  EXPECT_EQ(r1.by_index[0].tokens, ref);
  EXPECT_EQ(r2.by_index[0].tokens, ref);
  GenerateSpec spec = Spec(prompt, 10);
  spec.n = 2;
  Result rn = Run(spec);
  ASSERT_TRUE(rn.status.ok()) << rn.status;
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(rn.by_index[i].cached_tokens, 64u);
    EXPECT_EQ(rn.by_index[i].tokens, ref);
  }
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, UseCacheFalseRecomputesEverything) {
  const std::vector<int32_t> a = Prompt(48, 7);
  ASSERT_TRUE(Run(Spec(a, 4)).status.ok());
  GenerateSpec spec = Spec(a, 8);
  spec.use_cache = false;
  Result r = Run(spec);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.by_index[0].cached_tokens, 0u);
  EXPECT_EQ(r.by_index[0].tokens, Reference(a, spec.sampling));
  // With the cache, the same prompt reuses its first two blocks (the third holds the last
  // prompt token, whose logits must be computed).
  Result again = Run(Spec(a, 8));
  EXPECT_EQ(again.by_index[0].cached_tokens, 32u);
  EXPECT_EQ(again.by_index[0].tokens, r.by_index[0].tokens);
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, StopTokenAndMaxTokens) {
  const std::vector<int32_t> prompt = Prompt(30, 8);
  const std::vector<int32_t> ref = Reference(prompt, Spec(prompt, 10).sampling);
  ASSERT_EQ(ref.size(), 10u);
  const int32_t stop = ref[4];
  const size_t first = std::find(ref.begin(), ref.end(), stop) - ref.begin();
  GenerateSpec spec = Spec(prompt, 10);
  spec.sampling.stop_token_ids = {stop};
  Result r = Run(spec);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.by_index[0].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first + 1));
  EXPECT_EQ(r.by_index[0].finish_reason, "stop");

  Result three = Run(Spec(prompt, 3));
  EXPECT_EQ(three.by_index[0].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + 3));
  EXPECT_EQ(three.by_index[0].finish_reason, "length");

  Result none = Run(Spec(prompt, 0));
  ASSERT_TRUE(none.status.ok()) << none.status;
  EXPECT_TRUE(none.by_index[0].tokens.empty());
  EXPECT_EQ(none.by_index[0].finish_reason, "length");
  EXPECT_EQ(none.by_index[0].prompt_tokens, 30u);
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, RequestsWaitForMemoryAndAllComplete) {
  // Each request reserves ceil((150 + 99) / 16) = 16 pages of the 64: four of the five fit at
  // once, the fifth waits for one to finish.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::shared_ptr<GenerationStream>> streams;
  for (int i = 0; i < 5; ++i) {
    prompts.push_back(Prompt(150, 20 + i));
    streams.push_back(Submit(Spec(prompts.back(), 100)));
  }
  for (int i = 0; i < 5; ++i) {
    ASSERT_NE(streams[i], nullptr);
    if (i == 0) {
      const Scheduler::Stats st = scheduler_->stats();
      EXPECT_LE(st.running_sequences, 4);
      EXPECT_LE(st.free_pages, kPages);
    }
    Result r = Collect(*streams[i]);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.by_index[0].tokens.size(), 100u);
    if (i == 4) {
      EXPECT_EQ(r.by_index[0].tokens, Reference(prompts[i], Spec(prompts[i], 100).sampling));
    }
  }
  ExpectIdleAndPagesBack();
}

TEST_F(SchedulerTest, RejectsBadRequestsWithClearErrors) {
  auto expect = [&](GenerateSpec spec, absl::StatusCode code, const std::string& needle) {
    auto s = scheduler_->Submit(std::move(spec));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), code) << s.status();
    EXPECT_NE(s.status().message().find(needle), std::string::npos) << s.status();
  };
  expect(Spec({}, 4), absl::StatusCode::kInvalidArgument, "empty");
  expect(Spec({1, 2, 4096}, 4), absl::StatusCode::kInvalidArgument, "vocabulary");
  expect(Spec(Prompt(4097, 1), 4), absl::StatusCode::kInvalidArgument, "context");
  expect(Spec(Prompt(2000, 1), 4), absl::StatusCode::kInvalidArgument, "KV-cache pages");
  expect(Spec(Prompt(10, 1), 3000), absl::StatusCode::kResourceExhausted, "max_tokens");
  GenerateSpec bad_n = Spec(Prompt(10, 1), 4);
  bad_n.n = 0;
  expect(bad_n, absl::StatusCode::kInvalidArgument, "n must be");
  GenerateSpec bad_t = Spec(Prompt(10, 1), 4);
  bad_t.sampling.temperature = -1;
  expect(bad_t, absl::StatusCode::kInvalidArgument, "temperature");
  // Still serving.
  EXPECT_TRUE(Run(Spec(Prompt(10, 1), 2)).status.ok());
}

TEST_F(SchedulerTest, StopFinishesRequestsWithUnavailable) {
  auto stream = Submit(Spec(Prompt(20, 9), 800));
  ASSERT_NE(stream, nullptr);
  std::vector<StreamEvent> events;
  while (events.empty()) stream->Next(&events, absl::Seconds(10));
  scheduler_->Stop();
  Result r = Collect(*stream);
  EXPECT_TRUE(absl::IsUnavailable(r.status)) << r.status;
  EXPECT_EQ(tier_->metrics()->requests(FinishReason::kError).Value(), 1);
  EXPECT_TRUE(absl::IsUnavailable(scheduler_->Submit(Spec(Prompt(5, 1), 2)).status()));
}

}  // namespace
}  // namespace kvtier::decode
