#include "cachestore/store.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/logging.h"
#include "common/parallel.h"
#include "common/status_macros.h"

namespace kvtier::cachestore {
namespace {

// A commit's checksums are verified by one thread per this many bytes, up to verify_threads_.
constexpr uint64_t kParallelVerifyBytes = 4ull << 20;
// Blocks the spiller writes per round (the lock is taken between rounds).
constexpr size_t kSpillBatchBlocks = 8;
// Ancestors the spiller writes before a block, at most (bounds its work under the lock).
constexpr size_t kSpillAncestors = 256;
// A write stall pauses the spiller this long; one that lasts kStallLimit fails the tier.
constexpr absl::Duration kStallPause = absl::Milliseconds(20);
constexpr absl::Duration kStallLimit = absl::Seconds(10);
// Longest an eviction waits for the spiller's writes when they hold every candidate.
constexpr absl::Duration kInFlightWait = absl::Seconds(1);
// Nice value of the spiller thread (and RocksDB's background threads lower theirs too).
constexpr int kSpillerNice = 10;
// The spiller looks for work at least this often.
constexpr absl::Duration kSpillerPoll = absl::Milliseconds(100);

}  // namespace

Store::Store(const StoreOptions& options, uint8_t* pool, MetricsRegistry* metrics, Clock clock)
    : options_(options),
      verify_threads_(
          options.verify_threads > 0
              ? options.verify_threads
              : static_cast<int>(std::clamp(std::thread::hardware_concurrency() / 2, 2u, 8u))),
      pool_(pool),
      clock_(std::move(clock)) {
  KVTIER_CHECK(options_.slot_bytes > 0 && options_.slot_count > 0, "empty pool");
  if (metrics == nullptr) {
    own_metrics_ = std::make_unique<MetricsRegistry>();
    metrics = own_metrics_.get();
  }
  MetricsRegistry& m = *metrics;
  lookups_ = m.AddCounter("kvtier_store_lookups_total", "Lookup calls.");
  hit_blocks_ = m.AddCounter("kvtier_store_hit_blocks_total", "Blocks found by lookups.");
  miss_blocks_ =
      m.AddCounter("kvtier_store_miss_blocks_total", "Blocks asked for by lookups and not found.");
  bytes_in_ = m.AddCounter("kvtier_store_bytes_in_total", "Payload bytes committed.");
  bytes_out_ = m.AddCounter("kvtier_store_bytes_out_total", "Payload bytes leased to readers.");
  evictions_ = m.AddCounter("kvtier_store_evictions_total", "Blocks evicted from memory.");
  spills_ = m.AddCounter("kvtier_store_spills_total", "Blocks written to the spill tier.");
  promotions_ =
      m.AddCounter("kvtier_store_promotions_total", "Blocks read back from the spill tier.");
  spill_drops_ =
      m.AddCounter("kvtier_store_spill_drops_total", "Blocks dropped from the spill tier.");
  checksum_failures_ = m.AddCounter("kvtier_store_checksum_failures_total",
                                    "Blocks rejected for a checksum mismatch.");
  expired_reservations_ =
      m.AddCounter("kvtier_store_expired_reservations_total", "Reservations aborted by timeout.");
  expired_leases_ = m.AddCounter("kvtier_store_expired_leases_total", "Leases dropped by timeout.");
  slots_total_g_ = m.AddGauge("kvtier_store_pool_slots", "Slots in the host pool.");
  slots_used_g_ =
      m.AddGauge("kvtier_store_pool_slots_used", "Slots holding or reserved for blocks.");
  pool_bytes_used_g_ =
      m.AddGauge("kvtier_store_pool_bytes_used", "Bytes of the host pool in use (whole slots).");
  spill_bytes_g_ = m.AddGauge("kvtier_store_spill_bytes", "Payload bytes in the spill tier.");
  spill_capacity_g_ =
      m.AddGauge("kvtier_store_spill_capacity_bytes", "Capacity of the spill tier.");
  blocks_memory_g_ = m.AddGauge("kvtier_store_blocks", "Committed blocks.", {{"tier", "memory"}});
  blocks_spill_g_ = m.AddGauge("kvtier_store_blocks", "Committed blocks.", {{"tier", "spill"}});
  leases_g_ = m.AddGauge("kvtier_store_active_leases", "Leases held.");
  reservations_g_ = m.AddGauge("kvtier_store_active_reservations", "Reservations open.");
  spill_writes_ = m.AddCounter("kvtier_store_spill_writes_total",
                               "Blocks the spiller wrote to the spill tier.");
  spill_errors_ = m.AddCounter("kvtier_store_spill_errors_total",
                               "RocksDB failures that took the spill tier offline or kept it so.");
  spill_quarantines_ =
      m.AddCounter("kvtier_store_spill_quarantines_total", "Damaged spill databases moved aside.");
  spill_online_g_ = m.AddGauge("kvtier_store_spill_online",
                               "1 while the spill tier is open; 0 while it is off or offline.");
  spill_disk_bytes_g_ =
      m.AddGauge("kvtier_store_spill_disk_bytes", "Bytes the spill database takes on disk.");

  free_slots_.reserve(options_.slot_count);
  for (int64_t s = static_cast<int64_t>(options_.slot_count) - 1; s >= 0; --s) {
    free_slots_.push_back(s);
  }
  absl::MutexLock lock(&mu_);
  retry_ = options_.spill_retry;
  UpdateGauges();
}

Store::~Store() { StopSpiller(); }

// ---------------------------------------------------------------------------------------------
// Index bookkeeping

uint32_t Store::InternNamespace(const NamespaceId& ns) {
  auto [it, inserted] = ns_ids_.try_emplace(ns, static_cast<uint32_t>(ns_by_id_.size()));
  if (inserted) ns_by_id_.push_back(ns);
  return it->second;
}

Store::Entry* Store::Find(const BlockKey& key) {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

namespace {

// Adds `e` to, or removes it from, an LRU set keyed by its tick; `member` tracks which.
template <typename Set, typename E>
void SetMembership(Set& set, bool& member, bool want, E* e) {
  if (want == member) return;
  if (want) {
    set.insert({e->tick, e});
  } else {
    set.erase({e->tick, e});
  }
  member = want;
}

}  // namespace

void Store::Touch(Entry* e) {
  // Out of both sets under the old tick, back in under the new one.
  SetMembership(evictable_, e->in_evictable, false, e);
  SetMembership(spill_lru_, e->in_spill_lru, false, e);
  e->tick = ++tick_;
  UpdateEligibility(e);
}

void Store::UpdateEligibility(Entry* e) {
  const bool committed = e->state == State::kCommitted;
  const bool unpinned = committed && e->leases == 0 && !e->busy;
  SetMembership(evictable_, e->in_evictable,
                unpinned && e->tier == Tier::kMemory && e->mem_children == 0, e);
  SetMembership(spill_lru_, e->in_spill_lru,
                unpinned && e->tier == Tier::kSpilled && e->children == 0, e);
}

void Store::LinkParent(Entry* e) {
  if (!e->parent.has_value()) return;
  Entry* p = Find(*e->parent);
  if (p == nullptr || p == e || p->state != State::kCommitted) return;
  e->linked_parent_id = p->id;
  ++p->children;
  if (e->tier == Tier::kMemory) ++p->mem_children;
  UpdateEligibility(p);
}

Store::Entry* Store::LinkedParent(const Entry* e) {
  if (e->linked_parent_id == 0) return nullptr;
  Entry* p = Find(*e->parent);
  return p != nullptr && p->id == e->linked_parent_id ? p : nullptr;
}

void Store::UnlinkParent(Entry* e) {
  if (e->linked_parent_id == 0) return;
  Entry* p = Find(*e->parent);
  if (p != nullptr && p->id == e->linked_parent_id) {
    --p->children;
    if (e->tier == Tier::kMemory) --p->mem_children;
    UpdateEligibility(p);
  }
  e->linked_parent_id = 0;
}

void Store::AdjustParentMemChildren(Entry* e, int delta) {
  if (e->linked_parent_id == 0) return;
  Entry* p = Find(*e->parent);
  if (p == nullptr || p->id != e->linked_parent_id) return;
  p->mem_children += delta;
  UpdateEligibility(p);
}

void Store::FreeSlot(Entry* e) {
  if (e->slot < 0) return;
  free_slots_.push_back(e->slot);
  e->slot = -1;
}

void Store::RemoveEntry(Entry* e) {
  KVTIER_CHECK(!e->busy, "removing block {} while its I/O runs", KeyToHex(e->key));
  SetMembership(evictable_, e->in_evictable, false, e);
  SetMembership(spill_lru_, e->in_spill_lru, false, e);
  UnlinkParent(e);
  if (e->state == State::kCommitted) {
    if (e->tier == Tier::kMemory) {
      --blocks_in_memory_;
    } else {
      --blocks_spilled_;
    }
  }
  DropDiskCopy(e);
  FreeSlot(e);
  entries_.erase(e->key);
}

void Store::DropDiskCopy(Entry* e) {
  if (!e->on_disk) return;
  e->on_disk = false;
  spill_bytes_ -= e->size;
  if (db_ != nullptr) {
    pending_deletes_.push_back(e->key);
    spiller_wake_ = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Eviction, spill and promotion

int64_t Store::AllocateSlot() {
  while (free_slots_.empty()) {
    if (!EvictOne()) return -1;
  }
  int64_t s = free_slots_.back();
  free_slots_.pop_back();
  return s;
}

Store::Entry* Store::CleanVictim() const {
  if (db_ == nullptr) return nullptr;
  uint32_t seen = 0;
  for (auto it = evictable_.begin(); it != evictable_.end() && seen < options_.spill_queue_blocks;
       ++it, ++seen) {
    if (it->second->on_disk) return it->second;
  }
  return nullptr;
}

bool Store::VictimReady() const {
  if (!free_slots_.empty() || db_ == nullptr || CleanVictim() != nullptr) return true;
  // No candidate: only the spiller's blocks in flight can become ones.
  if (evictable_.empty()) return blocks_in_flight_ == 0;
  return !EarnedSpill(evictable_.begin()->second);
}

bool Store::EvictOne() {
  // Among the spill queue (the least recently used candidates), a block already on disk
  // leaves memory without I/O and without being lost. When none is, the spiller is behind:
  // with spill_wait, wait for it a little (without the lock) rather than lose the block. The
  // only candidates being written is no reason to answer NO_SPACE: that wait is bounded by
  // one write.
  Entry* e = CleanVictim();
  if (e == nullptr && !VictimReady()) {
    const absl::Duration wait = evictable_.empty() ? kInFlightWait : options_.spill_wait;
    if (wait > absl::ZeroDuration()) {
      spiller_wake_ = true;
      mu_.AwaitWithTimeout(absl::Condition(this, &Store::VictimReady), wait);
      if (!free_slots_.empty()) return true;
      e = CleanVictim();
    }
  }
  if (evictable_.empty()) return false;
  if (e == nullptr) e = evictable_.begin()->second;
  spiller_wake_ = true;
  if (!e->on_disk) {
    evictions_->Increment();
    RemoveEntry(e);
    return true;
  }
  spills_->Increment();
  FreeSlot(e);
  e->tier = Tier::kSpilled;
  --blocks_in_memory_;
  ++blocks_spilled_;
  AdjustParentMemChildren(e, -1);
  UpdateEligibility(e);
  return true;
}

void Store::EndIo(Entry* e, uint64_t epoch) {
  e->busy = false;
  if (epoch != tier_epoch_ && e->on_disk) {  // the tier failed meanwhile
    e->on_disk = false;
    spill_bytes_ -= e->size;
  }
}

bool Store::EarnedSpill(const Entry* e) const {
  // A block whose spilled descendants need it is spilled regardless of its hits.
  return e->hits >= options_.spill_min_hits || e->children > e->mem_children;
}

bool Store::MakeDiskRoom(uint64_t bytes) {
  while (spill_bytes_ + bytes > spill_payload_bytes_) {
    if (spill_lru_.empty()) return false;
    spill_drops_->Increment();
    RemoveEntry(spill_lru_.begin()->second);
  }
  return true;
}

uint64_t Store::WriteBlocks(const std::vector<Entry*>& batch) {
  struct Job {
    Entry* e;
    SpillMeta meta;
    const uint8_t* data;
  };
  std::vector<Job> jobs;
  for (Entry* e : batch) {
    e->busy = true;
    UpdateEligibility(e);
    SpillMeta meta;
    meta.ns = ns_by_id_[e->ns_id];
    meta.has_parent = e->parent.has_value();
    if (meta.has_parent) meta.parent = *e->parent;
    meta.size = e->size;
    meta.checksum = e->checksum;
    jobs.push_back({e, meta, SlotPtr(e->slot)});
  }
  // Deletes first: a key deleted and written again is written after its deletion.
  std::vector<BlockKey> deletes = std::move(pending_deletes_);
  pending_deletes_.clear();
  std::shared_ptr<SpillStore> db = db_;
  const uint64_t epoch = tier_epoch_;
  blocks_in_flight_ += jobs.size();
  mu_.Unlock();
  absl::Status s;
  const char* op = "delete";
  size_t deleted = 0;
  for (; deleted < deletes.size(); ++deleted) {
    s = db->Delete(deletes[deleted]);
    if (!s.ok()) break;
  }
  size_t written = 0;
  if (s.ok()) {
    op = "write";
    for (; written < jobs.size(); ++written) {
      const Job& j = jobs[written];
      s = db->Put(j.e->key, j.meta, j.data, j.meta.size);
      if (!s.ok()) break;
    }
  }
  const uint64_t disk_bytes = db->DiskBytes();
  mu_.Lock();
  blocks_in_flight_ -= jobs.size();
  disk_bytes_ = disk_bytes;
  spill_disk_bytes_g_->Set(static_cast<double>(disk_bytes));
  const bool current = epoch == tier_epoch_;
  for (size_t i = 0; i < jobs.size(); ++i) {
    Entry* e = jobs[i].e;
    e->busy = false;
    if (i < written && current) {
      e->on_disk = true;
      spill_bytes_ += e->size;
      spill_writes_->Increment();
    }
    UpdateEligibility(e);
  }
  // A write stall is no failure, unless it lasts: what is left is tried again later.
  if (absl::IsAborted(s) && absl::Now() - stalled_since_ < kStallLimit) {
    if (stalled_since_ == absl::InfiniteFuture()) stalled_since_ = absl::Now();
    if (current) {
      pending_deletes_.insert(pending_deletes_.begin(), deletes.begin() + deleted, deletes.end());
    }
    stalled_ = true;
  } else if (!s.ok()) {
    TierFailed(db.get(), s, op);
  }
  if (s.ok()) stalled_since_ = absl::InfiniteFuture();
  CloseIfLast(std::move(db));
  return current ? written : 0;
}

std::vector<absl::Status> Store::ReadBlocks(const std::vector<Entry*>& batch) {
  std::vector<absl::Status> out;
  std::shared_ptr<SpillStore> db = db_;
  mu_.Unlock();
  absl::Status failed;  // a failure of the database, not of one block
  for (Entry* e : batch) {
    if (!failed.ok()) {
      out.push_back(failed);
      continue;
    }
    // key, size and checksum of a committed block do not change; the slot is the lookup's.
    absl::Status s = db->Read(e->key, SlotPtr(e->slot), e->size, e->checksum);
    if (!s.ok() && !absl::IsDataLoss(s) && !absl::IsNotFound(s)) failed = s;
    out.push_back(std::move(s));
  }
  mu_.Lock();
  if (!failed.ok()) TierFailed(db.get(), failed, "read");
  CloseIfLast(std::move(db));
  return out;
}

void Store::CloseIfLast(std::shared_ptr<SpillStore> db) {
  if (db.use_count() > 1) return;
  mu_.Unlock();  // closing waits for RocksDB's background work
  db.reset();
  mu_.Lock();
}

void Store::TierFailed(const SpillStore* db, const absl::Status& s, const char* op) {
  if (db_ == nullptr || db_.get() != db) return;  // already offline, or a newer database
  spill_errors_->Increment();
  // Corruption: the database is moved aside for inspection. Anything else (a full disk, EIO,
  // lost permissions): the index forgets the spilled blocks now, so the files are wiped.
  reopen_ = absl::IsDataLoss(s) ? Reopen::kQuarantine : Reopen::kWipe;
  ++tier_epoch_;
  db_.reset();  // closes once the last reader lets go; never written again
  pending_deletes_.clear();
  std::vector<Entry*> gone;
  for (auto& [key, e] : entries_) {
    if (e.busy) continue;  // its I/O finishes, sees the new epoch and drops the disk copy
    if (e.tier == Tier::kSpilled) {
      gone.push_back(&e);
    } else if (e.on_disk) {
      e.on_disk = false;
      spill_bytes_ -= e.size;
    }
  }
  for (Entry* e : gone) RemoveEntry(e);
  retry_ = options_.spill_retry;
  next_open_ = absl::Now() + retry_;
  UpdateGauges();
  spdlog::error(
      "spill tier offline: {} failed: {}; {} spilled blocks dropped, serving from memory, "
      "reopening in {}",
      op, std::string(s.message()), gone.size(), absl::FormatDuration(retry_));
}

absl::Status Store::OpenTier() {
  const std::string& dir = options_.spill_dir;
  Reopen mode;
  {
    absl::MutexLock lock(&mu_);
    mode = reopen_;
  }
  auto quarantine = [&]() -> absl::Status {
    KVTIER_RETURN_IF_ERROR(SpillStore::Quarantine(dir, options_.spill_quarantine_max));
    spill_quarantines_->Increment();
    return absl::OkStatus();
  };
  if (mode == Reopen::kQuarantine) KVTIER_RETURN_IF_ERROR(quarantine());
  if (mode == Reopen::kWipe) KVTIER_RETURN_IF_ERROR(SpillStore::Destroy(dir));
  {
    absl::MutexLock lock(&mu_);
    reopen_ = Reopen::kAsIs;
  }
  absl::StatusOr<std::unique_ptr<SpillStore>> opened =
      SpillStore::Open(dir, options_.spill_capacity_bytes);
  if (absl::IsDataLoss(opened.status())) {
    spdlog::error("spill tier: {}; moving the database aside and starting a new one",
                  std::string(opened.status().message()));
    KVTIER_RETURN_IF_ERROR(quarantine());
    opened = SpillStore::Open(dir, options_.spill_capacity_bytes);
  }
  if (!opened.ok()) return opened.status();
  std::shared_ptr<SpillStore> db = std::move(*opened);
  std::vector<std::pair<BlockKey, SpillMeta>> metas;
  absl::Status scanned = db->ForEachMeta(
      [&](const BlockKey& key, const SpillMeta& meta) { metas.emplace_back(key, meta); });
  if (!scanned.ok()) {
    absl::MutexLock lock(&mu_);
    if (absl::IsDataLoss(scanned)) reopen_ = Reopen::kQuarantine;
    return scanned;
  }
  const uint64_t disk_bytes = db->DiskBytes();

  absl::MutexLock lock(&mu_);
  std::vector<Entry*> loaded;
  for (const auto& [key, meta] : metas) {
    // Everything read back is checked before the index trusts it: a size beyond this store's
    // slots would overflow a slot when promoted (another slot size, or a damaged record).
    const bool valid = meta.size > 0 && meta.size <= options_.slot_bytes &&
                       !(meta.has_parent && meta.parent == key) && !entries_.contains(key);
    if (!valid) {
      block_failures_.Log(spdlog::level::warn,
                          "spill tier: deleting recovered block {} (size {}, slot size {}{})",
                          KeyToHex(key), meta.size, options_.slot_bytes,
                          entries_.contains(key) ? ", already in memory" : "");
      pending_deletes_.push_back(key);
      continue;
    }
    Entry& e = entries_[key];
    e.key = key;
    e.id = next_id_++;
    e.ns_id = InternNamespace(meta.ns);
    e.state = State::kCommitted;
    e.tier = Tier::kSpilled;
    e.on_disk = true;
    e.size = meta.size;
    e.checksum = meta.checksum;
    if (meta.has_parent) e.parent = meta.parent;
    ++blocks_spilled_;
    spill_bytes_ += meta.size;
    loaded.push_back(&e);
  }
  spill_payload_bytes_ = db->payload_bytes();
  db_ = std::move(db);
  for (Entry* e : loaded) LinkParent(e);
  for (Entry* e : loaded) Touch(e);
  MakeDiskRoom(0);
  disk_bytes_ = disk_bytes;
  spill_disk_bytes_g_->Set(static_cast<double>(disk_bytes));
  retry_ = options_.spill_retry;
  spiller_wake_ = true;
  UpdateGauges();
  spdlog::info("spill tier online in '{}': {} blocks ({} bytes) recovered, {} namespaces", dir,
               loaded.size(), spill_bytes_, ns_ids_.size());
  return absl::OkStatus();
}

void Store::SpillerLoop() {
  // Disk work yields the CPU to the control calls (docs/store-protocol.md, "Spill tier").
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), kSpillerNice);
  absl::MutexLock lock(&mu_);
  while (!spiller_stop_) {
    if (db_ == nullptr) {
      spiller_idle_ = true;
      spiller_wake_ = false;
      if (absl::Now() < next_open_) {
        mu_.AwaitWithDeadline(absl::Condition(&spiller_stop_), next_open_);
        continue;
      }
      spiller_idle_ = false;
      mu_.Unlock();
      absl::Status s = OpenTier();
      mu_.Lock();
      if (!s.ok()) {
        spill_errors_->Increment();
        next_open_ = absl::Now() + retry_;
        spdlog::warn("spill tier still offline: {}; next try in {}", std::string(s.message()),
                     absl::FormatDuration(retry_));
        retry_ = std::min(retry_ * 2, options_.spill_retry * 64);
      }
      continue;
    }
    // The spill queue: the least recently used evictable blocks, written ahead of eviction.
    std::vector<Entry*> batch;
    uint64_t batch_bytes = 0;
    const uint64_t capacity = db_->capacity_bytes();
    if (disk_bytes_ <= capacity) {
      uint32_t seen = 0;
      for (auto it = evictable_.begin();
           it != evictable_.end() && seen < options_.spill_queue_blocks &&
           batch.size() < kSpillBatchBlocks;
           ++it, ++seen) {
        Entry* e = it->second;
        if (e->on_disk || !EarnedSpill(e)) continue;
        // Its ancestors not yet on disk go first, roots first: a parent becomes evictable
        // right after its last child left memory, and a chain on disk is useful only whole.
        std::vector<Entry*> path = {e};
        for (Entry* p = LinkedParent(e); p != nullptr && path.size() < kSpillAncestors &&
                                         p->tier == Tier::kMemory && !p->on_disk && !p->busy;
             p = LinkedParent(p)) {
          path.push_back(p);
        }
        for (auto r = path.rbegin(); r != path.rend() && batch.size() < kSpillBatchBlocks; ++r) {
          if (std::find(batch.begin(), batch.end(), *r) == batch.end()) batch.push_back(*r);
        }
      }
      // Room on disk; dropping spilled leaves never touches these in-memory blocks.
      size_t fit = 0;
      for (; fit < batch.size() && MakeDiskRoom(batch_bytes + batch[fit]->size); ++fit) {
        batch_bytes += batch[fit]->size;
      }
      batch.resize(fit);
      // Room on the file system, which others may be filling too.
      const uint64_t free_bytes = batch.empty() ? 0 : db_->FreeBytes();
      if (!batch.empty() && free_bytes < batch_bytes + db_->HeadroomBytes()) {
        block_failures_.Log(spdlog::level::warn,
                            "spill tier: {} bytes free on the disk, {} needed; spilling paused",
                            free_bytes, batch_bytes + db_->HeadroomBytes());
        batch.clear();
      }
    } else {
      block_failures_.Log(spdlog::level::warn,
                          "spill tier: the directory takes {} bytes, over its capacity of {}; "
                          "spilling paused until RocksDB reclaims space",
                          disk_bytes_, capacity);
    }
    if (batch.empty() && pending_deletes_.empty()) {
      spiller_idle_ = true;
      spiller_wake_ = false;
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](Store* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
                                 return s->spiller_wake_ || s->spiller_stop_;
                               },
                               this),
                           kSpillerPoll);
      spiller_idle_ = false;
      continue;
    }
    WriteBlocks(batch);
    UpdateGauges();
    if (stalled_) {  // RocksDB is busy flushing: give it a moment
      stalled_ = false;
      mu_.AwaitWithTimeout(absl::Condition(&spiller_stop_), kStallPause);
    }
  }
  spiller_idle_ = true;
}

void Store::StopSpiller() {
  {
    absl::MutexLock lock(&mu_);
    spiller_stop_ = true;
  }
  if (spiller_.joinable()) spiller_.join();
}

void Store::WaitForSpiller() {
  absl::MutexLock lock(&mu_);
  if (!spiller_.joinable()) return;
  spiller_wake_ = true;
  mu_.Await(absl::Condition(
      +[](Store* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
        return s->spiller_stop_ || (s->spiller_idle_ && !s->spiller_wake_);
      },
      this));
}

// ---------------------------------------------------------------------------------------------
// Protocol

absl::Status Store::Recover() {
  if (options_.spill_dir.empty()) return absl::OkStatus();
  absl::Status s = OpenTier();
  if (!s.ok()) {
    spill_errors_->Increment();
    if (options_.spill_required) {
      return absl::Status(s.code(), absl::StrCat("the spill tier is required (spill_required) "
                                                 "and cannot be opened: ",
                                                 s.message()));
    }
    absl::MutexLock lock(&mu_);
    next_open_ = absl::Now() + retry_;
    spdlog::error(
        "spill tier unavailable: {}; STARTING WITHOUT SPILL (memory only), retrying in {} "
        "(set spill_required to refuse to start instead)",
        std::string(s.message()), absl::FormatDuration(retry_));
    UpdateGauges();
  }
  spiller_ = std::thread([this] { SpillerLoop(); });
  return absl::OkStatus();
}

absl::StatusOr<LookupResult> Store::Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                           bool lease) {
  if (keys.empty()) return absl::InvalidArgumentError("lookup names no keys");
  if (keys.size() > options_.max_batch_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat("lookup names ", keys.size(), " keys; at most ", options_.max_batch_keys));
  }
  absl::MutexLock lock(&mu_);
  lookups_->Increment();
  LookupResult result;
  auto ns_it = ns_ids_.find(ns);
  std::vector<Entry*> hits;     // pinned when leasing
  std::vector<Entry*> promote;  // spilled hits, each given a slot and marked busy
  const uint64_t epoch = tier_epoch_;
  if (ns_it != ns_ids_.end()) {
    const uint32_t ns_id = ns_it->second;  // AllocateSlot may release the lock
    for (const BlockKey& key : keys) {
      Entry* e = Find(key);
      if (e == nullptr || e->state != State::kCommitted || e->ns_id != ns_id) break;
      if (lease && e->tier == Tier::kSpilled) {
        // Being promoted by another lookup, or no slot: the prefix ends here.
        if (e->busy) break;
        // Pinned and busy first: AllocateSlot evicts (and may wait for the spiller), never
        // this block or its prefix, and a failing tier leaves it to this lookup.
        ++e->leases;
        e->busy = true;
        UpdateEligibility(e);
        const int64_t slot = AllocateSlot();
        if (slot < 0) {
          EndIo(e, epoch);
          --e->leases;
          if (!e->on_disk) {
            RemoveEntry(e);
          } else {
            UpdateEligibility(e);
          }
          break;
        }
        e->slot = slot;
        promote.push_back(e);
      } else if (lease) {
        ++e->leases;
        UpdateEligibility(e);
      }
      ++e->hits;
      Touch(e);
      hits.push_back(e);
    }
  }
  if (!promote.empty()) {
    // The reads run without the lock; every other call goes on meanwhile.
    const std::vector<absl::Status> read = ReadBlocks(promote);
    // promote is a subsequence of hits: where each one is.
    std::vector<size_t> at(promote.size());
    for (size_t i = 0, j = 0; i < hits.size() && j < promote.size(); ++i) {
      if (hits[i] == promote[j]) at[j++] = i;
    }
    std::vector<bool> failed(hits.size(), false);
    size_t cut = hits.size();
    for (size_t j = 0; j < promote.size(); ++j) {
      Entry* e = promote[j];
      EndIo(e, epoch);
      if (read[j].ok()) {
        e->tier = Tier::kMemory;
        --blocks_spilled_;
        ++blocks_in_memory_;
        promotions_->Increment();
        if (at[j] < cut) ++result.promoted;
        AdjustParentMemChildren(e, +1);
        UpdateEligibility(e);
        continue;
      }
      failed[at[j]] = true;
      cut = std::min(cut, at[j]);
      --e->leases;
      if (absl::IsDataLoss(read[j])) checksum_failures_->Increment();
      if (absl::IsDataLoss(read[j]) || absl::IsNotFound(read[j]) || !e->on_disk) {
        // The disk copy is bad, gone or forgotten: so is the block (a miss, never wrong bytes).
        block_failures_.Log(spdlog::level::warn, "promotion of {} failed: {}", KeyToHex(e->key),
                            read[j].ToString());
        RemoveEntry(e);
      } else {
        FreeSlot(e);
        UpdateEligibility(e);
      }
    }
    // The prefix ends at the first failed promotion: later hits are unpinned (the promoted
    // ones stay in memory).
    for (size_t i = cut; i < hits.size(); ++i) {
      if (failed[i]) continue;  // handled above, maybe removed
      --hits[i]->leases;
      UpdateEligibility(hits[i]);
    }
    hits.resize(cut);
  }
  if (lease) {
    for (Entry* e : hits) {
      result.blocks.push_back(
          {static_cast<uint64_t>(e->slot) * options_.slot_bytes, e->size, e->checksum});
      bytes_out_->Increment(static_cast<double>(e->size));
    }
  }
  result.hit_count = static_cast<uint32_t>(hits.size());
  hit_blocks_->Increment(result.hit_count);
  miss_blocks_->Increment(static_cast<double>(keys.size() - result.hit_count));
  if (lease && !hits.empty()) {
    result.lease_id = next_id_++;
    leases_[result.lease_id] = Lease{std::move(hits), clock_() + options_.lease_timeout};
  }
  UpdateGauges();
  return result;
}

absl::StatusOr<ReserveResult> Store::Reserve(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                             const std::optional<BlockKey>& parent,
                                             uint64_t block_bytes) {
  if (keys.empty()) return absl::InvalidArgumentError("reserve names no keys");
  if (keys.size() > options_.max_batch_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat("reserve names ", keys.size(), " keys; at most ", options_.max_batch_keys));
  }
  if (block_bytes == 0 || block_bytes > options_.slot_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("block_bytes ", block_bytes, " is outside 1..",
                                                   options_.slot_bytes,
                                                   " (the store's slot size)"));
  }
  // A block that is its own parent would count as its own child and never be evictable
  // (issue 10, defect 4). Longer cycles cannot form: a block links to its parent only when it
  // is committed and only to a parent committed before it (LinkParent), so every link points
  // from a newer block to an older one.
  if (parent.has_value() && *parent == keys[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat("reserve names block ", KeyToHex(keys[0]), " as its own parent"));
  }
  absl::MutexLock lock(&mu_);
  const uint32_t ns_id = InternNamespace(ns);
  ReserveResult result;
  result.outcomes.reserve(keys.size());
  result.offsets.reserve(keys.size());
  Reservation reservation;
  bool no_space = false;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (Entry* e = Find(keys[i]); e != nullptr) {
      if (e->state == State::kCommitted) Touch(e);
      result.outcomes.push_back(ReserveOutcome::kPresent);
      result.offsets.push_back(0);
      continue;
    }
    int64_t slot = no_space ? -1 : AllocateSlot();
    if (slot < 0) {
      no_space = true;
      result.outcomes.push_back(ReserveOutcome::kNoSpace);
      result.offsets.push_back(0);
      continue;
    }
    if (Find(keys[i]) != nullptr) {  // another writer took it while eviction waited
      free_slots_.push_back(slot);
      result.outcomes.push_back(ReserveOutcome::kPresent);
      result.offsets.push_back(0);
      continue;
    }
    Entry& e = entries_[keys[i]];
    e.key = keys[i];
    e.id = next_id_++;
    e.ns_id = ns_id;
    e.state = State::kReserved;
    e.tier = Tier::kMemory;
    e.slot = slot;
    e.size = block_bytes;
    e.parent = i == 0 ? parent : std::optional<BlockKey>(keys[i - 1]);
    reservation.entries.push_back(&e);
    result.outcomes.push_back(ReserveOutcome::kReserved);
    result.offsets.push_back(static_cast<uint64_t>(slot) * options_.slot_bytes);
  }
  if (!reservation.entries.empty()) {
    result.reservation_id = next_id_++;
    reservation.deadline = clock_() + options_.reservation_timeout;
    reservations_[result.reservation_id] = std::move(reservation);
  }
  UpdateGauges();
  return result;
}

absl::StatusOr<CommitResult> Store::Commit(uint64_t reservation_id,
                                           absl::Span<const uint64_t> checksums) {
  std::vector<std::pair<const uint8_t*, uint64_t>> slots;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(reservation_id);
    if (it == reservations_.end()) {
      return absl::NotFoundError(
          absl::StrCat("reservation ", reservation_id, " is unknown, expired or aborted"));
    }
    Reservation& r = it->second;
    if (r.committing) {
      return absl::FailedPreconditionError(
          absl::StrCat("reservation ", reservation_id, " is already being committed"));
    }
    if (checksums.size() != r.entries.size()) {
      return absl::InvalidArgumentError(absl::StrCat("reservation ", reservation_id, " has ",
                                                     r.entries.size(), " blocks, commit gives ",
                                                     checksums.size(), " checksums"));
    }
    r.committing = true;  // the reaper and Abort leave it alone from here
    for (Entry* e : r.entries) slots.emplace_back(SlotPtr(e->slot), e->size);
  }
  // Reading the slots needs no lock: they belong to this reservation until it is finished.
  // A large batch is hashed by several threads: the writer waits on this call.
  std::vector<char> ok(slots.size());
  uint64_t batch_bytes = 0;
  for (const auto& slot : slots) batch_bytes += slot.second;
  const int threads =
      static_cast<int>(std::min<uint64_t>(verify_threads_, 1 + batch_bytes / kParallelVerifyBytes));
  ParallelFor(slots.size(), threads, [&](size_t i) {
    ok[i] = BlockChecksum(slots[i].first, slots[i].second) == checksums[i];
  });
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(reservation_id);
  KVTIER_CHECK(it != reservations_.end(), "reservation {} vanished while committing",
               reservation_id);
  CommitResult result;
  std::vector<Entry*> entries = std::move(it->second.entries);
  reservations_.erase(it);
  for (size_t i = 0; i < entries.size(); ++i) {
    Entry* e = entries[i];
    if (!ok[i]) {
      checksum_failures_->Increment();
      result.rejected.push_back(e->key);
      RemoveEntry(e);
      continue;
    }
    e->state = State::kCommitted;
    e->checksum = checksums[i];
    ++blocks_in_memory_;
    bytes_in_->Increment(static_cast<double>(e->size));
    LinkParent(e);
    Touch(e);
    ++result.committed;
  }
  spiller_wake_ = true;
  UpdateGauges();
  return result;
}

void Store::AbortReservation(Reservation& r) {
  for (Entry* e : r.entries) RemoveEntry(e);
  r.entries.clear();
}

absl::Status Store::Abort(uint64_t reservation_id) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(reservation_id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(
        absl::StrCat("reservation ", reservation_id, " is unknown, expired or committed"));
  }
  if (it->second.committing) {
    return absl::FailedPreconditionError(
        absl::StrCat("reservation ", reservation_id, " is being committed"));
  }
  AbortReservation(it->second);
  reservations_.erase(it);
  UpdateGauges();
  return absl::OkStatus();
}

void Store::ReleaseLease(Lease& lease) {
  for (Entry* e : lease.entries) {
    --e->leases;
    UpdateEligibility(e);
  }
  spiller_wake_ = true;
  lease.entries.clear();
}

absl::Status Store::Release(uint64_t lease_id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("lease ", lease_id, " is unknown or expired"));
  }
  ReleaseLease(it->second);
  leases_.erase(it);
  UpdateGauges();
  return absl::OkStatus();
}

void Store::ReapExpired() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_();
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    auto cur = it++;
    if (cur->second.committing || cur->second.deadline > now) continue;
    expired_reservations_->Increment();
    AbortReservation(cur->second);
    reservations_.erase(cur);
  }
  for (auto it = leases_.begin(); it != leases_.end();) {
    auto cur = it++;
    if (cur->second.deadline > now) continue;
    expired_leases_->Increment();
    ReleaseLease(cur->second);
    leases_.erase(cur);
  }
  UpdateGauges();
}

DropResult Store::DropNamespace(const NamespaceId& ns) {
  absl::MutexLock lock(&mu_);
  DropResult result;
  auto ns_it = ns_ids_.find(ns);
  if (ns_it == ns_ids_.end()) return result;
  std::vector<Entry*> victims;
  for (auto& [key, e] : entries_) {
    if (e.ns_id != ns_it->second) continue;
    if (e.state != State::kCommitted || e.leases > 0 || e.busy) {
      ++result.pinned_kept;
    } else {
      victims.push_back(&e);
    }
  }
  for (Entry* e : victims) RemoveEntry(e);
  result.dropped = victims.size();
  UpdateGauges();
  return result;
}

uint64_t Store::SpillAll() {
  StopSpiller();
  absl::MutexLock lock(&mu_);
  if (db_ == nullptr) return 0;
  // Depth of each block in its chain (0: no parent in the index), memoized along the way.
  absl::flat_hash_map<const Entry*, uint32_t> depth;
  auto depth_of = [&](Entry* e) {
    std::vector<Entry*> path;  // e and its ancestors not yet measured
    Entry* c = e;
    for (; c != nullptr && !depth.contains(c); c = LinkedParent(c)) {
      path.push_back(c);
      depth[c] = 0;  // provisional: a cycle of parents ends the walk
    }
    uint32_t d = c == nullptr ? 0 : depth[c] + 1;
    for (auto it = path.rbegin(); it != path.rend(); ++it) depth[*it] = d++;
    return depth[e];
  };
  std::vector<std::pair<uint32_t, Entry*>> order;
  for (auto& [key, e] : entries_) {
    if (e.state == State::kCommitted && e.tier == Tier::kMemory && !e.on_disk && !e.busy) {
      order.emplace_back(depth_of(&e), &e);
    }
  }
  // Roots first, then each depth; hottest first within a depth.
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second->tick > b.second->tick;
  });
  for (const auto& [d, e] : order) {
    if (db_ == nullptr) break;
    const Entry* p = LinkedParent(e);
    if (p != nullptr && !p->on_disk) continue;  // its prefix is not on disk: useless there
    if (spill_bytes_ + e->size > spill_payload_bytes_) continue;
    WriteBlocks({e});
  }
  if (db_ != nullptr && !pending_deletes_.empty()) WriteBlocks({});
  UpdateGauges();
  uint64_t on_disk = 0;
  for (const auto& [key, e] : entries_) on_disk += e.tier == Tier::kMemory && e.on_disk;
  return on_disk;
}

void Store::UpdateGauges() {
  const uint64_t used = options_.slot_count - free_slots_.size();
  slots_total_g_->Set(static_cast<double>(options_.slot_count));
  slots_used_g_->Set(static_cast<double>(used));
  pool_bytes_used_g_->Set(static_cast<double>(used * options_.slot_bytes));
  spill_bytes_g_->Set(static_cast<double>(spill_bytes_));
  spill_capacity_g_->Set(
      static_cast<double>(options_.spill_dir.empty() ? 0 : options_.spill_capacity_bytes));
  spill_online_g_->Set(db_ != nullptr ? 1 : 0);
  blocks_memory_g_->Set(static_cast<double>(blocks_in_memory_));
  blocks_spill_g_->Set(static_cast<double>(blocks_spilled_));
  leases_g_->Set(static_cast<double>(leases_.size()));
  reservations_g_->Set(static_cast<double>(reservations_.size()));
}

StoreStats Store::Stats() const {
  absl::MutexLock lock(&mu_);
  StoreStats s;
  s.blocks_in_memory = blocks_in_memory_;
  s.blocks_spilled = blocks_spilled_;
  s.slots_total = options_.slot_count;
  s.slots_used = options_.slot_count - free_slots_.size();
  s.spill_bytes = spill_bytes_;
  s.spill_capacity_bytes = options_.spill_dir.empty() ? 0 : options_.spill_capacity_bytes;
  s.spill_online = db_ != nullptr;
  s.spill_disk_bytes = disk_bytes_;
  auto v = [](const Counter* c) { return static_cast<uint64_t>(c->Value()); };
  s.lookups = v(lookups_);
  s.hit_blocks = v(hit_blocks_);
  s.miss_blocks = v(miss_blocks_);
  s.bytes_in = v(bytes_in_);
  s.bytes_out = v(bytes_out_);
  s.evictions = v(evictions_);
  s.spills = v(spills_);
  s.promotions = v(promotions_);
  s.spill_drops = v(spill_drops_);
  s.checksum_failures = v(checksum_failures_);
  s.expired_reservations = v(expired_reservations_);
  s.expired_leases = v(expired_leases_);
  s.spill_writes = v(spill_writes_);
  s.spill_errors = v(spill_errors_);
  s.spill_quarantines = v(spill_quarantines_);
  s.active_leases = leases_.size();
  s.active_reservations = reservations_.size();
  s.namespaces = ns_ids_.size();
  return s;
}

}  // namespace kvtier::cachestore
