// The store's spill tier: evicted blocks in RocksDB on local disk.
//
// Layout of a spill directory: `db/` is the RocksDB database, `quarantine/<time>/` holds
// databases moved aside because they were damaged (docs/store-protocol.md, "Spill tier").
// Two column families: "meta" (key -> SpillMeta, small, scanned on start-up to rebuild the
// index) and "data" (key -> payload). A block's meta and data are written in one WriteBatch so
// a crash never leaves one without the other. Writes go through RocksDB's WAL without fsync:
// a killed process loses nothing, a power loss may lose the last writes. RocksDB's write
// buffers, WAL and blob files are sized from the capacity so that the whole directory stays
// within it (Overhead()).
//
// A SpillStore does not recover from its own errors: after any failed write its owner closes
// it (destroys it) and opens a new one, never writing to it again (RocksDB's asserts fire when
// a file is written after a failed sync). Store (cachestore/store.h) does that.
//
// Thread-safety: safe for concurrent use without external synchronization; the static
// functions must not run while a SpillStore is open on the same directory.
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
  // Opens (creating if missing) the database of the spill directory `dir`, sized for
  // `capacity_bytes` (or what the file system can hold, if less). DataLoss when the database is
  // damaged (RocksDB reports corruption, CURRENT is missing beside other database files, or the
  // MANIFEST no longer names files that hold data): the caller moves it aside with Quarantine.
  // Other errors (permissions, a full disk) leave the directory as it is.
  static absl::StatusOr<std::unique_ptr<SpillStore>> Open(const std::string& dir,
                                                          uint64_t capacity_bytes);

  // Moves the database of `dir` to dir/quarantine/<UTC time>, then deletes the oldest
  // quarantined databases beyond `keep` (0: the database is deleted instead).
  static absl::Status Quarantine(const std::string& dir, uint32_t keep);
  // Deletes the database of `dir` (the quarantine stays).
  static absl::Status Destroy(const std::string& dir);

  // Payload bytes a tier of `capacity_bytes` may hold: the capacity less what RocksDB keeps
  // beside the payloads, at most (write-ahead log and memtables being flushed, blob garbage
  // awaiting collection, its own files). 0 when the capacity is too small for that overhead.
  static uint64_t PayloadBytes(uint64_t capacity_bytes);

  // Bytes the database's files take on disk now (every file under dir/db).
  uint64_t DiskBytes() const;
  // Bytes free on the file system, and how many must stay free for RocksDB to flush and
  // compact: writes that would eat into them are not made (a full disk trips RocksDB's
  // asserts).
  uint64_t FreeBytes() const;
  uint64_t HeadroomBytes() const;
  // The capacity it was opened with, lowered to what the file system holds, and its
  // PayloadBytes.
  uint64_t capacity_bytes() const { return capacity_bytes_; }
  uint64_t payload_bytes() const { return PayloadBytes(capacity_bytes_); }
  ~SpillStore();

  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  // Put and Delete fail with Aborted, and change nothing, while RocksDB stalls writes (its
  // memtables wait for a flush): the caller tries again later.
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
  std::string db_dir_;
  uint64_t capacity_bytes_ = 0;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* meta_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* data_cf_ = nullptr;
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_SPILL_STORE_H_
