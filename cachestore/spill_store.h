// The store's spill tier: evicted blocks in RocksDB on local disk.
//
// Two column families: "meta" (key -> SpillMeta, small, scanned on start-up to rebuild the
// index) and "data" (key -> payload). A block's meta and data are written in one WriteBatch so
// a crash never leaves one without the other. Writes go through RocksDB's WAL without fsync:
// a killed process loses nothing, a power loss may lose the last writes.
//
// Thread-safety: safe for concurrent use without external synchronization.
#ifndef KVTIER_CACHESTORE_SPILL_STORE_H_
#define KVTIER_CACHESTORE_SPILL_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtier/block_key.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace kvtier::cachestore {

// What the index needs to rebuild an entry after a restart.
struct SpillMeta {
  NamespaceId ns{};
  BlockKey parent{};
  bool has_parent = false;
  uint64_t size = 0;
  uint64_t checksum = 0;  // xxh3-64 of the payload
};

class SpillStore {
 public:
  // Opens (creating if missing) the database in `dir`.
  static absl::StatusOr<std::unique_ptr<SpillStore>> Open(const std::string& dir);
  ~SpillStore();

  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  // Stores meta and payload atomically; overwrites an existing key.
  absl::Status Put(const BlockKey& key, const SpillMeta& meta, const void* data, size_t size);

  // Copies the payload of `key` into dst. NotFound if absent; DataLoss if the stored payload
  // has a different size than `size` or its xxh3-64 differs from `expected_checksum`.
  absl::Status Read(const BlockKey& key, void* dst, size_t size, uint64_t expected_checksum);

  // Removes meta and payload (absent keys are not an error).
  absl::Status Delete(const BlockKey& key);

  // Calls fn for every stored block's meta. Entries whose meta does not parse are deleted and
  // skipped (with a warning log). Returns the first RocksDB error.
  absl::Status ForEachMeta(const std::function<void(const BlockKey&, const SpillMeta&)>& fn);

 private:
  SpillStore() = default;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* meta_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* data_cf_ = nullptr;
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_SPILL_STORE_H_
