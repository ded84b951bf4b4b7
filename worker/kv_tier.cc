#include "worker/kv_tier.h"

#include <algorithm>
#include <optional>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log_limiter.h"
#include "common/logging.h"

namespace kvtier::worker {

KvTier::KvTier(engine::Engine* engine, StoreClient* store, WorkerMetrics* metrics)
    : engine_(engine),
      store_(store),
      own_metrics_(metrics == nullptr ? std::make_unique<WorkerMetrics>("none") : nullptr),
      metrics_(metrics == nullptr ? own_metrics_.get() : metrics),
      namespace_(ComputeNamespace(engine->namespace_params())),
      block_tokens_(static_cast<uint32_t>(engine->kv_layout().block_tokens)),
      block_bytes_(engine->kv_layout().BlockBytes()) {
  // The client calls back (on this thread: it is this tier's) before it unmaps a pool.
  if (store_ != nullptr) store_->SetUnmapCallback([this](const MappedPool& p) { Unregister(p); });
}

KvTier::~KvTier() {
  if (store_ != nullptr) store_->SetUnmapCallback(nullptr);
  for (const MappedPool& p : registered_) engine_->UnregisterHostMemory(p.base);
}

void KvTier::Unregister(const MappedPool& pool) {
  auto it = std::find(registered_.begin(), registered_.end(), pool);
  if (it == registered_.end()) return;
  engine_->UnregisterHostMemory(pool.base);
  registered_.erase(it);
  spdlog::info("store pool of {} MiB (incarnation {:x}) unregistered before its unmapping",
               pool.bytes >> 20, pool.incarnation);
}

void KvTier::RegisterStorePools() {
  if (store_ == nullptr) return;
  std::vector<MappedPool> now = store_->MappedPools();
  // By identity: a restarted store's pool at the same address is another pool.
  auto in = [](const std::vector<MappedPool>& v, const MappedPool& p) {
    return std::find(v.begin(), v.end(), p) != v.end();
  };
  for (const MappedPool& p : registered_) {
    if (!in(now, p)) engine_->UnregisterHostMemory(p.base);
  }
  for (const MappedPool& p : now) {
    if (in(registered_, p)) continue;
    const absl::Time start = absl::Now();
    // On failure imports from the pool are staged (slower, still correct); not retried.
    if (absl::Status st = engine_->RegisterHostMemory(p.base, p.bytes); !st.ok()) {
      LogFailure("registering the store pool", st);
    } else {
      spdlog::info("store pool of {} MiB mapped and registered in {}", p.bytes >> 20,
                   absl::FormatDuration(absl::Now() - start));
    }
  }
  registered_ = std::move(now);
  UpdateConnected();
}

NamespaceId KvTier::KeyRoot(absl::string_view tenant) const {
  return TenantNamespace(namespace_, tenant);
}

std::vector<BlockKey> KvTier::Keys(absl::Span<const TokenId> tokens,
                                   absl::string_view tenant) const {
  return ComputeBlockKeys(KeyRoot(tenant), tokens, block_tokens_);
}

void KvTier::LogFailure(const char* what, const absl::Status& status) {
  ++stats_.failures;
  // One warning per interval with a count (a misconfiguration shows up without flooding the
  // log); every failure at debug level.
  KVTIER_LOG_LIMITED(warn, "store tier: {} failed, serving by recompute: {}", what,
                     status.ToString());
  spdlog::debug("store tier: {} failed: {}", what, status.ToString());
}

absl::Status KvTier::EnsureStaging(size_t blocks) {
  if (dst_.size() >= blocks) return absl::OkStatus();
  staging_ = engine::HostBuffer();  // free the old one first
  absl::StatusOr<engine::HostBuffer> b = engine_->AllocateHostBuffer(blocks * block_bytes_);
  if (!b.ok()) {
    dst_.clear();
    src_.clear();
    return b.status();
  }
  staging_ = std::move(*b);
  dst_.resize(blocks);
  src_.resize(blocks);
  for (size_t i = 0; i < blocks; ++i) {
    dst_[i] = staging_.data() + i * block_bytes_;
    src_[i] = dst_[i];
  }
  return absl::OkStatus();
}

size_t KvTier::Lookup(absl::Span<const BlockKey> keys) {
  if (store_ == nullptr || keys.empty()) return 0;
  absl::StatusOr<size_t> n = store_->Lookup(namespace_, keys);
  UpdateConnected();
  if (!n.ok()) {
    LogFailure("lookup", n.status());
    return 0;
  }
  return std::min(*n, keys.size());
}

size_t KvTier::FetchMapped(absl::Span<const BlockKey> keys, absl::Span<const int32_t> pages,
                           size_t* stored, std::optional<FallbackReason>* failure) {
  *stored = keys.size();  // unknown: let Get look
  RegisterStorePools();
  if (registered_.empty()) return 0;
  const absl::Time start = absl::Now();
  absl::StatusOr<MappedPrefix> m = store_->MapPrefix(namespace_, keys, block_bytes_);
  if (!m.ok()) {
    LogFailure("map", m.status());
    return 0;  // the Get path may still reach the blocks
  }
  const size_t n = m->size();
  size_t verified = 0;
  absl::Status st;
  // The copy engine (or memcpy on the CPU) reads the leased blocks chunk by chunk, and each
  // chunk is hashed once it is imported, while the next one is: the checksum covers the bytes
  // imported. Leased slots do not change; the one hazard is a late writer of a reaped
  // reservation whose slot went to this block. Its write, if it landed before or during the
  // import, is still there when the hash reads the slot afterwards (hashing while importing
  // could read the slot before the write and the copy after it). A block that fails its
  // checksum ends the prefix; what was imported past it is garbage the caller recomputes
  // (docs/serving.md, "Decode scheduler").
  std::thread verifier;
  for (size_t b = 0; b < n; b += kVerifyChunkBlocks) {
    const size_t e = std::min(n, b + kVerifyChunkBlocks);
    st = engine_->ImportBlocks(pages.subspan(b, e - b), m->blocks().subspan(b, e - b));
    if (verifier.joinable()) verifier.join();
    if (!st.ok() || verified < b) break;  // an import failed, or a block of the last chunk
    verifier = std::thread([&, b, e] { verified = b + m->Verify(b, e - b); });
  }
  if (verifier.joinable()) verifier.join();
  const bool checksum_failed = st.ok() && verified < n;
  *stored = checksum_failed ? verified : m->stored();
  if (!st.ok()) {
    *failure = FallbackReason::kImport;
  } else if (!m->Release()) {
    st = absl::AbortedError("a lease expired while its blocks were read");
    *failure = FallbackReason::kStoreError;
  } else if (checksum_failed) {
    metrics_->checksum_failures->Increment();
    *failure = FallbackReason::kChecksum;
  }
  if (!st.ok()) {
    LogFailure("mapped fetch", st);
    *stored = 0;
    verified = 0;
  }
  metrics_->Fetched(FetchPath::kMapped, verified, verified * block_bytes_,
                    absl::ToDoubleSeconds(absl::Now() - start));
  stats_.fetched_blocks += verified;
  return verified;
}

size_t KvTier::FetchPrefix(absl::Span<const BlockKey> keys, absl::Span<const int32_t> pages) {
  if (store_ == nullptr || keys.empty()) return 0;
  KVTIER_CHECK(pages.size() >= keys.size(), "FetchPrefix: {} pages for {} keys", pages.size(),
               keys.size());
  size_t stored = keys.size();
  std::optional<FallbackReason> failure;
  size_t done = FetchMapped(keys, pages, &stored, &failure);
  // The rest, if stored, lives in stores that are not mapped: copy it through staging.
  const absl::Time start = absl::Now();
  size_t copied = 0;
  bool called = false;
  while (done < stored && !failure.has_value()) {
    const size_t n = std::min(kMaxBlocksPerCall, keys.size() - done);
    if (absl::Status st = EnsureStaging(n); !st.ok()) {
      LogFailure("staging", st);
      failure = FallbackReason::kImport;
      break;
    }
    called = true;
    const uint64_t bad_before = store_->ChecksumFailures();
    absl::StatusOr<size_t> got = store_->Get(namespace_, keys.subspan(done, n),
                                             absl::MakeSpan(dst_.data(), n), block_bytes_);
    if (!got.ok()) {
      LogFailure("get", got.status());
      failure = FallbackReason::kStoreError;
      break;
    }
    // The client ended the prefix at a block that failed its checksum.
    if (const uint64_t bad = store_->ChecksumFailures() - bad_before; bad > 0) {
      metrics_->checksum_failures->Increment(static_cast<double>(bad));
      failure = FallbackReason::kChecksum;
    }
    const size_t m = std::min(*got, n);
    if (m > 0) {
      absl::Status st = engine_->ImportPages(
          pages.subspan(done, m), absl::MakeConstSpan(staging_.data(), m * block_bytes_));
      if (!st.ok()) {
        LogFailure("import", st);
        failure = FallbackReason::kImport;
        break;
      }
      done += m;
      copied += m;
      stats_.fetched_blocks += m;
    }
    if (m < n) break;
  }
  if (called) {
    metrics_->Fetched(FetchPath::kUcx, copied, copied * block_bytes_,
                      absl::ToDoubleSeconds(absl::Now() - start));
  }
  // A node that failed during the calls is disconnected: the prefix ended at a store error
  // rather than at the end of what is stored (the client reports both as a shorter prefix).
  UpdateConnected();
  if (!failure.has_value() && done < keys.size() && !store_->AnyNodeConnected()) {
    failure = FallbackReason::kStoreError;
  }
  if (failure.has_value()) metrics_->Fallback(*failure);
  return done;
}

void KvTier::UpdateConnected() {
  metrics_->store_connected->Set(store_ != nullptr && store_->AnyNodeConnected() ? 1 : 0);
}

PutResult KvTier::StoreBlocks(absl::Span<const BlockKey> keys, absl::Span<const BlockKey> parents,
                              absl::Span<const int32_t> pages) {
  PutResult total;
  KVTIER_CHECK(pages.size() == keys.size() && parents.size() == keys.size(),
               "StoreBlocks: {} pages and {} parents for {} keys", pages.size(), parents.size(),
               keys.size());
  if (store_ == nullptr) {
    total.skipped = static_cast<uint32_t>(keys.size());
    stats_.skipped_blocks += keys.size();
    return total;
  }
  for (size_t done = 0; done < keys.size();) {
    const size_t n = std::min(kMaxBlocksPerCall, keys.size() - done);
    const absl::Time start = absl::Now();
    absl::Status st = EnsureStaging(n);
    if (st.ok())
      st = engine_->ExportPages(pages.subspan(done, n), staging_.span().first(n * block_bytes_));
    absl::StatusOr<PutResult> r;
    if (st.ok()) {
      r = store_->Put(namespace_, keys.subspan(done, n), parents.subspan(done, n),
                      absl::MakeConstSpan(src_.data(), n), block_bytes_);
      if (!r.ok()) st = r.status();
    }
    if (!st.ok()) {
      LogFailure("put", st);
      total.skipped += static_cast<uint32_t>(n);
    } else {
      total.stored += r->stored;
      total.present += r->present;
      total.skipped += r->skipped;
      metrics_->Stored(*r, block_bytes_, absl::ToDoubleSeconds(absl::Now() - start));
    }
    done += n;
  }
  UpdateConnected();
  stats_.stored_blocks += total.stored;
  stats_.skipped_blocks += total.skipped;
  return total;
}

void KvTier::EnableAsyncWrites(std::unique_ptr<StoreClient> writer_store, size_t buffer_bytes,
                               std::function<void()> on_written) {
  KVTIER_CHECK(store_ != nullptr && writer_store != nullptr && writer_ == nullptr,
               "EnableAsyncWrites: needs a store and is called once");
  {
    absl::MutexLock lock(&stores_mu_);
    writer_store_ = writer_store.get();
    if (stores_.has_value()) writer_store_->SetStores(*stores_);
  }
  const size_t batch = kMaxBlocksPerCall;
  const int buffers = static_cast<int>(std::max<size_t>(2, buffer_bytes / (batch * block_bytes_)));
  writer_ = std::make_unique<BlockWriter>(
      std::move(writer_store), namespace_, block_bytes_, batch, buffers,
      [this](size_t bytes) { return engine_->AllocateHostBuffer(bytes); }, std::move(on_written),
      metrics_);
}

void KvTier::SetStores(const std::vector<std::string>& addresses) {
  if (store_ == nullptr) return;
  store_->SetStores(addresses);
  absl::MutexLock lock(&stores_mu_);
  stores_ = addresses;
  if (writer_store_ != nullptr) writer_store_->SetStores(addresses);
}

uint64_t KvTier::StoreBlocksAsync(absl::Span<const BlockKey> keys,
                                  absl::Span<const BlockKey> parents,
                                  absl::Span<const int32_t> pages) {
  if (writer_ == nullptr) {
    StoreBlocks(keys, parents, pages);
    return 0;
  }
  KVTIER_CHECK(pages.size() == keys.size() && parents.size() == keys.size(),
               "StoreBlocksAsync: {} pages and {} parents for {} keys", pages.size(),
               parents.size(), keys.size());
  uint64_t ticket = 0;
  for (size_t done = 0; done < keys.size();) {
    const size_t n = std::min(writer_->batch_blocks(), keys.size() - done);
    absl::StatusOr<engine::HostBuffer> buffer = writer_->Acquire();
    absl::Status st = buffer.status();
    if (st.ok()) {
      st = engine_->ExportPages(pages.subspan(done, n), buffer->span().first(n * block_bytes_));
    }
    if (st.ok()) {
      auto k = keys.subspan(done, n);
      auto p = parents.subspan(done, n);
      ticket = writer_->Submit(std::move(*buffer), std::vector<BlockKey>(k.begin(), k.end()),
                               std::vector<BlockKey>(p.begin(), p.end()));
    } else {
      if (buffer.ok()) writer_->Return(std::move(*buffer));
      LogFailure("export", st);
      stats_.skipped_blocks += n;
    }
    done += n;
  }
  return ticket;
}

void KvTier::StopAsyncWrites() {
  if (writer_ == nullptr) return;
  writer_->Flush();
  final_ticket_ = writer_->written();
  stats_ = stats();  // the writer's blocks, before it goes
  writer_.reset();
}

KvTier::Stats KvTier::stats() const {
  Stats s = stats_;
  if (writer_ != nullptr) {
    const BlockWriter::Stats w = writer_->stats();
    s.stored_blocks += w.stored_blocks;
    s.skipped_blocks += w.skipped_blocks;
  }
  return s;
}

}  // namespace kvtier::worker
