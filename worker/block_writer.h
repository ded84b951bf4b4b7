// BlockWriter: writes exported blocks to the store on its own thread, so the thread that drives
// the engine hands blocks over and goes on computing instead of waiting for store I/O (the
// decode worker writes back every block that fills, docs/serving.md, "Decode scheduler").
//
// The producer takes a free host buffer (Acquire), exports pages into it and queues it with
// the blocks' keys (Submit), which returns a ticket. The writer thread stores queued batches in
// order and then returns their buffers; written() is the highest ticket whose batch is done
// (stored, already present, or skipped: a failed write is a cache miss later, never an error).
// There are `num_buffers` buffers of `batch_blocks` blocks, allocated on first use; when all are
// queued, Acquire waits (back-pressure instead of unbounded memory).
//
// Metrics (docs/observability.md): write_queue_bytes (bytes submitted and not yet written), and
// each Put as a store write (store_blocks_total, store_bytes_total, store_seconds).
//
// Ownership: owns its StoreClient (one of its own: a client serializes its calls, and the
// engine thread keeps using its own for fetches) and its buffers; borrows the metrics (null:
// none), which must outlive it.
// Thread-safety: Acquire, Submit, Flush and the destructor from one producer thread; written()
// and stats() from any thread. `on_written` runs on the writer thread after each batch, with no
// lock of the writer held.
#ifndef KVTIER_WORKER_BLOCK_WRITER_H_
#define KVTIER_WORKER_BLOCK_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "worker/worker_metrics.h"

namespace kvtier::worker {

class BlockWriter {
 public:
  using AllocFn = std::function<absl::StatusOr<engine::HostBuffer>(size_t bytes)>;

  // `store` must not be null. `alloc` makes the buffers (Engine::AllocateHostBuffer: pinned
  // memory on the CUDA backend, so exports go straight into them).
  BlockWriter(std::unique_ptr<StoreClient> store, const NamespaceId& ns, size_t block_bytes,
              size_t batch_blocks, int num_buffers, AllocFn alloc, std::function<void()> on_written,
              WorkerMetrics* metrics = nullptr);
  ~BlockWriter();  // Flush()es, then joins the thread.
  BlockWriter(const BlockWriter&) = delete;
  BlockWriter& operator=(const BlockWriter&) = delete;

  size_t batch_blocks() const { return batch_blocks_; }

  // A free buffer of batch_blocks() blocks, waiting while every buffer is queued. An error
  // only when a buffer cannot be allocated.
  absl::StatusOr<engine::HostBuffer> Acquire();
  // Queues the first keys.size() blocks of `buffer` (from Acquire) under `keys`, whose parents
  // are `parents` (StoreClient::Put); returns the batch's ticket (1, 2, ...).
  uint64_t Submit(engine::HostBuffer buffer, std::vector<BlockKey> keys,
                  std::vector<BlockKey> parents);
  // Gives back a buffer from Acquire that will not be submitted.
  void Return(engine::HostBuffer buffer);
  // Waits until every submitted batch is done.
  void Flush();

  uint64_t written() const;
  struct Stats {
    uint64_t batches = 0;
    uint64_t stored_blocks = 0;
    uint64_t present_blocks = 0;
    uint64_t skipped_blocks = 0;
  };
  Stats stats() const;

 private:
  struct Batch {
    uint64_t ticket = 0;
    engine::HostBuffer buffer;
    std::vector<BlockKey> keys;
    std::vector<BlockKey> parents;
  };
  void Loop();

  const std::unique_ptr<StoreClient> store_;
  const NamespaceId namespace_;
  const size_t block_bytes_;
  const size_t batch_blocks_;
  const int num_buffers_;
  const AllocFn alloc_;
  const std::function<void()> on_written_;
  WorkerMetrics* const metrics_;

  mutable absl::Mutex mu_;
  std::vector<engine::HostBuffer> free_ ABSL_GUARDED_BY(mu_);
  int allocated_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Batch> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_BLOCK_WRITER_H_
