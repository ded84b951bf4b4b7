#include "worker/block_writer.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cachestore/fake_store_client.h"
#include "gtest/gtest.h"

namespace kvtier::worker {
namespace {

constexpr size_t kBlockBytes = 4096;
constexpr size_t kBatch = 4;

BlockKey Key(int i) {
  BlockKey k{};
  k[0] = static_cast<uint8_t>(i);
  k[1] = static_cast<uint8_t>(i >> 8);
  return k;
}

class BlockWriterTest : public ::testing::Test {
 protected:
  BlockWriterTest() {
    FakeStoreOptions o;
    o.slot_bytes = kBlockBytes;
    o.slot_count = 64;
    store_ = std::make_unique<FakeStore>(o);
    reader_ = store_->NewClient();
  }
  // A writer of `buffers` buffers whose on_written records written() after each batch and
  // checks that every batch up to it is in the store.
  void StartWriter(int buffers, size_t block_bytes = kBlockBytes) {
    writer_ = std::make_unique<BlockWriter>(
        store_->NewClient(), ns_, block_bytes, kBatch, buffers,
        [this](size_t bytes) -> absl::StatusOr<engine::HostBuffer> {
          ++allocations_;
          return engine::HostBuffer(std::malloc(bytes), bytes, std::free);
        },
        [this] {
          const uint64_t w = raw_writer_->written();
          absl::MutexLock lock(&mu_);
          seen_.push_back(w);
          for (uint64_t t = 1; t <= w && t <= submitted_keys_.size(); ++t) {
            for (const BlockKey& k : submitted_keys_[t - 1]) {
              if (!store_->Contains(ns_, k)) ++reported_before_stored_;
            }
          }
        });
    raw_writer_ = writer_.get();
  }

  // Submits `n` blocks with keys first.. and bytes derived from the keys; returns the ticket.
  uint64_t SubmitBlocks(int first, size_t n) {
    absl::StatusOr<engine::HostBuffer> b = writer_->Acquire();
    EXPECT_TRUE(b.ok()) << b.status();
    std::vector<BlockKey> keys;
    for (size_t i = 0; i < n; ++i) {
      keys.push_back(Key(first + static_cast<int>(i)));
      std::memset(b->data() + i * kBlockBytes, first + static_cast<int>(i), kBlockBytes);
    }
    {
      absl::MutexLock lock(&mu_);
      submitted_keys_.push_back(keys);
    }
    std::vector<BlockKey> parents = ChainParents(ns_, keys);
    return writer_->Submit(std::move(*b), std::move(keys), std::move(parents));
  }

  // Whether block `i` is stored with the bytes SubmitBlocks gave it.
  bool Stored(int i) {
    std::vector<uint8_t> got(kBlockBytes);
    void* dst = got.data();
    BlockKey k = Key(i);
    absl::StatusOr<size_t> n = reader_->Get(ns_, {&k, 1}, {&dst, 1}, kBlockBytes);
    return n.ok() && *n == 1 && got[0] == static_cast<uint8_t>(i) &&
           got[kBlockBytes - 1] == static_cast<uint8_t>(i);
  }

  const NamespaceId ns_{};
  std::unique_ptr<FakeStore> store_;
  std::unique_ptr<StoreClient> reader_;
  std::atomic<int> allocations_{0};
  absl::Mutex mu_;
  std::vector<uint64_t> seen_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<BlockKey>> submitted_keys_ ABSL_GUARDED_BY(mu_);
  int reported_before_stored_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<BlockWriter> writer_;
  // For on_written, which runs while writer_.reset() destroys the writer (and writer_ is null).
  BlockWriter* raw_writer_ = nullptr;
};

TEST_F(BlockWriterTest, TicketsAreWrittenInSubmissionOrder) {
  StartWriter(/*buffers=*/4);
  store_->HoldWrites(true);
  EXPECT_EQ(SubmitBlocks(0, kBatch), 1u);
  EXPECT_EQ(SubmitBlocks(10, 2), 2u);
  EXPECT_EQ(SubmitBlocks(20, kBatch), 3u);
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(writer_->written(), 0u);  // the first Put is held: nothing is done yet
  store_->HoldWrites(false);
  writer_->Flush();
  EXPECT_EQ(writer_->written(), 3u);
  {
    absl::MutexLock lock(&mu_);
    // on_written runs after the batch is done, so the last one may lag Flush a little.
    auto all = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return seen_.size() >= 3; };
    mu_.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(10));
    EXPECT_EQ(seen_, (std::vector<uint64_t>{1, 2, 3}));
    EXPECT_EQ(reported_before_stored_, 0);
  }
  for (int i : {0, 1, 2, 3, 10, 11, 20, 21, 22, 23}) EXPECT_TRUE(Stored(i)) << i;
  EXPECT_FALSE(Stored(12));  // only the submitted blocks of a batch are written
  const BlockWriter::Stats st = writer_->stats();
  EXPECT_EQ(st.batches, 3u);
  EXPECT_EQ(st.stored_blocks, 10u);
  EXPECT_EQ(st.skipped_blocks, 0u);
}

TEST_F(BlockWriterTest, AcquireWaitsWhileEveryBufferIsQueued) {
  StartWriter(/*buffers=*/2);
  store_->HoldWrites(true);
  SubmitBlocks(0, kBatch);
  SubmitBlocks(10, kBatch);
  std::atomic<bool> acquired{false};
  std::thread third([&] {
    absl::StatusOr<engine::HostBuffer> b = writer_->Acquire();
    EXPECT_TRUE(b.ok());
    acquired = true;
    if (b.ok()) writer_->Return(std::move(*b));
  });
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(acquired.load()) << "a third buffer while both are queued";
  store_->HoldWrites(false);
  third.join();
  EXPECT_TRUE(acquired.load());
  EXPECT_EQ(allocations_.load(), 2);  // buffers are reused, never more than num_buffers
  writer_->Flush();
  EXPECT_EQ(writer_->written(), 2u);
}

TEST_F(BlockWriterTest, DestructionWritesEveryQueuedBatch) {
  StartWriter(/*buffers=*/4);
  store_->HoldWrites(true);
  SubmitBlocks(0, kBatch);
  SubmitBlocks(10, kBatch);
  SubmitBlocks(20, 1);
  std::thread release([&] {
    absl::SleepFor(absl::Milliseconds(50));
    store_->HoldWrites(false);
  });
  writer_.reset();  // waits for the queued batches
  release.join();
  for (int i : {0, 1, 2, 3, 10, 11, 12, 13, 20}) EXPECT_TRUE(Stored(i)) << i;
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(seen_.size(), 3u);
}

TEST_F(BlockWriterTest, FailedWritesCountAsSkippedAndStillComplete) {
  StartWriter(/*buffers=*/2);
  store_->SetDown(true);
  const uint64_t t1 = SubmitBlocks(0, kBatch);
  writer_->Flush();
  EXPECT_EQ(writer_->written(), t1);  // done, though nothing was stored
  EXPECT_EQ(writer_->stats().skipped_blocks, kBatch);
  store_->SetDown(false);
  store_->FailMidBatch(1);
  SubmitBlocks(10, kBatch);
  writer_->Flush();
  BlockWriter::Stats st = writer_->stats();
  EXPECT_EQ(st.stored_blocks, 1u);
  EXPECT_EQ(st.skipped_blocks, kBatch + kBatch - 1);
  EXPECT_TRUE(Stored(10));
  EXPECT_FALSE(Stored(11));
}

TEST_F(BlockWriterTest, APutErrorCountsTheBatchAsSkipped) {
  // Blocks larger than the store's slots: Put answers InvalidArgument.
  StartWriter(/*buffers=*/2, /*block_bytes=*/2 * kBlockBytes);
  absl::StatusOr<engine::HostBuffer> b = writer_->Acquire();
  ASSERT_TRUE(b.ok());
  const uint64_t t = writer_->Submit(std::move(*b), {Key(0), Key(1)}, {ns_, Key(0)});
  writer_->Flush();
  EXPECT_EQ(writer_->written(), t);
  const BlockWriter::Stats st = writer_->stats();
  EXPECT_EQ(st.stored_blocks, 0u);
  EXPECT_EQ(st.skipped_blocks, 2u);
  EXPECT_EQ(store_->blocks(), 0u);
}

}  // namespace
}  // namespace kvtier::worker
