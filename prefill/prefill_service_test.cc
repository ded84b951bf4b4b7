#include "prefill/prefill_service.h"

#include <memory>
#include <string>
#include <vector>

#include "cachestore/fake_store_client.h"
#include "engine/generator.h"
#include "engine/page_allocator.h"
#include "engine/testing/test_util.h"
#include "gtest/gtest.h"

namespace kvtier::prefill {
namespace {

using ::kvtier::testing::RandomModelDir;
using ::kvtier::testing::RandomTokens;

constexpr int kPages = 16;  // 1 MiB of 64 KiB pages (the tiny model in fp32)
constexpr int kB = 16;      // tokens per block

const std::string& ModelDir() {
  return RandomModelDir("prefill_tiny", *engine::PresetConfig("tiny"), 7, engine::DType::kF32);
}

std::unique_ptr<engine::Engine> NewEngine() {
  engine::EngineOptions eo;
  eo.kv_cache_bytes = int64_t{kPages} * 64 * 1024;
  eo.max_batch_tokens = 32;  // prompts are prefilled in chunks
  eo.num_threads = 1;
  auto e = engine::Engine::Create(ModelDir(), eo);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

class PrefillServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = NewEngine();
    ASSERT_NE(engine_, nullptr);
    block_bytes_ = engine_->kv_layout().BlockBytes();
    FakeStoreOptions so;
    so.slot_bytes = block_bytes_;
    so.slot_count = 32;
    store_ = std::make_unique<FakeStore>(so);
    client_ = store_->NewClient();
    tier_ = std::make_unique<worker::KvTier>(engine_.get(), client_.get());
    service_ =
        std::make_unique<PrefillService>(engine_.get(), tier_.get(), worker::WorkerOptions());
    prompt_ = RandomTokens(4 * kB + 5, 23, 4000);  // four full blocks and a partial one
    keys_ = tier_->Keys(prompt_);
  }

  // The blocks of the store under keys_[0..n).
  std::vector<uint8_t> Stored(size_t n) {
    std::vector<uint8_t> out(n * block_bytes_);
    std::vector<void*> dst(n);
    for (size_t i = 0; i < n; ++i) dst[i] = out.data() + i * block_bytes_;
    auto reader = store_->NewClient();
    absl::StatusOr<size_t> got =
        reader->Get(tier_->namespace_id(), absl::MakeConstSpan(keys_).first(n), dst, block_bytes_);
    EXPECT_TRUE(got.ok() && *got == n);
    return out;
  }

  // The K/V of the prompt's first n full blocks computed from scratch on another engine.
  std::vector<uint8_t> Recomputed(size_t n) {
    std::unique_ptr<engine::Engine> e = NewEngine();
    engine::PageAllocator alloc(e->num_pages());
    engine::Sequence seq;
    seq.tokens.assign(prompt_.begin(), prompt_.begin() + n * kB);
    std::vector<float> logits(e->config().vocab_size);
    EXPECT_TRUE(engine::Prefill(*e, alloc, seq, absl::MakeSpan(logits)).ok());
    std::vector<uint8_t> out(n * block_bytes_);
    EXPECT_TRUE(e->ExportPages(absl::MakeConstSpan(seq.pages).first(n), absl::MakeSpan(out)).ok());
    engine::ReleasePages(alloc, seq);
    return out;
  }

  absl::Span<const int32_t> Prompt(size_t tokens) const {
    return absl::MakeConstSpan(prompt_).first(tokens);
  }

  std::unique_ptr<engine::Engine> engine_;
  size_t block_bytes_ = 0;
  std::unique_ptr<FakeStore> store_;
  std::unique_ptr<StoreClient> client_;
  std::unique_ptr<worker::KvTier> tier_;
  std::unique_ptr<PrefillService> service_;
  std::vector<int32_t> prompt_;
  std::vector<BlockKey> keys_;
};

TEST_F(PrefillServiceTest, ComputesAndStoresOnlyTheMissingFullBlocks) {
  absl::StatusOr<PrefillResult> first = service_->Run(Prompt(2 * kB + 3));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->prompt_tokens, 2u * kB + 3);
  EXPECT_EQ(first->cached_tokens, 0u);
  EXPECT_EQ(first->computed_tokens, 2u * kB);  // the partial block is the decode worker's
  EXPECT_EQ(first->stored_blocks, 2u);
  EXPECT_EQ(store_->blocks(), 2u);

  absl::StatusOr<PrefillResult> r = service_->Run(prompt_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_tokens, prompt_.size());
  EXPECT_EQ(r->cached_tokens, 2u * kB);
  EXPECT_EQ(r->computed_tokens, 2u * kB);
  EXPECT_EQ(r->stored_blocks, 2u);
  EXPECT_EQ(store_->blocks(), 4u);
  // Blocks 2 and 3, computed over the fetched prefix, are those of a full recompute.
  EXPECT_EQ(Stored(4), Recomputed(4));

  // The metrics (docs/observability.md): prompt tokens by source, the requests and their times.
  const worker::WorkerMetrics& m = *tier_->metrics();
  EXPECT_EQ(m.prompt_tokens(worker::TokenSource::kComputed).Value(), 4 * kB);
  EXPECT_EQ(m.prompt_tokens(worker::TokenSource::kStore).Value(), 2 * kB);
  EXPECT_EQ(m.requests(worker::FinishReason::kStop).Value(), 2);
  EXPECT_EQ(m.requests(worker::FinishReason::kError).Value(), 0);
  EXPECT_EQ(m.request_queue_time->Snap().count, 2u);
  EXPECT_EQ(m.request_prefill_time->Snap().count, 2u);
  EXPECT_EQ(m.e2e_request_latency->Snap().count, 2u);
  EXPECT_EQ(m.store_blocks(), 4);
  EXPECT_EQ(m.fetch_blocks(worker::FetchPath::kMapped).Value(), 2);
  EXPECT_EQ(m.num_requests_running->Value(), 0);
  EXPECT_EQ(m.num_requests_waiting->Value(), 0);
  EXPECT_EQ(m.kv_cache_usage_perc->Value(), 0);  // every page freed
  EXPECT_EQ(m.store_connected->Value(), 1);
}

TEST_F(PrefillServiceTest, RefusedAndFailedRequestsAreCountedAsErrors) {
  // An id that could forge a log line is refused before anything runs.
  v1::PrefillRequest req;
  req.set_request_id("x\nreq=forged");
  req.mutable_tokens()->Add(prompt_.begin(), prompt_.end());
  v1::PrefillResponse resp;
  grpc::Status st = service_->Prefill(nullptr, &req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("request_id"), std::string::npos) << st.error_message();
  EXPECT_EQ(store_->calls().lookups, 0u);
  req.set_request_id("chatcmpl-1-0-prefill");
  st = service_->Prefill(nullptr, &req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.computed_tokens(), 4u * kB);

  service_->Stop();  // a request that has not started is refused: an error
  EXPECT_TRUE(absl::IsUnavailable(service_->Run(prompt_).status()));
  const worker::WorkerMetrics& m = *tier_->metrics();
  EXPECT_EQ(m.requests(worker::FinishReason::kStop).Value(), 1);
  EXPECT_EQ(m.requests(worker::FinishReason::kError).Value(), 1);
}

TEST_F(PrefillServiceTest, ComputesOverTheFetchedPrefixRatherThanRecomputingIt) {
  // Blocks 0-1 in the store under the prompt's keys but with other K/V (that of another
  // prompt): if the service used them, blocks 2-3 differ from a full recompute.
  std::unique_ptr<engine::Engine> e = NewEngine();
  engine::PageAllocator alloc(e->num_pages());
  engine::Sequence seq;
  seq.tokens = RandomTokens(2 * kB, 99, 4000);
  std::vector<float> logits(e->config().vocab_size);
  ASSERT_TRUE(engine::Prefill(*e, alloc, seq, absl::MakeSpan(logits)).ok());
  worker::KvTier other(e.get(), client_.get());
  ASSERT_EQ(
      other
          .StoreBlocks(absl::MakeConstSpan(keys_).first(2),
                       ChainParents(tier_->namespace_id(), absl::MakeConstSpan(keys_).first(2)),
                       seq.pages)
          .stored,
      2u);
  engine::ReleasePages(alloc, seq);

  absl::StatusOr<PrefillResult> r = service_->Run(prompt_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cached_tokens, 2u * kB);
  EXPECT_EQ(r->computed_tokens, 2u * kB);
  const std::vector<uint8_t> stored = Stored(4);
  const std::vector<uint8_t> recomputed = Recomputed(4);
  const size_t tail = 2 * block_bytes_;
  EXPECT_FALSE(std::equal(stored.begin() + tail, stored.end(), recomputed.begin() + tail));
}

TEST_F(PrefillServiceTest, EveryBlockPresentComputesAndFetchesNothing) {
  ASSERT_TRUE(service_->Run(prompt_).ok());
  const FakeStore::Calls before = store_->calls();
  absl::StatusOr<PrefillResult> r = service_->Run(prompt_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cached_tokens, 4u * kB);
  EXPECT_EQ(r->computed_tokens, 0u);
  EXPECT_EQ(r->stored_blocks, 0u);
  const FakeStore::Calls after = store_->calls();
  EXPECT_EQ(after.lookups, before.lookups + 1);  // one control call, nothing else
  EXPECT_EQ(after.gets + after.maps + after.puts, before.gets + before.maps + before.puts);
}

TEST_F(PrefillServiceTest, AStoreThatIsDownMeansComputedAndNotStored) {
  store_->SetDown(true);
  absl::StatusOr<PrefillResult> r = service_->Run(prompt_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cached_tokens, 0u);
  EXPECT_EQ(r->computed_tokens, 4u * kB);
  EXPECT_EQ(r->stored_blocks, 0u);
  EXPECT_EQ(store_->blocks(), 0u);
  EXPECT_EQ(tier_->metrics()->store_connected->Value(), 0);
  EXPECT_EQ(tier_->metrics()->prompt_tokens(worker::TokenSource::kComputed).Value(), 4 * kB);
}

TEST_F(PrefillServiceTest, ReportsWhatWasFetchedWhenItIsLessThanTheLookupSaid) {
  ASSERT_TRUE(service_->Run(Prompt(3 * kB)).ok());
  store_->FailMidBatch(1);  // the fetch gets one of the three blocks the lookup found
  absl::StatusOr<PrefillResult> r = service_->Run(prompt_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cached_tokens, 1u * kB);
  EXPECT_EQ(r->computed_tokens, 3u * kB);
  EXPECT_EQ(r->stored_blocks, 1u);  // blocks 1-2 were present already
  EXPECT_EQ(Stored(4), Recomputed(4));
}

TEST_F(PrefillServiceTest, APromptWithoutAFullBlockOrStoreComputesNothing) {
  absl::StatusOr<PrefillResult> r = service_->Run(Prompt(kB - 1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->computed_tokens, 0u);

  worker::KvTier no_store(engine_.get(), nullptr);
  PrefillService without(engine_.get(), &no_store, worker::WorkerOptions());
  r = without.Run(prompt_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->computed_tokens, 0u);
  EXPECT_EQ(r->stored_blocks, 0u);
  EXPECT_EQ(store_->calls().lookups, 0u);
}

}  // namespace
}  // namespace kvtier::prefill
