#include "worker/block_writer.h"

#include <utility>

#include "absl/time/clock.h"
#include "common/log_limiter.h"
#include "common/logging.h"

namespace kvtier::worker {

BlockWriter::BlockWriter(std::unique_ptr<StoreClient> store, const NamespaceId& ns,
                         size_t block_bytes, size_t batch_blocks, int num_buffers, AllocFn alloc,
                         std::function<void()> on_written, WorkerMetrics* metrics)
    : store_(std::move(store)),
      namespace_(ns),
      block_bytes_(block_bytes),
      batch_blocks_(batch_blocks),
      num_buffers_(num_buffers),
      alloc_(std::move(alloc)),
      on_written_(std::move(on_written)),
      metrics_(metrics) {
  KVTIER_CHECK(store_ != nullptr && batch_blocks_ > 0 && num_buffers_ > 0,
               "BlockWriter: bad arguments");
  thread_ = std::thread([this] { Loop(); });
}

BlockWriter::~BlockWriter() {
  Flush();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

absl::StatusOr<engine::HostBuffer> BlockWriter::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return !free_.empty() || allocated_ < num_buffers_;
    };
    mu_.Await(absl::Condition(&ready));
    if (!free_.empty()) {
      engine::HostBuffer b = std::move(free_.back());
      free_.pop_back();
      return b;
    }
    ++allocated_;
  }
  absl::StatusOr<engine::HostBuffer> b = alloc_(batch_blocks_ * block_bytes_);
  if (!b.ok()) {
    absl::MutexLock lock(&mu_);
    --allocated_;
  }
  return b;
}

uint64_t BlockWriter::Submit(engine::HostBuffer buffer, std::vector<BlockKey> keys,
                             std::vector<BlockKey> parents) {
  KVTIER_CHECK(keys.size() <= batch_blocks_ && buffer.size() >= keys.size() * block_bytes_ &&
                   parents.size() == keys.size(),
               "BlockWriter::Submit: {} keys, {} parents for a buffer of {} bytes", keys.size(),
               parents.size(), buffer.size());
  if (metrics_ != nullptr) {
    metrics_->write_queue_bytes->Add(static_cast<double>(keys.size() * block_bytes_));
  }
  absl::MutexLock lock(&mu_);
  const uint64_t ticket = ++submitted_;
  queue_.push_back(Batch{ticket, std::move(buffer), std::move(keys), std::move(parents)});
  return ticket;
}

void BlockWriter::Return(engine::HostBuffer buffer) {
  absl::MutexLock lock(&mu_);
  free_.push_back(std::move(buffer));
}

void BlockWriter::Flush() {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return written_ == submitted_; };
  mu_.Await(absl::Condition(&done));
}

uint64_t BlockWriter::written() const {
  absl::MutexLock lock(&mu_);
  return written_;
}

BlockWriter::Stats BlockWriter::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void BlockWriter::Loop() {
  std::vector<const void*> blocks;
  while (true) {
    Batch batch;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, and Flush() emptied the queue
      batch = std::move(queue_.front());
      queue_.pop_front();
    }
    blocks.clear();
    for (size_t i = 0; i < batch.keys.size(); ++i) {
      blocks.push_back(batch.buffer.data() + i * block_bytes_);
    }
    // The client reports node failures as skipped blocks; an error means bad arguments, which
    // would be a bug of this class: log it and count the blocks as skipped.
    const absl::Time start = absl::Now();
    absl::StatusOr<PutResult> r =
        store_->Put(namespace_, batch.keys, batch.parents, blocks, block_bytes_);
    if (!r.ok()) {
      KVTIER_LOG_LIMITED(err, "block writer: put failed: {}", r.status().ToString());
      r = PutResult{0, 0, static_cast<uint32_t>(batch.keys.size())};
    }
    if (metrics_ != nullptr) {
      metrics_->Stored(*r, block_bytes_, absl::ToDoubleSeconds(absl::Now() - start));
      metrics_->write_queue_bytes->Add(-static_cast<double>(batch.keys.size() * block_bytes_));
      metrics_->store_connected->Set(store_->AnyNodeConnected() ? 1 : 0);
    }
    spdlog::debug("wrote {} blocks back: {} stored, {} present, {} skipped", batch.keys.size(),
                  r->stored, r->present, r->skipped);
    {
      absl::MutexLock lock(&mu_);
      ++stats_.batches;
      stats_.stored_blocks += r->stored;
      stats_.present_blocks += r->present;
      stats_.skipped_blocks += r->skipped;
      free_.push_back(std::move(batch.buffer));
      written_ = batch.ticket;
    }
    if (on_written_) on_written_();
  }
}

}  // namespace kvtier::worker
