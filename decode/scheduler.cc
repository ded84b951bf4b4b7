#include "decode/scheduler.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log_limiter.h"
#include "common/logging.h"

namespace kvtier::decode {

// ---------------------------------------------------------------------------------------------
// GenerationStream

bool GenerationStream::Next(std::vector<StreamEvent>* out, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(
                           +[](GenerationStream* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
                             return !s->events_.empty() || s->finished_;
                           },
                           this),
                       timeout);
  for (StreamEvent& e : events_) out->push_back(std::move(e));
  events_.clear();
  return !finished_;
}

absl::Status GenerationStream::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

bool GenerationStream::finished() const {
  absl::MutexLock lock(&mu_);
  return finished_;
}

void GenerationStream::Push(StreamEvent event) {
  absl::MutexLock lock(&mu_);
  if (!events_.empty() && !event.first) {
    StreamEvent& back = events_.back();
    if (back.index == event.index && back.finish_reason.empty()) {
      back.tokens.insert(back.tokens.end(), event.tokens.begin(), event.tokens.end());
      back.finish_reason = std::move(event.finish_reason);
      return;
    }
  }
  events_.push_back(std::move(event));
}

void GenerationStream::Finish(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  finished_ = true;
  status_ = std::move(status);
}

// ---------------------------------------------------------------------------------------------
// Scheduler state

struct Scheduler::Seq {
  int index = 0;
  // tokens: prompt, then generated. pages: the request's shared pages, then own pages.
  engine::Sequence seq;
  int own_from = 0;  // seq.pages[own_from..] belong to this sequence
  std::optional<engine::Sampler> sampler;
  int generated = 0;
  absl::Time last_token_at;  // when its last token was sampled
  int blocks_done = 0;       // leading blocks already handed to the cache (or not to be)
  BlockKey last_key{};       // key of block blocks_done - 1
  bool started = false;
  bool finished = false;
  bool released = false;
  bool first_sent = false;
};

struct Scheduler::Active {
  std::shared_ptr<GenerationStream> stream;
  GenerateSpec spec;
  absl::Time received;
  absl::Time admitted;       // pages reserved
  absl::Time fetched;        // prompt blocks fetched from the store (= admitted without a fetch)
  bool first_token = false;  // some completion sampled its first token
  bool length = false;       // some completion ended on max_tokens or the context
  std::vector<BlockKey> prompt_keys;  // of the shared blocks (empty without use_cache)
  std::vector<int32_t> shared_pages;  // the request's own references
  int shared_blocks = 0;              // prompt blocks shared by the n completions: (P - 1) / B
  int cached_blocks = 0;              // of them, taken from the BlockCache or the store
  int first_tier_blocks = 0;          // of them, from the BlockCache
  std::vector<Seq> seqs;
  int unfinished = 0;
  bool done = false;
  bool wrote = false;         // handed blocks to write_keys_ in this step
  uint64_t write_ticket = 0;  // of its last write-back (KvTier::written())
};

Scheduler::Scheduler(engine::Engine* engine, worker::KvTier* tier, SchedulerOptions options,
                     std::unique_ptr<StoreClient> writer_store)
    : engine_(engine),
      tier_(tier),
      metrics_(tier->metrics()),
      options_(options),
      block_tokens_(engine->kv_layout().block_tokens),
      vocab_size_(engine->config().vocab_size),
      max_context_([&] {
        int64_t limit = engine->config().max_position_embeddings;
        if (engine->config().sliding_window > 0) {
          limit = std::min<int64_t>(limit, engine->config().sliding_window);
        }
        return limit;
      }()),
      allocator_(engine->num_pages()),
      cache_(&allocator_, &block_events_) {
  KVTIER_CHECK(options_.max_batch_seqs > 0 && options_.max_batch_seqs < options_.max_batch_tokens,
               "max_batch_seqs {} must be in (0, max_batch_tokens {})", options_.max_batch_seqs,
               options_.max_batch_tokens);
  KVTIER_CHECK(options_.max_batch_tokens <= engine->options().max_batch_tokens &&
                   options_.max_batch_seqs <= engine->options().max_batch_seqs,
               "scheduler batch bounds exceed the engine's");
  if (writer_store != nullptr && tier_->has_store()) {
    tier_->EnableAsyncWrites(std::move(writer_store), options_.write_buffer_bytes, [this] {
      absl::MutexLock lock(&mu_);
      written_ = true;
      cv_.Signal();
    });
  }
  PublishStats();
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Start() {
  KVTIER_CHECK(!thread_.joinable(), "Scheduler started twice");
  thread_ = std::thread([this] { Loop(); });
}

void Scheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    cv_.SignalAll();
  }
  if (thread_.joinable()) {
    thread_.join();
  } else {
    FailAll(absl::UnavailableError("the decode worker is shutting down"));
  }
  // The loop is gone: this thread owns its state now.
  tier_->StopAsyncWrites();
  FinishWritten();
}

Scheduler::Stats Scheduler::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void Scheduler::PublishStats() {
  absl::MutexLock lock(&mu_);
  stats_.running_sequences = running_seqs_;
  stats_.total_pages = allocator_.num_pages();
  stats_.free_pages = cache_.free_pages();
  stats_.cached_pages = cache_.cached_pages();
  stats_.available_pages = cache_.available_pages();
  stats_.cache_hit_blocks = cache_.stats().hit_blocks;
  stats_.cache_evictions = cache_.stats().evictions;
  metrics_->num_requests_running->Set(running_requests_);
  metrics_->num_requests_waiting->Set(static_cast<double>(waiting_.size()));
  // In use: neither free nor evictable (vLLM's kv_cache_usage_perc counts cached blocks that
  // nobody uses as free too).
  metrics_->kv_cache_usage_perc->Set(stats_.total_pages == 0
                                         ? 0.0
                                         : 1.0 - static_cast<double>(stats_.available_pages) /
                                                     stats_.total_pages);
}

int Scheduler::PagesNeeded(int prompt_len, int max_tokens, int n, int* shared_blocks) const {
  const int b = block_tokens_;
  *shared_blocks = (prompt_len - 1) / b;
  // Positions whose K/V a completion computes: the prompt, then every generated token but the
  // last, below the context limit.
  const int64_t positions =
      std::min<int64_t>(prompt_len + std::max(max_tokens - 1, 0), max_context_);
  const int per_seq = static_cast<int>((positions + b - 1) / b);
  return *shared_blocks + n * (per_seq - *shared_blocks);
}

absl::StatusOr<std::shared_ptr<GenerationStream>> Scheduler::Submit(GenerateSpec spec) {
  const std::vector<TokenId>& p = spec.prompt;
  if (p.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (static_cast<int64_t>(p.size()) > max_context_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", p.size(), " tokens, more than the model's context of ", max_context_));
  }
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] < 0 || p[i] >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", p[i], " at position ", i,
                                                     " is outside the vocabulary (vocab_size ",
                                                     vocab_size_, ")"));
    }
  }
  if (absl::Status st = spec.sampling.Validate(); !st.ok()) return st;
  if (spec.n < 1 || spec.n > options_.max_batch_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("n must be in [1, ", options_.max_batch_seqs, "], got ", spec.n));
  }
  int shared = 0;
  const int total = engine_->num_pages();
  const int need =
      PagesNeeded(static_cast<int>(p.size()), spec.sampling.max_tokens, spec.n, &shared);
  if (need > total) {
    if (PagesNeeded(static_cast<int>(p.size()), 1, spec.n, &shared) > total) {
      return absl::InvalidArgumentError(
          absl::StrCat("the prompt needs more KV-cache pages than this worker has (", total,
                       " pages of ", block_tokens_, " tokens)"));
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt + max_tokens (", spec.sampling.max_tokens, ") x n (", spec.n, ") need ", need,
        " KV-cache pages, this worker has ", total, "; lower max_tokens or n"));
  }
  auto stream = std::make_shared<GenerationStream>();
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the decode worker is shutting down");
  if (static_cast<int>(waiting_.size()) >= options_.max_queued_requests) {
    return absl::ResourceExhaustedError(absl::StrCat("decode worker overloaded: ", waiting_.size(),
                                                     " requests already waiting for memory"));
  }
  waiting_.push_back(Waiting{stream, std::move(spec), absl::Now(), {}, false});
  ++stats_.active_requests;
  metrics_->num_requests_waiting->Set(static_cast<double>(waiting_.size()));
  cv_.Signal();
  return stream;
}

// ---------------------------------------------------------------------------------------------
// The loop

void Scheduler::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && running_.empty() && waiting_.empty() && !written_) cv_.Wait(&mu_);
      if (stopping_) break;
      written_ = false;
    }
    FinishWritten();
    DropCancelled();
    const bool still_waiting = Admit();
    const bool ran = Step();
    if (!ran && still_waiting) {
      // Nothing runs and the head of the queue does not fit (cannot last: an idle worker has
      // every page free or evictable). Do not spin.
      absl::MutexLock lock(&mu_);
      cv_.WaitWithTimeout(&mu_, absl::Milliseconds(5));
    }
  }
  FailAll(absl::UnavailableError("the decode worker is shutting down"));
}

void Scheduler::DropCancelled() {
  bool changed = false;
  for (auto& a : running_) {
    if (a->stream->cancelled()) {
      FinishRequest(*a, absl::CancelledError("request cancelled"));
      changed = true;
    }
  }
  std::erase_if(running_, [](const std::unique_ptr<Active>& a) { return a->done; });
  std::vector<Waiting> dropped;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (it->stream->cancelled()) {
        dropped.push_back(std::move(*it));
        it = waiting_.erase(it);
        --stats_.active_requests;
      } else {
        ++it;
      }
    }
  }
  const absl::Status cancelled = absl::CancelledError("request cancelled");
  for (Waiting& w : dropped) {
    CountFinished(cancelled, false, w.received);
    w.stream->Finish(cancelled);
  }
  if (changed || !dropped.empty()) PublishStats();
}

bool Scheduler::Admit() {
  const int b = block_tokens_;
  while (true) {
    Waiting* w = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (waiting_.empty()) return false;
      // Only this thread pops; Submit's push_back keeps references to elements valid.
      w = &waiting_.front();
    }
    const GenerateSpec* spec = &w->spec;
    if (running_seqs_ + spec->n > options_.max_batch_seqs) return true;
    const int prompt_len = static_cast<int>(spec->prompt.size());
    int shared = 0;
    const int need = PagesNeeded(prompt_len, spec->sampling.max_tokens, spec->n, &shared);
    if (spec->use_cache && !w->keyed) {
      w->keys = tier_->Keys(
          absl::MakeConstSpan(spec->prompt).first(static_cast<size_t>(shared) * b), spec->tenant);
      w->keyed = true;
    }
    std::vector<int32_t> acquired;
    if (spec->use_cache) acquired = cache_.Acquire(w->keys);
    const int hit = static_cast<int>(acquired.size());
    absl::StatusOr<std::vector<int32_t>> pages = cache_.AllocatePages(need - hit);
    if (!pages.ok()) {
      std::reverse(acquired.begin(), acquired.end());
      cache_.Release(acquired);
      return true;  // wait for running requests to finish (FIFO: nobody overtakes)
    }

    auto a = std::make_unique<Active>();
    {
      absl::MutexLock lock(&mu_);
      a->stream = std::move(w->stream);
      a->spec = std::move(w->spec);
      a->received = w->received;
      a->prompt_keys = std::move(w->keys);
      waiting_.pop_front();
    }
    a->admitted = absl::Now();
    metrics_->request_queue_time->Observe(absl::ToDoubleSeconds(a->admitted - a->received));
    a->shared_blocks = shared;
    a->shared_pages = std::move(acquired);
    a->shared_pages.insert(a->shared_pages.end(), pages->begin(), pages->begin() + (shared - hit));
    int fetched = 0;
    a->fetched = a->admitted;
    if (a->spec.use_cache && hit < shared) {
      fetched =
          static_cast<int>(tier_->FetchPrefix(absl::MakeConstSpan(a->prompt_keys).subspan(hit),
                                              absl::MakeConstSpan(a->shared_pages).subspan(hit)));
      for (int i = hit; i < hit + fetched; ++i) {
        cache_.Insert(a->prompt_keys[i], a->shared_pages[i]);  // false: keep it private
      }
      if (tier_->has_store()) a->fetched = absl::Now();
    }
    a->cached_blocks = hit + fetched;
    a->first_tier_blocks = hit;
    const size_t block_bytes = tier_->block_bytes();
    metrics_->Fetched(worker::FetchPath::kFirstTier, hit, hit * block_bytes);
    metrics_->PromptTokens(worker::TokenSource::kFirstTier, static_cast<uint64_t>(hit) * b);
    metrics_->PromptTokens(worker::TokenSource::kStore, static_cast<uint64_t>(fetched) * b);
    metrics_->PromptTokens(worker::TokenSource::kComputed,
                           static_cast<uint64_t>(prompt_len - a->cached_blocks * b));

    const int n = a->spec.n;
    const int own = (need - shared) / n;
    auto own_begin = pages->begin() + (shared - hit);
    a->seqs.resize(n);
    for (int i = 0; i < n; ++i) {
      Seq& s = a->seqs[i];
      s.index = i;
      s.seq.tokens = a->spec.prompt;
      s.seq.pages = a->shared_pages;
      s.seq.pages.insert(s.seq.pages.end(), own_begin + i * own, own_begin + (i + 1) * own);
      s.own_from = shared;
      engine::SamplingParams sp = a->spec.sampling;
      sp.seed += static_cast<uint64_t>(i);
      s.sampler.emplace(sp);
      // Completion 0 computes the shared blocks; the others start once they are computed.
      const int start_block = i == 0 ? a->cached_blocks : shared;
      s.seq.num_computed = start_block * b;
      s.blocks_done = start_block;
      if (a->spec.use_cache && start_block > 0) s.last_key = a->prompt_keys[start_block - 1];
      s.started = i == 0 || a->cached_blocks == shared;
    }
    a->unfinished = n;
    running_seqs_ += n;
    ++running_requests_;
    spdlog::debug(
        "req={} admitted: {} prompt tokens, {} cached blocks ({} from the store), {} pages",
        a->spec.request_id, prompt_len, a->cached_blocks, fetched, need);
    running_.push_back(std::move(a));
    PublishStats();
  }
}

bool Scheduler::Step() {
  inputs_.clear();
  owners_.clear();
  int tokens = 0;
  auto add = [&](Active& a, Seq& s, int n) {
    engine::SeqInput in;
    in.tokens = absl::MakeConstSpan(s.seq.tokens).subspan(s.seq.num_computed, n);
    in.start_pos = s.seq.num_computed;
    in.pages = s.seq.pages;
    inputs_.push_back(in);
    owners_.emplace_back(&a, &s);
    tokens += n;
  };
  // Decode steps first (one token each), then prefill chunks in admission order.
  for (auto& a : running_) {
    for (Seq& s : a->seqs) {
      if (s.started && !s.finished &&
          static_cast<int>(s.seq.tokens.size()) - s.seq.num_computed == 1) {
        add(*a, s, 1);
      }
    }
  }
  for (auto& a : running_) {
    for (Seq& s : a->seqs) {
      const int pending = static_cast<int>(s.seq.tokens.size()) - s.seq.num_computed;
      if (!s.started || s.finished || pending <= 1) continue;
      const int n = std::min(pending, options_.max_batch_tokens - tokens);
      if (n <= 0) break;
      add(*a, s, n);
    }
  }
  if (inputs_.empty()) return false;

  // Which sequences sample after this step, and whether all of them are greedy.
  bool all_greedy = true;
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const Seq& s = *owners_[i].second;
    const bool samples = inputs_[i].start_pos + static_cast<int>(inputs_[i].tokens.size()) ==
                         static_cast<int>(s.seq.tokens.size());
    if (samples && !owners_[i].first->spec.sampling.greedy()) all_greedy = false;
  }
  absl::Status st;
  step_started_ = absl::Now();
  if (all_greedy) {
    next_tokens_.resize(inputs_.size());
    st = engine_->ForwardGreedy(inputs_, absl::MakeSpan(next_tokens_));
  } else {
    logits_.resize(inputs_.size() * static_cast<size_t>(vocab_size_));
    st = engine_->Forward(inputs_, absl::MakeSpan(logits_));
  }
  step_ended_ = absl::Now();
  if (!st.ok()) {
    // Arguments are checked before anything runs, so this is a bug or a device failure: fail
    // the requests of this batch rather than the worker.
    KVTIER_LOG_LIMITED(err, "forward failed: {}", st.ToString());
    for (auto& [a, s] : owners_) {
      if (!a->done) FinishRequest(*a, absl::InternalError(absl::StrCat("forward: ", st.message())));
    }
    std::erase_if(running_, [](const std::unique_ptr<Active>& a) { return a->done; });
    PublishStats();
    return true;
  }

  for (size_t i = 0; i < inputs_.size(); ++i) {
    Active& a = *owners_[i].first;
    Seq& s = *owners_[i].second;
    s.seq.num_computed += static_cast<int>(inputs_[i].tokens.size());
    CompleteBlocks(a, s);
    if (s.index == 0 && s.seq.num_computed >= a.shared_blocks * block_tokens_) {
      for (Seq& other : a.seqs) other.started = true;
    }
    if (s.seq.num_computed != static_cast<int>(s.seq.tokens.size())) continue;  // mid-prefill
    if (a.spec.sampling.max_tokens == 0) {
      FinishSeq(a, s, "length");
      continue;
    }
    const TokenId token = all_greedy ? next_tokens_[i]
                                     : s.sampler->Sample(absl::MakeConstSpan(logits_).subspan(
                                           i * static_cast<size_t>(vocab_size_), vocab_size_));
    HandleToken(a, s, token);
  }

  if (!write_keys_.empty()) {
    const uint64_t ticket = tier_->StoreBlocksAsync(write_keys_, write_parents_, write_pages_);
    for (auto& a : running_) {
      if (a->wrote) a->write_ticket = ticket;
      a->wrote = false;
    }
    write_keys_.clear();
    write_parents_.clear();
    write_pages_.clear();
  }
  for (auto& a : running_) {
    if (!a->done && a->unfinished == 0) FinishRequest(*a, absl::OkStatus());
  }
  std::erase_if(running_, [](const std::unique_ptr<Active>& a) { return a->done; });
  PublishStats();
  return true;
}

void Scheduler::CompleteBlocks(Active& a, Seq& s) {
  const int b = block_tokens_;
  const int complete = s.seq.num_computed / b;
  if (!a.spec.use_cache) {
    s.blocks_done = std::max(s.blocks_done, complete);
    return;
  }
  for (; s.blocks_done < complete; ++s.blocks_done) {
    const int blk = s.blocks_done;
    const int prompt_blocks = static_cast<int>(a.prompt_keys.size());
    // The key this block is chained from: its parent in the store (docs/block-key.md).
    const BlockKey parent = blk == 0               ? tier_->KeyRoot(a.spec.tenant)
                            : blk <= prompt_blocks ? a.prompt_keys[blk - 1]
                                                   : s.last_key;
    const BlockKey key =
        blk < prompt_blocks
            ? a.prompt_keys[blk]
            : ChainBlockKey(parent, absl::MakeConstSpan(s.seq.tokens).subspan(blk * b, b));
    s.last_key = key;
    const int32_t page = s.seq.pages[blk];
    if (cache_.IsCached(page)) continue;
    // Every position of the block is computed: the page may be shared from now on.
    if (cache_.Insert(key, page) && tier_->has_store()) {
      write_keys_.push_back(key);
      write_parents_.push_back(parent);
      write_pages_.push_back(page);
      a.wrote = true;
    }
  }
}

void Scheduler::HandleToken(Active& a, Seq& s, TokenId token) {
  s.seq.tokens.push_back(token);
  ++s.generated;
  metrics_->generation_tokens->Increment();
  if (s.generated > 1) {
    metrics_->inter_token_latency->Observe(absl::ToDoubleSeconds(step_ended_ - s.last_token_at));
  } else if (!a.first_token) {
    a.first_token = true;
    metrics_->FirstToken(a.cached_blocks > 0, step_ended_ - a.received);
    metrics_->request_prefill_time->Observe(absl::ToDoubleSeconds(step_ended_ - a.admitted));
  }
  s.last_token_at = step_ended_;
  const engine::SamplingParams& p = a.spec.sampling;
  const char* reason = nullptr;
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) !=
      p.stop_token_ids.end()) {
    reason = "stop";
  } else if (s.generated >= p.max_tokens ||
             static_cast<int64_t>(s.seq.tokens.size()) >= max_context_) {
    reason = "length";
  }
  StreamEvent e = NextEvent(a, s);
  e.tokens.push_back(token);
  a.stream->Push(std::move(e));
  if (reason != nullptr) FinishSeq(a, s, reason);
}

StreamEvent Scheduler::NextEvent(const Active& a, Seq& s) const {
  StreamEvent e;
  e.index = s.index;
  if (!s.first_sent) {
    e.first = true;
    e.prompt_tokens = static_cast<uint32_t>(a.spec.prompt.size());
    e.cached_tokens = static_cast<uint32_t>(a.cached_blocks * block_tokens_);
    e.timing.queue_ms = absl::ToDoubleMilliseconds(a.admitted - a.received);
    e.timing.fetch_ms = absl::ToDoubleMilliseconds(a.fetched - a.admitted);
    e.timing.compute_ms = absl::ToDoubleMilliseconds(step_started_ - a.fetched);
    e.timing.first_step_ms = absl::ToDoubleMilliseconds(step_ended_ - step_started_);
    e.timing.first_tier_tokens = static_cast<uint32_t>(a.first_tier_blocks * block_tokens_);
    e.timing.store_tokens =
        static_cast<uint32_t>((a.cached_blocks - a.first_tier_blocks) * block_tokens_);
    s.first_sent = true;
  }
  return e;
}

void Scheduler::FinishSeq(Active& a, Seq& s, const char* reason) {
  StreamEvent e = NextEvent(a, s);
  e.finish_reason = reason;
  a.stream->Push(std::move(e));
  if (std::string_view(reason) == "length") a.length = true;
  s.finished = true;
  --a.unfinished;
  --running_seqs_;
  ReleaseSeq(s);
}

void Scheduler::ReleaseSeq(Seq& s) {
  if (s.released) return;
  s.released = true;
  // Last block first: the LRU then evicts a prefix's deepest blocks before its parents.
  std::vector<int32_t> own(s.seq.pages.begin() + s.own_from, s.seq.pages.end());
  std::reverse(own.begin(), own.end());
  cache_.Release(own);
  s.seq.pages.clear();
}

void Scheduler::FinishRequest(Active& a, absl::Status status) {
  for (Seq& s : a.seqs) {
    if (!s.finished) {
      s.finished = true;
      --running_seqs_;
    }
    ReleaseSeq(s);
  }
  a.unfinished = 0;
  std::reverse(a.shared_pages.begin(), a.shared_pages.end());
  cache_.Release(a.shared_pages);
  a.shared_pages.clear();
  // Pages written back were exported when their step ended: evicting them loses nothing.
  if (!options_.keep_blocks) cache_.EvictAll();
  a.done = true;
  --running_requests_;
  PublishStats();
  {
    absl::MutexLock lock(&mu_);
    --stats_.active_requests;
  }
  CountFinished(status, a.length, a.received);
  if (!status.ok() && !absl::IsCancelled(status)) {
    KVTIER_LOG_LIMITED(warn, "req={} failed: {}", a.spec.request_id, status.ToString());
  }
  if (status.ok() && a.write_ticket > tier_->written()) {
    finishing_.push_back({a.stream, a.write_ticket});
    return;
  }
  a.stream->Finish(std::move(status));
}

void Scheduler::CountFinished(const absl::Status& status, bool length, absl::Time received) {
  metrics_->e2e_request_latency->Observe(absl::ToDoubleSeconds(absl::Now() - received));
  metrics_->Finished(status.ok()
                         ? (length ? worker::FinishReason::kLength : worker::FinishReason::kStop)
                     : absl::IsCancelled(status) ? worker::FinishReason::kCancelled
                                                 : worker::FinishReason::kError);
}

void Scheduler::FinishWritten() {
  if (finishing_.empty()) return;
  const uint64_t written = tier_->written();
  std::erase_if(finishing_, [&](Finishing& f) {
    if (f.ticket > written) return false;
    f.stream->Finish(absl::OkStatus());
    return true;
  });
}

void Scheduler::FailAll(const absl::Status& status) {
  for (auto& a : running_) {
    if (!a->done) FinishRequest(*a, status);
  }
  running_.clear();
  std::deque<Waiting> waiting;
  {
    absl::MutexLock lock(&mu_);
    waiting.swap(waiting_);
    stats_.active_requests -= static_cast<int>(waiting.size());
  }
  for (Waiting& w : waiting) {
    CountFinished(status, false, w.received);
    w.stream->Finish(status);
  }
  PublishStats();
}

}  // namespace kvtier::decode
