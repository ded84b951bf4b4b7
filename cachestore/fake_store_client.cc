#include "cachestore/fake_store_client.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/status_macros.h"

namespace kvtier {

// A client of a FakeStore: every call goes to the store.
class FakeStore::Client final : public StoreClient {
 public:
  explicit Client(FakeStore* store) : store_(store) {}
  ~Client() override { store_->SetUnmapCallback(this, nullptr); }

  absl::StatusOr<size_t> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys) override {
    return store_->Lookup(ns, keys);
  }
  absl::StatusOr<PutResult> Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                absl::Span<const BlockKey> parents,
                                absl::Span<const void* const> blocks, size_t block_bytes) override {
    return store_->Put(ns, keys, parents, blocks, block_bytes);
  }
  absl::StatusOr<size_t> Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                             absl::Span<void* const> buffers, size_t block_bytes) override {
    return store_->Get(ns, keys, buffers, block_bytes);
  }
  std::vector<StoreNodeInfo> Nodes() override { return store_->Nodes(); }
  // The fake is one node: membership does not move it.
  void SetStores(std::vector<std::string>) override {}
  absl::StatusOr<MappedPrefix> MapPrefix(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                         size_t block_bytes) override {
    return store_->MapPrefix(ns, keys, block_bytes);
  }
  std::vector<MappedPool> MappedPools() override { return store_->MappedPools(); }
  void SetUnmapCallback(std::function<void(const MappedPool&)> callback) override {
    store_->SetUnmapCallback(this, std::move(callback));
  }
  bool AnyNodeConnected() const override { return store_->Connected(); }
  // The store's count: the tests use one client per role.
  uint64_t ChecksumFailures() const override { return store_->checksum_failures(); }

 private:
  FakeStore* const store_;
};

FakeStore::FakeStore(FakeStoreOptions options)
    : options_(options), pool_(options.slot_bytes * options.slot_count) {
  absl::MutexLock lock(&mu_);
  for (size_t s = options_.slot_count; s > 0; --s) free_slots_.push_back(s - 1);
}

FakeStore::~FakeStore() = default;

std::unique_ptr<StoreClient> FakeStore::NewClient() { return std::make_unique<Client>(this); }

void FakeStore::SetDown(bool down) {
  absl::MutexLock lock(&mu_);
  down_ = down;
}

void FakeStore::FailMidBatch(size_t blocks) {
  absl::MutexLock lock(&mu_);
  fail_after_ = blocks;
}

void FakeStore::ExpireNextLease() {
  absl::MutexLock lock(&mu_);
  expire_next_lease_ = true;
}

bool FakeStore::Corrupt(const NamespaceId& ns, const BlockKey& key) {
  absl::MutexLock lock(&mu_);
  auto it = blocks_.find({ns, key});
  if (it == blocks_.end()) return false;
  SlotData(it->second.slot)[it->second.size / 2] ^= 0x5a;
  return true;
}

void FakeStore::HoldWrites(bool hold) {
  absl::MutexLock lock(&mu_);
  hold_writes_ = hold;
}

void FakeStore::Restart() {
  std::vector<std::function<void(const MappedPool&)>> callbacks;
  MappedPool old;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [client, callback] : unmap_callbacks_) callbacks.push_back(callback);
    old = {pool_.data(), pool_.size(), incarnation_};
  }
  if (options_.same_host) {
    for (const auto& callback : callbacks) callback(old);
  }
  absl::MutexLock lock(&mu_);
  blocks_.clear();
  leases_.clear();
  free_slots_.clear();
  for (size_t s = options_.slot_count; s > 0; --s) free_slots_.push_back(s - 1);
  ++incarnation_;
}

void FakeStore::SetUnmapCallback(const Client* client,
                                 std::function<void(const MappedPool&)> callback) {
  absl::MutexLock lock(&mu_);
  if (callback) {
    unmap_callbacks_[client] = std::move(callback);
  } else {
    unmap_callbacks_.erase(client);
  }
}

uint64_t FakeStore::checksum_failures() const {
  absl::MutexLock lock(&mu_);
  return checksum_failures_;
}

bool FakeStore::Connected() const {
  absl::MutexLock lock(&mu_);
  return !down_;
}

std::optional<BlockKey> FakeStore::Parent(const NamespaceId& ns, const BlockKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = blocks_.find({ns, key});
  if (it == blocks_.end()) return std::nullopt;
  return it->second.parent;
}

bool FakeStore::Contains(const NamespaceId& ns, const BlockKey& key) const {
  absl::MutexLock lock(&mu_);
  return blocks_.contains({ns, key});
}

size_t FakeStore::blocks() const {
  absl::MutexLock lock(&mu_);
  return blocks_.size();
}

size_t FakeStore::active_leases() const {
  absl::MutexLock lock(&mu_);
  return leases_.size();
}

FakeStore::Calls FakeStore::calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

absl::Status FakeStore::CheckArgs(size_t keys, size_t buffers, size_t block_bytes) const {
  if (buffers != keys) {
    return absl::InvalidArgumentError(absl::StrCat(keys, " keys but ", buffers, " buffers"));
  }
  if (block_bytes == 0 || block_bytes > options_.slot_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_bytes ", block_bytes, " is outside 1..", options_.slot_bytes));
  }
  return absl::OkStatus();
}

size_t FakeStore::Prefix(const NamespaceId& ns, absl::Span<const BlockKey> keys, size_t limit) {
  size_t n = 0;
  for (; n < std::min(limit, keys.size()); ++n) {
    auto it = blocks_.find({ns, keys[n]});
    if (it == blocks_.end()) break;
    it->second.last_use = ++clock_;
  }
  return n;
}

size_t FakeStore::TakeBatchLimit(size_t n) {
  return std::min(n, std::exchange(fail_after_, SIZE_MAX));
}

bool FakeStore::FreeSlot(size_t* slot) {
  if (free_slots_.empty()) {
    auto victim = blocks_.end();
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
      if (it->second.pins == 0 &&
          (victim == blocks_.end() || it->second.last_use < victim->second.last_use)) {
        victim = it;
      }
    }
    if (victim == blocks_.end()) return false;
    free_slots_.push_back(victim->second.slot);
    blocks_.erase(victim);
  }
  *slot = free_slots_.back();
  free_slots_.pop_back();
  return true;
}

absl::StatusOr<size_t> FakeStore::Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys) {
  absl::MutexLock lock(&mu_);
  ++calls_.lookups;
  if (down_) return 0;
  return Prefix(ns, keys, keys.size());
}

absl::StatusOr<PutResult> FakeStore::Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                         absl::Span<const BlockKey> parents,
                                         absl::Span<const void* const> blocks, size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys.size(), blocks.size(), block_bytes));
  if (parents.size() != keys.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(keys.size(), " keys but ", parents.size(), " parents"));
  }
  absl::MutexLock lock(&mu_);
  auto released = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !hold_writes_; };
  mu_.Await(absl::Condition(&released));
  ++calls_.puts;
  PutResult r;
  const size_t n = down_ ? 0 : TakeBatchLimit(keys.size());
  size_t i = 0;
  for (; i < n; ++i) {
    if (blocks_.contains({ns, keys[i]})) {
      ++r.present;
      continue;
    }
    size_t slot = 0;
    if (!FreeSlot(&slot)) break;  // no space: this and every later key
    std::memcpy(SlotData(slot), blocks[i], block_bytes);
    blocks_[{ns, keys[i]}] = Block{
        parents[i], slot, block_bytes, BlockChecksum(SlotData(slot), block_bytes), ++clock_, 0};
    ++r.stored;
  }
  r.skipped = static_cast<uint32_t>(keys.size() - i);
  if (options_.same_host) r.stored_mapped = r.stored;  // written into the "mapped" pool
  return r;
}

absl::StatusOr<size_t> FakeStore::Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                      absl::Span<void* const> buffers, size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys.size(), buffers.size(), block_bytes));
  absl::MutexLock lock(&mu_);
  ++calls_.gets;
  if (down_) return 0;
  const size_t n = Prefix(ns, keys, TakeBatchLimit(keys.size()));
  for (size_t i = 0; i < n; ++i) {
    const Block& b = blocks_.at({ns, keys[i]});
    if (b.size != block_bytes) return i;  // a block of another shape is not ours to use
    if (CopyAndChecksum(buffers[i], SlotData(b.slot), block_bytes) != b.checksum) {
      ++checksum_failures_;
      return i;
    }
  }
  return n;
}

std::vector<StoreNodeInfo> FakeStore::Nodes() {
  absl::MutexLock lock(&mu_);
  StoreNodeInfo info;
  info.address = "fake";
  info.connected = !down_;
  info.slot_bytes = options_.slot_bytes;
  info.slot_count = options_.slot_count;
  info.pool_mapped = options_.same_host;
  return {info};
}

absl::StatusOr<MappedPrefix> FakeStore::MapPrefix(const NamespaceId& ns,
                                                  absl::Span<const BlockKey> keys,
                                                  size_t block_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckArgs(keys.size(), keys.size(), block_bytes));
  absl::MutexLock lock(&mu_);
  ++calls_.maps;
  if (down_) return MappedPrefix();
  const size_t stored = Prefix(ns, keys, TakeBatchLimit(keys.size()));
  if (!options_.same_host) return MappedPrefix({}, {}, stored, block_bytes, 1, nullptr);
  std::vector<const uint8_t*> where;
  std::vector<uint64_t> checksums;
  std::vector<Name> leased;
  for (size_t i = 0; i < stored; ++i) {
    Block& b = blocks_.at({ns, keys[i]});
    if (b.size != block_bytes) break;
    where.push_back(SlotData(b.slot));
    checksums.push_back(b.checksum);
    leased.push_back({ns, keys[i]});
  }
  if (leased.empty()) return MappedPrefix({}, {}, stored, block_bytes, 1, nullptr);
  const uint64_t id = next_lease_++;
  if (!std::exchange(expire_next_lease_, false)) {
    for (const Name& name : leased) ++blocks_.at(name).pins;
    leases_[id] = std::move(leased);
  }  // else expired at once: nothing pinned, and releasing it finds no lease
  return MappedPrefix(std::move(where), std::move(checksums), stored, block_bytes, 1,
                      [this, id] { return ReleaseLease(id); });
}

std::vector<MappedPool> FakeStore::MappedPools() {
  absl::MutexLock lock(&mu_);
  if (down_ || !options_.same_host) return {};
  return {{pool_.data(), pool_.size(), incarnation_}};
}

bool FakeStore::ReleaseLease(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it == leases_.end()) return false;
  for (const Name& name : it->second) --blocks_.at(name).pins;
  leases_.erase(it);
  return true;
}

}  // namespace kvtier
