#include "cachestore/store.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/logging.h"
#include "common/parallel.h"

namespace kvtier::cachestore {
namespace {

// A commit's checksums are verified by one thread per this many bytes, up to verify_threads_.
constexpr uint64_t kParallelVerifyBytes = 4ull << 20;

}  // namespace

Store::Store(const StoreOptions& options, uint8_t* pool, SpillStore* spill,
             MetricsRegistry* metrics, Clock clock)
    : options_(options),
      verify_threads_(
          options.verify_threads > 0
              ? options.verify_threads
              : static_cast<int>(std::clamp(std::thread::hardware_concurrency() / 2, 2u, 8u))),
      pool_(pool),
      spill_(spill),
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

  free_slots_.reserve(options_.slot_count);
  for (int64_t s = static_cast<int64_t>(options_.slot_count) - 1; s >= 0; --s) {
    free_slots_.push_back(s);
  }
  absl::MutexLock lock(&mu_);
  UpdateGauges();
}

Store::~Store() = default;

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
  SetMembership(evictable_, e->in_evictable,
                committed && e->tier == Tier::kMemory && e->leases == 0 && e->mem_children == 0, e);
  SetMembership(spill_lru_, e->in_spill_lru,
                committed && e->tier == Tier::kSpilled && e->leases == 0 && e->children == 0, e);
}

void Store::LinkParent(Entry* e) {
  if (!e->parent.has_value()) return;
  Entry* p = Find(*e->parent);
  if (p == nullptr || p->state != State::kCommitted) return;
  e->linked_parent_id = p->id;
  ++p->children;
  if (e->tier == Tier::kMemory) ++p->mem_children;
  UpdateEligibility(p);
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
  SetMembership(evictable_, e->in_evictable, false, e);
  SetMembership(spill_lru_, e->in_spill_lru, false, e);
  UnlinkParent(e);
  if (e->state == State::kCommitted) {
    if (e->tier == Tier::kMemory) {
      --blocks_in_memory_;
    } else {
      --blocks_spilled_;
      spill_bytes_ -= e->size;
      absl::Status s = spill_->Delete(e->key);
      if (!s.ok()) spdlog::warn("spill delete {}: {}", KeyToHex(e->key), s.ToString());
    }
  }
  FreeSlot(e);
  entries_.erase(e->key);
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

bool Store::EvictOne() {
  if (evictable_.empty()) return false;
  Entry* e = evictable_.begin()->second;
  // A block whose spilled descendants need it is spilled regardless of its hits.
  const bool earned = e->hits >= options_.spill_min_hits || e->children > e->mem_children;
  if (spill_ != nullptr && earned && SpillEntry(e, /*make_room=*/true)) return true;
  evictions_->Increment();
  RemoveEntry(e);
  return true;
}

bool Store::SpillEntry(Entry* e, bool make_room) {
  if (e->size > options_.spill_capacity_bytes) return false;
  while (spill_bytes_ + e->size > options_.spill_capacity_bytes) {
    if (!make_room || spill_lru_.empty()) return false;
    spill_drops_->Increment();
    RemoveEntry(spill_lru_.begin()->second);
  }
  SpillMeta meta;
  meta.ns = ns_by_id_[e->ns_id];
  meta.has_parent = e->parent.has_value();
  if (meta.has_parent) meta.parent = *e->parent;
  meta.size = e->size;
  meta.checksum = e->checksum;
  absl::Status s = spill_->Put(e->key, meta, SlotPtr(e->slot), e->size);
  if (!s.ok()) {
    spdlog::warn("spill of {} failed: {}", KeyToHex(e->key), s.ToString());
    return false;
  }
  spills_->Increment();
  FreeSlot(e);
  e->tier = Tier::kSpilled;
  --blocks_in_memory_;
  ++blocks_spilled_;
  spill_bytes_ += e->size;
  AdjustParentMemChildren(e, -1);
  UpdateEligibility(e);
  return true;
}

absl::Status Store::Promote(Entry* e) {
  int64_t slot = AllocateSlot();
  if (slot < 0) return absl::ResourceExhaustedError("no slot to promote into");
  absl::Status s = spill_->Read(e->key, SlotPtr(slot), e->size, e->checksum);
  if (!s.ok()) {
    free_slots_.push_back(slot);
    spdlog::warn("promotion of {} failed: {}", KeyToHex(e->key), s.ToString());
    if (absl::IsDataLoss(s)) checksum_failures_->Increment();
    return s;
  }
  // The block lives in memory again; its spilled copy goes (one tier per block).
  absl::Status d = spill_->Delete(e->key);
  if (!d.ok()) spdlog::warn("spill delete {}: {}", KeyToHex(e->key), d.ToString());
  e->slot = slot;
  e->tier = Tier::kMemory;
  --blocks_spilled_;
  ++blocks_in_memory_;
  spill_bytes_ -= e->size;
  promotions_->Increment();
  AdjustParentMemChildren(e, +1);
  UpdateEligibility(e);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Protocol

absl::Status Store::Recover() {
  if (spill_ == nullptr) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  std::vector<Entry*> loaded;
  absl::Status s = spill_->ForEachMeta([&](const BlockKey& key, const SpillMeta& meta) {
    auto [it, inserted] = entries_.try_emplace(key);
    if (!inserted) return;
    Entry& e = it->second;
    e.key = key;
    e.id = next_id_++;
    e.ns_id = InternNamespace(meta.ns);
    e.state = State::kCommitted;
    e.tier = Tier::kSpilled;
    e.size = meta.size;
    e.checksum = meta.checksum;
    if (meta.has_parent) e.parent = meta.parent;
    ++blocks_spilled_;
    spill_bytes_ += meta.size;
    loaded.push_back(&e);
  });
  if (!s.ok()) return s;
  for (Entry* e : loaded) LinkParent(e);
  for (Entry* e : loaded) Touch(e);
  while (spill_bytes_ > options_.spill_capacity_bytes && !spill_lru_.empty()) {
    spill_drops_->Increment();
    RemoveEntry(spill_lru_.begin()->second);
  }
  UpdateGauges();
  spdlog::info("recovered {} spilled blocks ({} bytes) in {} namespaces", blocks_spilled_,
               spill_bytes_, ns_ids_.size());
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
  std::vector<Entry*> pinned;
  if (ns_it != ns_ids_.end()) {
    for (const BlockKey& key : keys) {
      Entry* e = Find(key);
      if (e == nullptr || e->state != State::kCommitted || e->ns_id != ns_it->second) break;
      if (lease) {
        ++e->leases;  // pin first: promotion may evict, never this block or its prefix
        UpdateEligibility(e);
        if (e->tier == Tier::kSpilled) {
          absl::Status promoted = Promote(e);
          if (!promoted.ok()) {
            --e->leases;
            if (absl::IsDataLoss(promoted) || absl::IsNotFound(promoted)) {
              RemoveEntry(e);  // the spilled copy is bad or gone: forget the block
            } else {
              UpdateEligibility(e);
            }
            break;
          }
          ++result.promoted;
        }
        pinned.push_back(e);
        result.blocks.push_back(
            {static_cast<uint64_t>(e->slot) * options_.slot_bytes, e->size, e->checksum});
        bytes_out_->Increment(static_cast<double>(e->size));
      }
      ++e->hits;
      Touch(e);
      ++result.hit_count;
    }
  }
  hit_blocks_->Increment(result.hit_count);
  miss_blocks_->Increment(static_cast<double>(keys.size() - result.hit_count));
  if (!pinned.empty()) {
    result.lease_id = next_id_++;
    leases_[result.lease_id] = Lease{std::move(pinned), clock_() + options_.lease_timeout};
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
    if (e.state != State::kCommitted || e.leases > 0) {
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
  if (spill_ == nullptr) return 0;
  absl::MutexLock lock(&mu_);
  std::vector<Entry*> hot;
  for (auto& [key, e] : entries_) {
    if (e.state == State::kCommitted && e.tier == Tier::kMemory) hot.push_back(&e);
  }
  std::sort(hot.begin(), hot.end(), [](Entry* a, Entry* b) { return a->tick > b->tick; });
  uint64_t written = 0;
  for (Entry* e : hot) {
    if (spill_bytes_ + e->size > options_.spill_capacity_bytes) break;
    if (SpillEntry(e, /*make_room=*/false)) ++written;
  }
  UpdateGauges();
  return written;
}

void Store::UpdateGauges() {
  const uint64_t used = options_.slot_count - free_slots_.size();
  slots_total_g_->Set(static_cast<double>(options_.slot_count));
  slots_used_g_->Set(static_cast<double>(used));
  pool_bytes_used_g_->Set(static_cast<double>(used * options_.slot_bytes));
  spill_bytes_g_->Set(static_cast<double>(spill_bytes_));
  spill_capacity_g_->Set(
      static_cast<double>(spill_ == nullptr ? 0 : options_.spill_capacity_bytes));
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
  s.spill_capacity_bytes = spill_ == nullptr ? 0 : options_.spill_capacity_bytes;
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
  s.active_leases = leases_.size();
  s.active_reservations = reservations_.size();
  s.namespaces = ns_ids_.size();
  return s;
}

}  // namespace kvtier::cachestore
