// FakeStore: an in-memory store tier for unit tests of the layers above StoreClient (KvTier,
// BlockWriter, the prefill service); never linked into a product binary.
//
// It behaves like kvtier-store seen through the real client (docs/store-protocol.md): blocks
// are content-addressed by (namespace, key) in fixed-size slots of one pool, with the xxh3-64
// checksum of the bytes written, and Get and MappedPrefix::Verify check the bytes against it;
// a full pool evicts its least recently used block that no lease pins, and when every block is
// pinned the rest of a Put is skipped; MapPrefix leases the blocks it returns. Failures are
// misses and skipped blocks, errors only for bad arguments (keys and buffers of different
// lengths, block_bytes 0 or over the slot size).
//
// Failures can be injected: a store that is down, a node that fails in the middle of a batch,
// a lease that expires before it is released, corrupt bytes, writes held back (to fill a
// writer's queue), and a restart (its blocks gone, its pool a new one at the same address: the
// clients' unmap callbacks run first, as the real client's do).
//
// Ownership: owns the blocks; clients from NewClient() borrow the store, which must outlive
// them (and the MappedPrefix handles they make).
// Thread-safety: every method of the store and of its clients is thread-safe.
#ifndef KVTIER_CACHESTORE_FAKE_STORE_CLIENT_H_
#define KVTIER_CACHESTORE_FAKE_STORE_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"

namespace kvtier {

struct FakeStoreOptions {
  // Bytes per slot: the largest block. Default: 256 KiB.
  size_t slot_bytes = size_t{256} << 10;
  // Slots in the pool: the most blocks stored at once. Default: 64.
  size_t slot_count = 64;
  // The pool is "on the same host": MappedPools() returns it and MapPrefix leases blocks in
  // place. False: as a remote store, MapPrefix maps nothing and reads go through Get.
  // Default: true.
  bool same_host = true;
};

class FakeStore {
 public:
  explicit FakeStore(FakeStoreOptions options = {});
  ~FakeStore();
  FakeStore(const FakeStore&) = delete;
  FakeStore& operator=(const FakeStore&) = delete;

  // A client of this store (any number; they share the blocks).
  std::unique_ptr<StoreClient> NewClient();

  // --- Failure injection -------------------------------------------------------------------
  // While down, every call fails as for a node that is down: lookups and gets miss, puts skip,
  // MapPrefix maps nothing, no pool is reported and Nodes() says not connected.
  void SetDown(bool down);
  // The next Put, Get or MapPrefix handles its first `blocks` blocks, then the node fails: the
  // rest of a Put is skipped, a Get or MapPrefix returns a prefix of at most `blocks`.
  void FailMidBatch(size_t blocks);
  // The lease of the next MapPrefix that leases blocks expires before it is released (the
  // reader was too slow): releasing the handle reports false.
  void ExpireNextLease();
  // Flips a byte of a stored block, keeping its checksum. False when the block is not stored.
  bool Corrupt(const NamespaceId& ns, const BlockKey& key);
  // While held, Put waits before storing anything (other calls go on).
  void HoldWrites(bool hold);
  // The store restarts: every unmap callback runs with the old pool, the blocks and leases are
  // gone, and MappedPools() reports the same memory under a new incarnation.
  void Restart();

  // --- Inspection --------------------------------------------------------------------------
  bool Contains(const NamespaceId& ns, const BlockKey& key) const;
  // The parent a stored block was put with (the namespace for a prefix's first block);
  // nullopt when the block is not stored.
  std::optional<BlockKey> Parent(const NamespaceId& ns, const BlockKey& key) const;
  size_t blocks() const;
  size_t active_leases() const;
  // Calls that reached the store, by kind.
  struct Calls {
    uint64_t lookups = 0;
    uint64_t puts = 0;
    uint64_t gets = 0;
    uint64_t maps = 0;
  };
  Calls calls() const;
  // Blocks Get found not matching their checksums (StoreClient::ChecksumFailures).
  uint64_t checksum_failures() const;

 private:
  class Client;
  using Name = std::pair<NamespaceId, BlockKey>;
  struct Block {
    BlockKey parent{};
    size_t slot = 0;
    size_t size = 0;
    uint64_t checksum = 0;
    uint64_t last_use = 0;
    int pins = 0;  // leases holding it
  };

  absl::StatusOr<size_t> Lookup(const NamespaceId& ns, absl::Span<const BlockKey> keys);
  absl::StatusOr<PutResult> Put(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                absl::Span<const BlockKey> parents,
                                absl::Span<const void* const> blocks, size_t block_bytes);
  absl::StatusOr<size_t> Get(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                             absl::Span<void* const> buffers, size_t block_bytes);
  std::vector<StoreNodeInfo> Nodes();
  absl::StatusOr<MappedPrefix> MapPrefix(const NamespaceId& ns, absl::Span<const BlockKey> keys,
                                         size_t block_bytes);
  std::vector<MappedPool> MappedPools();
  bool Connected() const;
  // The unmap callback of `client` (null: none; a client's destructor clears its own).
  void SetUnmapCallback(const Client* client, std::function<void(const MappedPool&)> callback);
  bool ReleaseLease(uint64_t id);

  absl::Status CheckArgs(size_t keys, size_t buffers, size_t block_bytes) const;
  // Leading keys stored, at most `limit`; marks them used.
  size_t Prefix(const NamespaceId& ns, absl::Span<const BlockKey> keys, size_t limit)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many blocks the node handles before it fails (FailMidBatch), consuming the injection.
  size_t TakeBatchLimit(size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A free slot, evicting the least recently used unpinned block if needed; false if none.
  bool FreeSlot(size_t* slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint8_t* SlotData(size_t slot) { return pool_.data() + slot * options_.slot_bytes; }

  const FakeStoreOptions options_;
  // The pool; allocated once, so pointers into it stay valid for the store's lifetime.
  std::vector<uint8_t> pool_;
  mutable absl::Mutex mu_;
  std::map<Name, Block> blocks_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> free_slots_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::vector<Name>> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  bool down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t checksum_failures_ ABSL_GUARDED_BY(mu_) = 0;
  bool hold_writes_ ABSL_GUARDED_BY(mu_) = false;
  bool expire_next_lease_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t incarnation_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<const Client*, std::function<void(const MappedPool&)>> unmap_callbacks_
      ABSL_GUARDED_BY(mu_);
  size_t fail_after_ ABSL_GUARDED_BY(mu_) = SIZE_MAX;  // SIZE_MAX: no failure injected
  Calls calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier

#endif  // KVTIER_CACHESTORE_FAKE_STORE_CLIENT_H_
