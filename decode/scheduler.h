// The decode worker's continuous-batching scheduler (docs/serving.md, "Decode scheduler").
//
// One thread, started by Start(), owns the Engine, its pages (through a BlockCache) and the
// KvTier; no other thread touches them. Requests come in through Submit() (any thread): they
// wait in a bounded FIFO queue until their pages can be reserved. Each iteration of the loop
//   1. drops cancelled requests and releases their pages;
//   2. admits waiting requests in order while pages allow: it takes the prompt's longest cached
//      prefix from the BlockCache, fetches the next blocks from the store (KvTier), and
//      reserves every page the request can ever need (prompt + max_tokens, capped by the
//      context), so a running sequence never runs out of pages;
//   3. runs ONE Forward over every running sequence: one token for each decoding sequence
//      plus prefill chunks of admitted prompts, at most max_batch_tokens tokens in all (a long
//      prompt is prefilled over several iterations, interleaved with the decode steps);
//   4. samples, streams each new token to its request's GenerationStream, finishes sequences
//      on a stop token, max_tokens or the context limit;
//   5. hands every block that filled to the BlockCache and writes them to the store in one
//      batch: exported now and stored by the KvTier's writer thread when the scheduler was
//      given a writer store client (the loop never waits for store I/O), or stored in place.
//
// A request's stream finishes once the blocks it wrote are in the store (its tokens, the last
// one and its finish_reason included, stream as soon as they are sampled), so a caller that
// sees the end of a Generate can count on the store holding the whole history.
//
// Metrics (docs/observability.md): the scheduler updates the worker's WorkerMetrics (the tier's,
// KvTier::metrics()) as requests wait, run and finish, with atomics only; the first event of
// each completion carries its FirstTokenTiming.
//
// Correctness: a page enters the BlockCache (and the store) only once all of its block's K/V
// is computed; cached pages are shared read-only (a sequence writes only its own pages).
//
// Thread-safety: Submit, stats and Stop are safe from any thread; the constructor, Start and
// the destructor from one owner thread.
#ifndef KVTIER_DECODE_SCHEDULER_H_
#define KVTIER_DECODE_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "engine/page_allocator.h"
#include "engine/sampler.h"
#include "kvtier/store_client.h"
#include "worker/block_cache.h"
#include "worker/kv_tier.h"

namespace kvtier::decode {

// One generation request, as the scheduler takes it.
struct GenerateSpec {
  std::string request_id;
  std::vector<TokenId> prompt;
  // max_tokens is taken as given (the service resolves 0 to its default).
  engine::SamplingParams sampling;
  // false: no reuse of cached blocks (BlockCache or store) and no writes to either.
  bool use_cache = true;
  // Completions of the prompt; completion i samples with seed + i.
  int n = 1;
  // The caller's tenant: its blocks are keyed in its own namespace (docs/block-key.md).
  std::string tenant;
};

// Where the time to a completion's first token went (docs/observability.md, "Request
// tracing"), in milliseconds: received to admitted (pages reserved), admitted to the prompt's
// blocks fetched, fetched to the start of the step that sampled the first token, and that step.
struct FirstTokenTiming {
  double queue_ms = 0;
  double fetch_ms = 0;
  double compute_ms = 0;
  double first_step_ms = 0;
  uint32_t first_tier_tokens = 0;  // prompt tokens from the BlockCache
  uint32_t store_tokens = 0;       // prompt tokens fetched from the store
};

// Part of a request's output.
struct StreamEvent {
  int index = 0;  // which completion
  // The first event of each index carries the prompt accounting.
  bool first = false;
  uint32_t prompt_tokens = 0;
  uint32_t cached_tokens = 0;  // prompt tokens whose K/V came from the BlockCache or the store
  FirstTokenTiming timing;
  std::vector<TokenId> tokens;
  // Non-empty on the last event of each index: "stop" or "length".
  std::string finish_reason;
};

// The output side of one request: written by the scheduler thread, read by one consumer (the
// gRPC handler). Thread-safe.
class GenerationStream {
 public:
  // Waits up to `timeout` for events and appends them to *out (consecutive tokens of one
  // index are merged into one event). Returns false once the stream is finished and drained.
  bool Next(std::vector<StreamEvent>* out, absl::Duration timeout);
  // Asks the scheduler to drop the request; it stops at the next iteration and frees its pages.
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  // Once finished: OK when every completion ended normally; otherwise why it stopped.
  absl::Status status() const;
  bool finished() const;

 private:
  friend class Scheduler;
  void Push(StreamEvent event);
  void Finish(absl::Status status);

  mutable absl::Mutex mu_;
  std::deque<StreamEvent> events_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> cancelled_{false};
};

struct SchedulerOptions {
  // Most new tokens in one Forward (the prefill chunk bound). Must not exceed the engine's.
  // Default: 512.
  int max_batch_tokens = 512;
  // Most running sequences (each decodes one token per Forward). Must be < max_batch_tokens
  // and not exceed the engine's. Default: 64.
  int max_batch_seqs = 64;
  // Most requests waiting for admission; Submit refuses more. Default: 256.
  int max_queued_requests = 256;
  // Keep finished requests' blocks in the engine's pages (the first tier) for later requests.
  // false: evict them as soon as nobody uses them, so every request fetches its prefix from
  // the store (for measuring the store path, or to keep pages for running requests).
  // Default: true.
  bool keep_blocks = true;
  // Most bytes of blocks exported and waiting for the writer thread. Default: 512 MiB.
  size_t write_buffer_bytes = size_t{512} << 20;
};

class Scheduler {
 public:
  // Borrows `engine` and `tier` (whose store may be null); both must outlive the scheduler.
  // `writer_store`, a second client of the tier's stores, moves write-backs to a writer
  // thread (KvTier::EnableAsyncWrites until Stop); null: the loop stores blocks itself.
  Scheduler(engine::Engine* engine, worker::KvTier* tier, SchedulerOptions options,
            std::unique_ptr<StoreClient> writer_store = nullptr);
  ~Scheduler();  // Stop()s.
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  void Start();
  // Finishes every waiting and running request with Unavailable, refuses new ones, releases
  // all pages, joins the loop thread, then waits for queued write-backs (bounded by the store
  // client's timeouts) and finishes the requests that were waiting for them. Idempotent.
  void Stop();

  // Queues a request. InvalidArgument for a bad prompt or sampling parameters, or a prompt
  // that can never fit in the KV cache; ResourceExhausted when the queue is full or
  // prompt + max_tokens (times n) can never fit; Unavailable once stopped.
  absl::StatusOr<std::shared_ptr<GenerationStream>> Submit(GenerateSpec spec);

  struct Stats {
    int active_requests = 0;  // waiting + running
    int running_sequences = 0;
    int total_pages = 0;
    int free_pages = 0;       // in the allocator
    int cached_pages = 0;     // held by the BlockCache (referenced or not)
    int available_pages = 0;  // free + evictable cached pages: what new requests can get
    uint64_t cache_hit_blocks = 0;
    uint64_t cache_evictions = 0;
  };
  // A snapshot published by the loop thread after each change.
  Stats stats() const;
  // The first tier's blocks as reported to routers (docs/serving.md, "Placement"); any thread.
  const worker::BlockEvents& block_events() const { return block_events_; }

  int64_t max_context() const { return max_context_; }

 private:
  struct Seq;
  struct Active;
  // A request in the queue. `keys` (of the prompt's shared blocks) are computed by the loop
  // thread on the first admission attempt and kept while the request waits.
  struct Waiting {
    std::shared_ptr<GenerationStream> stream;
    GenerateSpec spec;
    absl::Time received;
    std::vector<BlockKey> keys;
    bool keyed = false;
  };

  void Loop();
  // Admits waiting requests while pages allow; returns whether any is still waiting.
  bool Admit();
  // Builds and runs one Forward; false when there was nothing to run.
  bool Step();
  void DropCancelled();
  // Pages one request reserves: the prompt's shared full blocks plus n private tails.
  int PagesNeeded(int prompt_len, int max_tokens, int n, int* shared_blocks) const;
  void HandleToken(Active& a, Seq& s, TokenId token);
  // The next event of completion `s`; the first one carries the prompt accounting.
  StreamEvent NextEvent(const Active& a, Seq& s) const;
  void FinishSeq(Active& a, Seq& s, const char* reason);
  // Hands the blocks of `s` computed since the last call to the cache and the write batch.
  void CompleteBlocks(Active& a, Seq& s);
  void ReleaseSeq(Seq& s);
  void FinishRequest(Active& a, absl::Status status);
  // Counts a finished request (requests_total, e2e latency) received at `received`.
  void CountFinished(const absl::Status& status, bool length, absl::Time received);
  // Finishes the streams whose write-backs are done.
  void FinishWritten();
  void FailAll(const absl::Status& status);
  void PublishStats();

  engine::Engine* engine_;
  worker::KvTier* tier_;
  worker::WorkerMetrics* const metrics_;  // the tier's
  const SchedulerOptions options_;
  const int block_tokens_;
  const int vocab_size_;
  const int64_t max_context_;

  // What cache_ holds, for the routers (thread-safe; before cache_, which reports to it).
  worker::BlockEvents block_events_;
  // Loop-thread state.
  engine::PageAllocator allocator_;
  worker::BlockCache cache_;
  std::vector<std::unique_ptr<Active>> running_;
  int running_seqs_ = 0;
  int running_requests_ = 0;             // in running_ and not done
  std::vector<BlockKey> write_keys_;     // blocks to store after this step
  std::vector<BlockKey> write_parents_;  // the key each was chained from
  std::vector<int32_t> write_pages_;
  // Completed requests whose streams finish once tier_->written() reaches their ticket.
  struct Finishing {
    std::shared_ptr<GenerationStream> stream;
    uint64_t ticket;
  };
  std::deque<Finishing> finishing_;
  std::vector<engine::SeqInput> inputs_;
  std::vector<std::pair<Active*, Seq*>> owners_;
  std::vector<float> logits_;
  std::vector<TokenId> next_tokens_;
  absl::Time step_started_;  // of the current step's Forward
  absl::Time step_ended_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<Waiting> waiting_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool written_ ABSL_GUARDED_BY(mu_) = false;  // the writer finished a batch since last seen
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace kvtier::decode

#endif  // KVTIER_DECODE_SCHEDULER_H_
