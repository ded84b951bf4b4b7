#include "worker/kv_tier.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "cachestore/fake_store_client.h"
#include "engine/generator.h"
#include "engine/page_allocator.h"
#include "engine/testing/test_util.h"
#include "gtest/gtest.h"

namespace kvtier::worker {
namespace {

using ::kvtier::testing::RandomModelDir;
using ::kvtier::testing::RandomTokens;

constexpr int kPages = 32;  // 2 MiB of 64 KiB pages (the tiny model in fp32)
constexpr int kBlocks = 4;  // full blocks of the test prompt

const std::string& ModelDir() {
  return RandomModelDir("kv_tier_tiny", *engine::PresetConfig("tiny"), 5, engine::DType::kF32);
}

// The parameter: whether the fake store is on the same host (fetches lease blocks in place and
// import them from the pool) or remote (fetches copy through Get into staging).
class KvTierTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    engine::EngineOptions eo;
    eo.kv_cache_bytes = int64_t{kPages} * 64 * 1024;
    eo.num_threads = 1;
    auto e = engine::Engine::Create(ModelDir(), eo);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    allocator_ = std::make_unique<engine::PageAllocator>(engine_->num_pages());
    block_bytes_ = engine_->kv_layout().BlockBytes();
    FakeStoreOptions so;
    so.slot_bytes = block_bytes_;
    so.slot_count = 32;
    so.same_host = GetParam();
    store_ = std::make_unique<FakeStore>(so);
    client_ = store_->NewClient();
    tier_ = std::make_unique<KvTier>(engine_.get(), client_.get());
    const std::vector<int32_t> prompt = RandomTokens(kBlocks * 16 + 5, 17, 4000);
    keys_ = tier_->Keys(prompt);
    ASSERT_EQ(keys_.size(), static_cast<size_t>(kBlocks));
    parents_ = ChainParents(tier_->namespace_id(), keys_);
    // The K/V of the prompt's full blocks, computed in pages_.
    seq_.tokens = prompt;
    std::vector<float> logits(engine_->config().vocab_size);
    ASSERT_TRUE(engine::Prefill(*engine_, *allocator_, seq_, absl::MakeSpan(logits)).ok());
    pages_.assign(seq_.pages.begin(), seq_.pages.begin() + kBlocks);
    expected_ = Export(pages_);
  }

  void TearDown() override { engine::ReleasePages(*allocator_, seq_); }

  std::vector<uint8_t> Export(absl::Span<const int32_t> pages) {
    std::vector<uint8_t> out(pages.size() * block_bytes_);
    EXPECT_TRUE(engine_->ExportPages(pages, absl::MakeSpan(out)).ok());
    return out;
  }

  // Fresh pages, zeroed, for fetches (freed at the end of the test).
  std::vector<int32_t> FreshPages(int n) {
    auto p = allocator_->Allocate(n);
    EXPECT_TRUE(p.ok()) << p.status();
    std::vector<uint8_t> zeros(n * block_bytes_, 0);
    EXPECT_TRUE(engine_->ImportPages(*p, zeros).ok());
    return *p;
  }

  // Whether the first n blocks in `pages` hold the prompt's K/V.
  bool HoldPrompt(absl::Span<const int32_t> pages, size_t n) {
    const std::vector<uint8_t> got = Export(pages.first(n));
    return std::equal(got.begin(), got.end(), expected_.begin());
  }

  // The tier's metrics (its own: the test gave it none), and the fetch path of this store.
  const WorkerMetrics& M() const { return *tier_->metrics(); }
  FetchPath Path() const { return GetParam() ? FetchPath::kMapped : FetchPath::kUcx; }
  double Fallbacks() const {
    double n = 0;
    for (FallbackReason r :
         {FallbackReason::kStoreError, FallbackReason::kChecksum, FallbackReason::kImport}) {
      n += M().fallbacks(r).Value();
    }
    return n;
  }

  // The prompt's first n blocks in the store.
  void StoreFirst(size_t n) {
    const PutResult r = tier_->StoreBlocks(absl::MakeConstSpan(keys_).first(n),
                                           absl::MakeConstSpan(parents_).first(n),
                                           absl::MakeConstSpan(pages_).first(n));
    ASSERT_EQ(r.stored, n);
  }

  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::PageAllocator> allocator_;
  size_t block_bytes_ = 0;
  std::unique_ptr<FakeStore> store_;
  std::unique_ptr<StoreClient> client_;
  std::unique_ptr<KvTier> tier_;
  std::vector<BlockKey> keys_;
  std::vector<BlockKey> parents_;
  engine::Sequence seq_;
  std::vector<int32_t> pages_;
  std::vector<uint8_t> expected_;
};

TEST_P(KvTierTest, StoredBlocksAreFetchedBackExactly) {
  const PutResult first = tier_->StoreBlocks(keys_, parents_, pages_);
  EXPECT_EQ(first.stored, static_cast<uint32_t>(kBlocks));
  const PutResult again =
      tier_->StoreBlocks(keys_, parents_, pages_);  // content-addressed: no rewrite
  EXPECT_EQ(again.stored, 0u);
  EXPECT_EQ(again.present, static_cast<uint32_t>(kBlocks));
  EXPECT_EQ(tier_->Lookup(keys_), static_cast<size_t>(kBlocks));

  const std::vector<int32_t> pages = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), static_cast<size_t>(kBlocks));
  EXPECT_TRUE(HoldPrompt(pages, kBlocks));
  // Same host: read in place (one MapPrefix, no Get); remote: through Get.
  EXPECT_EQ(store_->calls().maps, GetParam() ? 1u : 0u);
  EXPECT_EQ(store_->calls().gets, GetParam() ? 0u : 1u);
  EXPECT_EQ(store_->active_leases(), 0u);
  const KvTier::Stats st = tier_->stats();
  EXPECT_EQ(st.stored_blocks, static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(st.fetched_blocks, static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(st.failures, 0u);
  // The metrics (docs/observability.md): one fetch over this store's path, two writes.
  EXPECT_EQ(M().fetch_blocks(Path()).Value(), kBlocks);
  EXPECT_EQ(M().fetch_bytes(Path()).Value(), kBlocks * block_bytes_);
  EXPECT_EQ(M().fetch_blocks(GetParam() ? FetchPath::kUcx : FetchPath::kMapped).Value(), 0);
  EXPECT_EQ(M().fetch_seconds(Path()).Snap().count, 1u);
  EXPECT_EQ(M().store_blocks(Path()).Value(), kBlocks);  // the second found them present
  EXPECT_EQ(M().store_blocks(), kBlocks);
  EXPECT_EQ(M().store_batches(), 2u);
  EXPECT_EQ(M().store_connected->Value(), 1);
  EXPECT_EQ(Fallbacks(), 0);
  allocator_->Free(pages);
}

TEST_P(KvTierTest, FetchOfAShortPrefixStopsAtTheFirstMissingBlock) {
  StoreFirst(2);
  EXPECT_EQ(tier_->Lookup(keys_), 2u);
  const std::vector<int32_t> pages = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), 2u);
  EXPECT_TRUE(HoldPrompt(pages, 2));
  EXPECT_EQ(tier_->stats().fetched_blocks, 2u);
  EXPECT_EQ(tier_->stats().failures, 0u);
  EXPECT_EQ(Fallbacks(), 0);  // the end of what is stored: a miss, not a fallback
  allocator_->Free(pages);
}

TEST_P(KvTierTest, ANodeFailingMidBatchCostsMissesNotErrors) {
  StoreFirst(kBlocks);
  store_->FailMidBatch(1);
  const std::vector<int32_t> pages = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), 1u);
  EXPECT_TRUE(HoldPrompt(pages, 1));
  allocator_->Free(pages);

  // A write: the blocks after the failure are skipped.
  const std::vector<BlockKey> other = tier_->Keys(RandomTokens(kBlocks * 16, 99, 4000));
  store_->FailMidBatch(2);
  const PutResult r = tier_->StoreBlocks(other, ChainParents(tier_->namespace_id(), other), pages_);
  EXPECT_EQ(r.stored, 2u);
  EXPECT_EQ(r.skipped, static_cast<uint32_t>(kBlocks - 2));
  EXPECT_EQ(tier_->stats().skipped_blocks, static_cast<uint64_t>(kBlocks - 2));
  EXPECT_EQ(tier_->stats().failures, 0u);
}

TEST_P(KvTierTest, AStoreThatIsDownIsMissesAndSkippedBlocks) {
  StoreFirst(kBlocks);
  EXPECT_EQ(M().store_connected->Value(), 1);
  store_->SetDown(true);
  EXPECT_EQ(tier_->Lookup(keys_), 0u);
  EXPECT_EQ(M().store_connected->Value(), 0);
  const std::vector<int32_t> pages = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), 0u);
  // Stored, but the store is down: the fetch fell back to recompute for a store error.
  EXPECT_EQ(M().fallbacks(FallbackReason::kStoreError).Value(), 1);
  EXPECT_EQ(Fallbacks(), 1);
  EXPECT_EQ(M().store_connected->Value(), 0);
  allocator_->Free(pages);
  const PutResult r = tier_->StoreBlocks(keys_, parents_, pages_);
  EXPECT_EQ(r.stored + r.present, 0u);
  EXPECT_EQ(r.skipped, static_cast<uint32_t>(kBlocks));
}

TEST_P(KvTierTest, AChecksumFailureEndsThePrefixThere) {
  StoreFirst(kBlocks);
  ASSERT_TRUE(store_->Corrupt(tier_->namespace_id(), keys_[2]));
  const std::vector<int32_t> pages = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), 2u);
  EXPECT_TRUE(HoldPrompt(pages, 2));
  EXPECT_EQ(tier_->stats().fetched_blocks, 2u);
  // Counted whichever side checked it: the tier (same host) or the client (Get).
  EXPECT_EQ(M().checksum_failures->Value(), 1);
  EXPECT_EQ(M().fallbacks(FallbackReason::kChecksum).Value(), 1);
  EXPECT_EQ(Fallbacks(), 1);
  EXPECT_EQ(M().fetch_blocks(Path()).Value(), 2);
  allocator_->Free(pages);
}

// A prefix longer than one verification chunk: chunks are imported and verified in turn, and a
// corrupt block in a later chunk ends the prefix exactly there.
TEST_P(KvTierTest, ALongPrefixIsVerifiedChunkByChunk) {
  const int n = static_cast<int>(KvTier::kVerifyChunkBlocks) + 4;
  const std::vector<int32_t> pages = FreshPages(n);
  std::vector<uint8_t> data(n * block_bytes_);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + i / 4096);
  ASSERT_TRUE(engine_->ImportPages(pages, data).ok());
  const std::vector<BlockKey> keys = tier_->Keys(RandomTokens(n * 16, 97, 4000));
  ASSERT_EQ(tier_->StoreBlocks(keys, ChainParents(tier_->namespace_id(), keys), pages).stored,
            static_cast<uint32_t>(n));
  const int bad = n - 2;  // in the second chunk
  ASSERT_TRUE(store_->Corrupt(tier_->namespace_id(), keys[bad]));
  std::vector<uint8_t> zeros(n * block_bytes_, 0);
  ASSERT_TRUE(engine_->ImportPages(pages, zeros).ok());
  EXPECT_EQ(tier_->FetchPrefix(keys, pages), static_cast<size_t>(bad));
  const std::vector<uint8_t> got = Export(absl::MakeConstSpan(pages).first(bad));
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin()));
  allocator_->Free(pages);
}

// Only a same-host store is read in place.
class KvTierSameHostTest : public KvTierTest {};

TEST_P(KvTierSameHostTest, AnExpiredLeaseDropsEverythingReadInPlace) {
  StoreFirst(kBlocks);
  store_->ExpireNextLease();
  const std::vector<int32_t> pages = FreshPages(kBlocks);
  // The blocks were imported, but the slots may have been reused meanwhile: none counts.
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), 0u);
  EXPECT_EQ(tier_->stats().fetched_blocks, 0u);
  EXPECT_EQ(tier_->stats().failures, 1u);
  EXPECT_EQ(M().fallbacks(FallbackReason::kStoreError).Value(), 1);
  EXPECT_EQ(M().fetch_blocks(FetchPath::kMapped).Value(), 0);
  EXPECT_EQ(store_->calls().gets, 0u);  // nor is it fetched again through Get
  allocator_->Free(pages);
  // The next fetch, with a lease that holds, gets everything.
  const std::vector<int32_t> again = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, again), static_cast<size_t>(kBlocks));
  EXPECT_TRUE(HoldPrompt(again, kBlocks));
  allocator_->Free(again);
}

TEST_P(KvTierTest, AsyncWritesReachTheStoreByTicket) {
  std::atomic<int> batches_written{0};
  tier_->EnableAsyncWrites(store_->NewClient(), /*buffer_bytes=*/0, [&] { ++batches_written; });
  ASSERT_TRUE(tier_->async_writes());
  store_->HoldWrites(true);
  const uint64_t t1 = tier_->StoreBlocksAsync(absl::MakeConstSpan(keys_).first(2),
                                              absl::MakeConstSpan(parents_).first(2),
                                              absl::MakeConstSpan(pages_).first(2));
  const uint64_t t2 = tier_->StoreBlocksAsync(absl::MakeConstSpan(keys_).subspan(2),
                                              absl::MakeConstSpan(parents_).subspan(2),
                                              absl::MakeConstSpan(pages_).subspan(2));
  EXPECT_EQ(t1, 1u);
  EXPECT_EQ(t2, 2u);
  EXPECT_EQ(tier_->written(), 0u);  // held: nothing is in the store yet
  EXPECT_FALSE(store_->Contains(tier_->namespace_id(), keys_[0]));
  // The second batch waits in the queue (the first may be in the writer's Put).
  EXPECT_GE(M().write_queue_bytes->Value(), 2 * block_bytes_);
  store_->HoldWrites(false);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (tier_->written() < t2 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_EQ(tier_->written(), t2);
  for (const BlockKey& k : keys_) EXPECT_TRUE(store_->Contains(tier_->namespace_id(), k));
  EXPECT_EQ(batches_written.load(), 2);
  EXPECT_EQ(tier_->stats().stored_blocks, static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(M().write_queue_bytes->Value(), 0);
  EXPECT_EQ(M().store_blocks(Path()).Value(), kBlocks);
  EXPECT_EQ(M().store_batches(), 2u);

  // What was written is the pages' K/V.
  const std::vector<int32_t> pages = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), static_cast<size_t>(kBlocks));
  EXPECT_TRUE(HoldPrompt(pages, kBlocks));
  allocator_->Free(pages);

  // Stopped: written() keeps its value, the counts stay, and later writes are synchronous.
  tier_->StopAsyncWrites();
  EXPECT_FALSE(tier_->async_writes());
  EXPECT_EQ(tier_->written(), t2);
  EXPECT_EQ(tier_->stats().stored_blocks, static_cast<uint64_t>(kBlocks));
  EXPECT_EQ(tier_->StoreBlocksAsync(keys_, parents_, pages_), 0u);
  EXPECT_EQ(store_->calls().puts, 3u);
}

// Decode write-backs mix blocks of several sequences in one batch: each is stored with its own
// parent, not with the batch's previous key.
TEST_P(KvTierTest, WriteBacksOfInterleavedSequencesNameTheirOwnParents) {
  tier_->EnableAsyncWrites(store_->NewClient(), /*buffer_bytes=*/0, nullptr);
  const NamespaceId& ns = tier_->namespace_id();
  const std::vector<BlockKey> other = tier_->Keys(RandomTokens(2 * 16, 98, 4000));
  // a0 b0 a1 b1, as a decode step that completes blocks of two sequences hands them over.
  const std::vector<BlockKey> keys = {keys_[0], other[0], keys_[1], other[1]};
  const std::vector<BlockKey> parents = {ns, ns, keys_[0], other[0]};
  const uint64_t t = tier_->StoreBlocksAsync(keys, parents, absl::MakeConstSpan(pages_).first(4));
  tier_->StopAsyncWrites();
  ASSERT_EQ(tier_->written(), t);
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(store_->Parent(ns, keys[i]), parents[i]) << i;
}

// A store restart maps a new pool at the same address: the old registration is dropped before
// the unmapping (the client's unmap callback) and the new pool is registered as another pool.
TEST_P(KvTierSameHostTest, ARestartedStoresPoolIsRegisteredAnew) {
  StoreFirst(kBlocks);
  const std::vector<int32_t> pages = FreshPages(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), static_cast<size_t>(kBlocks));
  ASSERT_EQ(tier_->registered_pools().size(), 1u);
  const MappedPool before = tier_->registered_pools()[0];

  store_->Restart();
  EXPECT_TRUE(tier_->registered_pools().empty());  // unregistered before the unmapping
  StoreFirst(kBlocks);
  EXPECT_EQ(tier_->FetchPrefix(keys_, pages), static_cast<size_t>(kBlocks));
  EXPECT_TRUE(HoldPrompt(pages, kBlocks));
  ASSERT_EQ(tier_->registered_pools().size(), 1u);
  const MappedPool after = tier_->registered_pools()[0];
  EXPECT_EQ(after.base, before.base);                // the same address...
  EXPECT_NE(after.incarnation, before.incarnation);  // ...another pool
  allocator_->Free(pages);
}

INSTANTIATE_TEST_SUITE_P(Store, KvTierTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "SameHost" : "Remote";
                         });

INSTANTIATE_TEST_SUITE_P(Store, KvTierSameHostTest, ::testing::Values(true),
                         [](const ::testing::TestParamInfo<bool>&) { return "SameHost"; });

}  // namespace
}  // namespace kvtier::worker
