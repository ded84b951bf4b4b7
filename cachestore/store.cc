#include "cachestore/store.h"

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
// The default grace period of a freed slot, at least: a client's default transfer_timeout
// (10 s) plus 2 s for its endpoint's close (docs/store-protocol.md, "Late writes").
constexpr absl::Duration kDefaultQuarantine = absl::Seconds(12);
// Progress passes that must end after a slot is freed before it is reused: the first may have
// begun before the free, the second began after it.
constexpr uint64_t kQuarantinePasses = 2;
// Longest an eviction waits for the spiller's writes when they hold every candidate.
constexpr absl::Duration kInFlightWait = absl::Seconds(1);

absl::Status ClientLimitError(absl::string_view client, uint32_t max) {
  return absl::ResourceExhaustedError(
      absl::StrCat("client ", client.empty() ? "(unnamed)" : client, " holds ", max,
                   " leases and reservations open, the most one client may "
                   "(max_open_per_client): release or commit some first"));
}

absl::Duration ResolveQuarantine(const StoreOptions& o) {
  return std::max(o.reservation_timeout, o.slot_quarantine > absl::ZeroDuration()
                                             ? o.slot_quarantine
                                             : kDefaultQuarantine);
}

}  // namespace

Store::Store(const StoreOptions& options, uint8_t* pool, MetricsRegistry* metrics, Clock clock,
             ProgressCount data_plane_progress)
    : options_(options),
      verify_threads_(
          options.verify_threads > 0
              ? options.verify_threads
              : static_cast<int>(std::clamp(std::thread::hardware_concurrency() / 2, 2u, 8u))),
      pool_(pool),
      clock_(std::move(clock)),
      data_plane_progress_(std::move(data_plane_progress)),
      quarantine_time_(ResolveQuarantine(options)) {
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
  pool_bytes_g_ = m.AddGauge("kvtier_store_pool_bytes", "Bytes of the host pool (all slots).");
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
  slots_quarantined_g_ = m.AddGauge(
      "kvtier_store_pool_slots_quarantined",
      "Slots freed by an abort or an expired reservation, not reused until late writes are over.");
  namespaces_g_ =
      m.AddGauge("kvtier_store_namespaces", "Namespaces with blocks, reservations or leases.");
  spiller_ = std::make_unique<Spiller>(options_, &mu_, static_cast<Spiller::Index*>(this), metrics);

  free_slots_.reserve(options_.slot_count);
  for (int64_t s = static_cast<int64_t>(options_.slot_count) - 1; s >= 0; --s) {
    free_slots_.push_back(s);
  }
  absl::MutexLock lock(&mu_);
  UpdateGauges();
}

Store::~Store() { spiller_->Stop(); }

// ---------------------------------------------------------------------------------------------
// Index bookkeeping

uint32_t Store::RefNamespace(const NamespaceId& ns) {
  auto [it, inserted] = ns_ids_.try_emplace(ns, 0);
  if (inserted) {
    if (free_ns_ids_.empty()) {
      it->second = static_cast<uint32_t>(ns_by_id_.size());
      ns_by_id_.emplace_back();
    } else {
      it->second = free_ns_ids_.back();
      free_ns_ids_.pop_back();
    }
    ns_by_id_[it->second] = NamespaceSlot{ns, 0};
  }
  ++ns_by_id_[it->second].refs;
  return it->second;
}

void Store::UnrefNamespace(uint32_t id) {
  NamespaceSlot& n = ns_by_id_[id];
  KVTIER_CHECK(n.refs > 0, "namespace id {} unreferenced twice", id);
  if (--n.refs > 0) return;
  ns_ids_.erase(n.ns);
  free_ns_ids_.push_back(id);
}

bool Store::TakeClientHandle(absl::string_view client) {
  uint32_t& open = open_by_client_[client];
  if (open >= options_.max_open_per_client) {
    if (open == 0) open_by_client_.erase(client);
    return false;
  }
  ++open;
  return true;
}

void Store::ReturnClientHandle(absl::string_view client) {
  auto it = open_by_client_.find(client);
  KVTIER_CHECK(it != open_by_client_.end() && it->second > 0, "client handle returned twice");
  if (--it->second == 0) open_by_client_.erase(it);
}

void Store::QuarantineSlot(Entry* e) {
  if (e->slot < 0) return;
  quarantine_.push_back(
      {e->slot, clock_() + quarantine_time_, data_plane_progress_ ? data_plane_progress_() : 0});
  e->slot = -1;
}

void Store::ReleaseQuarantine() {
  if (quarantine_.empty()) return;
  // Oldest first: both the deadline and the progress count grow along the queue.
  const absl::Time now = clock_();
  const uint64_t progress = data_plane_progress_ ? data_plane_progress_() : kQuarantinePasses;
  while (!quarantine_.empty() && quarantine_.front().until <= now &&
         progress >= quarantine_.front().progress + kQuarantinePasses) {
    free_slots_.push_back(quarantine_.front().slot);
    quarantine_.pop_front();
  }
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
  const uint32_t ns_id = e->ns_id;
  entries_.erase(e->key);
  UnrefNamespace(ns_id);
}

void Store::DropDiskCopy(Entry* e) {
  if (!e->on_disk) return;
  e->on_disk = false;
  spill_bytes_ -= e->size;
  spiller_->QueueDelete(e->key);
}

// ---------------------------------------------------------------------------------------------
// Eviction, spill and promotion

int64_t Store::AllocateSlot() {
  ReleaseQuarantine();
  while (free_slots_.empty()) {
    if (!EvictOne()) return -1;
  }
  int64_t s = free_slots_.back();
  free_slots_.pop_back();
  return s;
}

Store::Entry* Store::CleanVictim() const {
  if (!spiller_->online()) return nullptr;
  uint32_t seen = 0;
  for (auto it = evictable_.begin(); it != evictable_.end() && seen < options_.spill_queue_blocks;
       ++it, ++seen) {
    if (it->second->on_disk) return it->second;
  }
  return nullptr;
}

bool Store::VictimReady() const {
  if (!free_slots_.empty() || !spiller_->online() || CleanVictim() != nullptr) return true;
  // No candidate: only the spiller's blocks in flight can become ones.
  if (evictable_.empty()) return spiller_->blocks_in_flight() == 0;
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
      spiller_->Wake();
      mu_.AwaitWithTimeout(absl::Condition(this, &Store::VictimReady), wait);
      if (!free_slots_.empty()) return true;
      e = CleanVictim();
    }
  }
  if (evictable_.empty()) return false;
  if (e == nullptr) e = evictable_.begin()->second;
  spiller_->Wake();
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
  if (epoch != spiller_->epoch() && e->on_disk) {  // the tier failed meanwhile
    e->on_disk = false;
    spill_bytes_ -= e->size;
  }
}

bool Store::EarnedSpill(const Entry* e) const {
  // A block whose spilled descendants need it is spilled regardless of its hits.
  return e->hits >= options_.spill_min_hits || e->children > e->mem_children;
}

bool Store::MakeDiskRoom(uint64_t bytes) {
  while (spill_bytes_ + bytes > spiller_->payload_bytes()) {
    if (spill_lru_.empty()) return false;
    spill_drops_->Increment();
    RemoveEntry(spill_lru_.begin()->second);
  }
  return true;
}

uint64_t Store::WriteBlocks(const std::vector<Entry*>& batch) {
  std::vector<Spiller::WriteJob> jobs;
  for (Entry* e : batch) {
    e->busy = true;
    UpdateEligibility(e);
    Spiller::WriteJob j;
    j.key = e->key;
    j.meta.ns = ns_by_id_[e->ns_id].ns;
    j.meta.has_parent = e->parent.has_value();
    if (j.meta.has_parent) j.meta.parent = *e->parent;
    j.meta.size = e->size;
    j.meta.checksum = e->checksum;
    j.data = SlotPtr(e->slot);
    jobs.push_back(j);
  }
  const size_t written = spiller_->Write(jobs);
  for (size_t i = 0; i < batch.size(); ++i) {
    Entry* e = batch[i];
    e->busy = false;
    if (i < written) {
      e->on_disk = true;
      spill_bytes_ += e->size;
    }
    UpdateEligibility(e);
  }
  return written;
}

std::vector<absl::Status> Store::ReadBlocks(const std::vector<Entry*>& batch) {
  // key, size and checksum of a committed block do not change; the slot is the lookup's.
  std::vector<Spiller::ReadJob> jobs;
  for (Entry* e : batch) jobs.push_back({e->key, SlotPtr(e->slot), e->size, e->checksum});
  return spiller_->Read(jobs);
}

uint64_t Store::ForgetSpilled() {
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
  UpdateGauges();
  return gone.size();
}

void Store::AddRecovered(const std::vector<std::pair<BlockKey, SpillMeta>>& metas) {
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
      spiller_->QueueDelete(key);
      continue;
    }
    Entry& e = entries_[key];
    e.key = key;
    e.id = next_id_++;
    e.ns_id = RefNamespace(meta.ns);
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
  for (Entry* e : loaded) LinkParent(e);
  for (Entry* e : loaded) Touch(e);
  MakeDiskRoom(0);
  UpdateGauges();
  spdlog::info("spill tier online in '{}': {} blocks ({} bytes) recovered, {} namespaces",
               options_.spill_dir, loaded.size(), spill_bytes_, ns_ids_.size());
}

bool Store::SpillRound(bool disk_has_room) {
  // The spill queue: the least recently used evictable blocks, written ahead of eviction.
  std::vector<Entry*> batch;
  uint64_t batch_bytes = 0;
  if (disk_has_room) {
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
    if (!batch.empty() && !spiller_->FileSystemHasRoom(batch_bytes)) batch.clear();
  }
  if (batch.empty() && !spiller_->has_pending_deletes()) return false;
  WriteBlocks(batch);
  UpdateGauges();
  return true;
}

void Store::WaitForSpiller() { spiller_->WaitIdle(); }

// ---------------------------------------------------------------------------------------------
// Protocol

absl::Status Store::Recover() { return spiller_->Start(); }

absl::StatusOr<LookupResult> Store::Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                           bool lease, absl::string_view client) {
  if (keys.empty()) return absl::InvalidArgumentError("lookup names no keys");
  if (keys.size() > options_.max_batch_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat("lookup names ", keys.size(), " keys; at most ", options_.max_batch_keys));
  }
  absl::MutexLock lock(&mu_);
  lookups_->Increment();
  LookupResult result;
  // An unknown namespace is a miss, without a lease.
  const bool known = ns_ids_.contains(ns);
  if (lease && known && !TakeClientHandle(client)) {
    return ClientLimitError(client, options_.max_open_per_client);
  }
  std::vector<Entry*> hits;     // pinned when leasing
  std::vector<Entry*> promote;  // spilled hits, each given a slot and marked busy
  const uint64_t epoch = spiller_->epoch();
  uint32_t ns_id = 0;
  if (known) {
    // AllocateSlot may release the lock: the reference keeps the id from being reused.
    ns_id = RefNamespace(ns);
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
    leases_[result.lease_id] =
        Lease{std::move(hits), clock_() + options_.lease_timeout, std::string(client)};
  } else if (lease && known) {
    ReturnClientHandle(client);
  }
  if (known) UnrefNamespace(ns_id);
  UpdateGauges();
  return result;
}

absl::StatusOr<ReserveResult> Store::Reserve(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                             const std::optional<BlockKey>& parent,
                                             uint64_t block_bytes, absl::string_view client) {
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
  if (!ns_ids_.contains(ns) && ns_ids_.size() >= options_.max_namespaces) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the store holds ", ns_ids_.size(),
                     " namespaces, the most it may (max_namespaces); namespace ", KeyToHex(ns),
                     " gets none until one is dropped or emptied"));
  }
  if (!TakeClientHandle(client)) return ClientLimitError(client, options_.max_open_per_client);
  // This call's reference keeps the id while AllocateSlot may release the lock.
  const uint32_t ns_id = RefNamespace(ns);
  ReserveResult result;
  result.outcomes.reserve(keys.size());
  result.offsets.reserve(keys.size());
  Reservation reservation;
  bool no_space = false;
  // A key committed is present; one reserved by another writer is in progress (that writer
  // may still fail: the caller must not count it as stored).
  auto existing = [&](Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    result.offsets.push_back(0);
    if (e->state != State::kCommitted) return ReserveOutcome::kInProgress;
    Touch(e);
    return ReserveOutcome::kPresent;
  };
  for (size_t i = 0; i < keys.size(); ++i) {
    if (Entry* e = Find(keys[i]); e != nullptr) {
      result.outcomes.push_back(existing(e));
      continue;
    }
    int64_t slot = no_space ? -1 : AllocateSlot();
    if (slot < 0) {
      no_space = true;
      result.outcomes.push_back(ReserveOutcome::kNoSpace);
      result.offsets.push_back(0);
      continue;
    }
    if (Entry* e = Find(keys[i]); e != nullptr) {  // another writer took it while eviction waited
      free_slots_.push_back(slot);                 // never handed out: no write can land in it
      result.outcomes.push_back(existing(e));
      continue;
    }
    Entry& e = entries_[keys[i]];
    e.key = keys[i];
    e.id = next_id_++;
    e.ns_id = ns_id;
    ++ns_by_id_[ns_id].refs;
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
    reservation.client = std::string(client);
    reservations_[result.reservation_id] = std::move(reservation);
  } else {
    ReturnClientHandle(client);
  }
  UnrefNamespace(ns_id);
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
  ReturnClientHandle(it->second.client);
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
  spiller_->Wake();
  UpdateGauges();
  return result;
}

void Store::AbortReservation(Reservation& r) {
  for (Entry* e : r.entries) {
    QuarantineSlot(e);  // a put of the writer may still land in it
    RemoveEntry(e);
  }
  r.entries.clear();
  ReturnClientHandle(r.client);
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
  spiller_->Wake();
  lease.entries.clear();
  ReturnClientHandle(lease.client);
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
  ReleaseQuarantine();
  UpdateGauges();
}

DropResult Store::DropNamespace(const NamespaceId& ns) {
  absl::MutexLock lock(&mu_);
  DropResult result;
  auto ns_it = ns_ids_.find(ns);
  if (ns_it == ns_ids_.end()) return result;
  const uint32_t ns_id = ns_it->second;  // freed with its last entry
  std::vector<Entry*> victims;
  for (auto& [key, e] : entries_) {
    if (e.ns_id != ns_id) continue;
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
  spiller_->Stop();
  absl::MutexLock lock(&mu_);
  if (!spiller_->online()) return 0;
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
    if (!spiller_->online()) break;
    const Entry* p = LinkedParent(e);
    if (p != nullptr && !p->on_disk) continue;  // its prefix is not on disk: useless there
    if (spill_bytes_ + e->size > spiller_->payload_bytes()) continue;
    WriteBlocks({e});
  }
  if (spiller_->online() && spiller_->has_pending_deletes()) WriteBlocks({});
  UpdateGauges();
  uint64_t on_disk = 0;
  for (const auto& [key, e] : entries_) on_disk += e.tier == Tier::kMemory && e.on_disk;
  return on_disk;
}

void Store::UpdateGauges() {
  const uint64_t used = options_.slot_count - free_slots_.size();
  slots_total_g_->Set(static_cast<double>(options_.slot_count));
  pool_bytes_g_->Set(static_cast<double>(options_.slot_count * options_.slot_bytes));
  slots_used_g_->Set(static_cast<double>(used));
  pool_bytes_used_g_->Set(static_cast<double>(used * options_.slot_bytes));
  spill_bytes_g_->Set(static_cast<double>(spill_bytes_));
  spill_capacity_g_->Set(
      static_cast<double>(options_.spill_dir.empty() ? 0 : options_.spill_capacity_bytes));
  blocks_memory_g_->Set(static_cast<double>(blocks_in_memory_));
  blocks_spill_g_->Set(static_cast<double>(blocks_spilled_));
  leases_g_->Set(static_cast<double>(leases_.size()));
  reservations_g_->Set(static_cast<double>(reservations_.size()));
  slots_quarantined_g_->Set(static_cast<double>(quarantine_.size()));
  namespaces_g_->Set(static_cast<double>(ns_ids_.size()));
}

StoreStats Store::Stats() const {
  absl::MutexLock lock(&mu_);
  StoreStats s;
  s.blocks_in_memory = blocks_in_memory_;
  s.blocks_spilled = blocks_spilled_;
  s.slots_total = options_.slot_count;
  s.slots_used = options_.slot_count - free_slots_.size();
  s.slots_quarantined = quarantine_.size();
  s.spill_bytes = spill_bytes_;
  s.spill_capacity_bytes = options_.spill_dir.empty() ? 0 : options_.spill_capacity_bytes;
  s.spill_online = spiller_->online();
  s.spill_disk_bytes = spiller_->disk_bytes();
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
  s.spill_writes = spiller_->writes();
  s.spill_errors = spiller_->errors();
  s.spill_quarantines = spiller_->quarantines();
  s.active_leases = leases_.size();
  s.active_reservations = reservations_.size();
  s.namespaces = ns_ids_.size();
  return s;
}

}  // namespace kvtier::cachestore
