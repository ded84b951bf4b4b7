#include "cachestore/spill_store.h"

#include <cstring>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/checksum.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/status.h"
#include "rocksdb/write_batch.h"
#include "spdlog/spdlog.h"

namespace kvtier::cachestore {
namespace {

constexpr char kMetaCf[] = "meta";
constexpr char kDataCf[] = "data";

// Meta record, little-endian, fixed length:
//   [u8 version=1][32 ns][u8 has_parent][32 parent][u64 size][u64 checksum]
constexpr uint8_t kMetaVersion = 1;
constexpr size_t kMetaBytes = 1 + kBlockKeyBytes + 1 + kBlockKeyBytes + 8 + 8;

// Values at least this large go to blob files (the payloads, ~MiBs); smaller ones stay inline.
constexpr uint64_t kMinBlobSize = 4096;
constexpr size_t kDataWriteBufferSize = 64 << 20;
// Bounds the WAL: the meta CF receives tiny writes and would rarely flush on its own, which
// would pin WAL files full of payload bytes; past this size RocksDB flushes the CFs holding
// the oldest WAL so it can be deleted.
constexpr uint64_t kMaxTotalWalSize = 256 << 20;

void AppendKey(std::string* out, const BlockKey& key) {
  out->append(reinterpret_cast<const char*>(key.data()), key.size());
}

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

std::string EncodeMeta(const SpillMeta& meta) {
  std::string out;
  out.reserve(kMetaBytes);
  out.push_back(static_cast<char>(kMetaVersion));
  AppendKey(&out, meta.ns);
  out.push_back(meta.has_parent ? 1 : 0);
  AppendKey(&out, meta.parent);
  PutU64(&out, meta.size);
  PutU64(&out, meta.checksum);
  return out;
}

// Strict: exact length, known version, has_parent in {0, 1}. Returns false on any mismatch.
bool DecodeMeta(std::string_view in, SpillMeta* meta) {
  if (in.size() != kMetaBytes) return false;
  const char* p = in.data();
  if (static_cast<uint8_t>(*p++) != kMetaVersion) return false;
  std::memcpy(meta->ns.data(), p, kBlockKeyBytes);
  p += kBlockKeyBytes;
  const uint8_t has_parent = static_cast<uint8_t>(*p++);
  if (has_parent > 1) return false;
  meta->has_parent = has_parent == 1;
  std::memcpy(meta->parent.data(), p, kBlockKeyBytes);
  p += kBlockKeyBytes;
  meta->size = GetU64(p);
  p += 8;
  meta->checksum = GetU64(p);
  return true;
}

rocksdb::Slice KeySlice(const BlockKey& key) {
  return rocksdb::Slice(reinterpret_cast<const char*>(key.data()), key.size());
}

// Maps a RocksDB status onto the closest absl code; `context` prefixes the message.
absl::Status ToAbsl(const rocksdb::Status& s, absl::string_view context) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(context, ": ", s.ToString());
  using C = rocksdb::Status::Code;
  switch (s.code()) {
    case C::kNotFound:
      return absl::NotFoundError(msg);
    case C::kCorruption:
      return absl::DataLossError(msg);
    case C::kNotSupported:
      return absl::UnimplementedError(msg);
    case C::kInvalidArgument:
      return absl::InvalidArgumentError(msg);
    case C::kIOError:
      // A full disk is not transient in the retry sense; everything else (EIO, lost file, ...)
      // means the spill tier is currently unusable.
      if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
      return absl::UnavailableError(msg);
    case C::kBusy:
    case C::kTryAgain:
    case C::kShutdownInProgress:
      return absl::UnavailableError(msg);
    case C::kTimedOut:
      return absl::DeadlineExceededError(msg);
    case C::kAborted:
      return absl::AbortedError(msg);
    case C::kCompactionTooLarge:
      return absl::ResourceExhaustedError(msg);
    case C::kColumnFamilyDropped:
      return absl::FailedPreconditionError(msg);
    case C::kMergeInProgress:
    case C::kIncomplete:
    case C::kExpired:
      return absl::InternalError(msg);
    default:
      return absl::UnknownError(msg);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SpillStore>> SpillStore::Open(const std::string& dir) {
  // RocksDB's create_if_missing only creates the last path component; create the parents too.
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("spill store: cannot create directory '", dir, "': ", ec.message()));
  }

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_total_wal_size = kMaxTotalWalSize;
  db_options.keep_log_file_num = 5;  // RocksDB's own info LOG files

  // meta: small records, scanned at start-up; RocksDB defaults are fine.
  rocksdb::ColumnFamilyOptions meta_options;

  // data: MiB-sized payloads that are already dense (K/V tensors), so no compression. Large
  // values are kept in blob files (integrated BlobDB) so compaction moves only small blob
  // references instead of rewriting the payloads; blob GC reclaims space of deleted blocks.
  rocksdb::ColumnFamilyOptions data_options;
  data_options.write_buffer_size = kDataWriteBufferSize;
  data_options.compression = rocksdb::kNoCompression;
  data_options.enable_blob_files = true;
  data_options.min_blob_size = kMinBlobSize;
  data_options.blob_compression_type = rocksdb::kNoCompression;
  data_options.enable_blob_garbage_collection = true;

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kMetaCf, meta_options},
      {kDataCf, data_options},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir, cfs, &handles, &raw_db);
  if (!s.ok()) {
    // On failure RocksDB returns neither a DB nor handles.
    return ToAbsl(s, absl::StrCat("spill store: opening RocksDB in '", dir, "'"));
  }

  std::unique_ptr<SpillStore> store(new SpillStore());
  store->db_.reset(raw_db);
  store->default_cf_ = handles[0];
  store->meta_cf_ = handles[1];
  store->data_cf_ = handles[2];
  return store;
}

SpillStore::~SpillStore() {
  if (db_ == nullptr) return;
  // Handles must go before the DB; Close() then reports errors that ~DB would swallow.
  for (rocksdb::ColumnFamilyHandle* cf : {data_cf_, meta_cf_, default_cf_}) {
    if (cf != nullptr) db_->DestroyColumnFamilyHandle(cf);
  }
  rocksdb::Status s = db_->Close();
  if (!s.ok()) spdlog::warn("spill store: closing RocksDB: {}", s.ToString());
  db_.reset();
}

absl::Status SpillStore::Put(const BlockKey& key, const SpillMeta& meta, const void* data,
                             size_t size) {
  if (meta.size != size) {
    return absl::InvalidArgumentError(absl::StrCat("spill put of ", KeyToHex(key), ": meta says ",
                                                   meta.size, " bytes, payload is ", size));
  }
  if (data == nullptr && size > 0) {
    return absl::InvalidArgumentError("spill put: null data with non-zero size");
  }
  const std::string encoded = EncodeMeta(meta);
  rocksdb::WriteBatch batch;
  rocksdb::Status s = batch.Put(meta_cf_, KeySlice(key), encoded);
  if (s.ok()) {
    s = batch.Put(data_cf_, KeySlice(key), rocksdb::Slice(static_cast<const char*>(data), size));
  }
  // Default WriteOptions: WAL on, no fsync (see the header on durability).
  if (s.ok()) s = db_->Write(rocksdb::WriteOptions(), &batch);
  return ToAbsl(s, absl::StrCat("spill put of ", KeyToHex(key)));
}

absl::Status SpillStore::Read(const BlockKey& key, void* dst, size_t size,
                              uint64_t expected_checksum) {
  if (dst == nullptr && size > 0) {
    return absl::InvalidArgumentError("spill read: null destination with non-zero size");
  }
  rocksdb::PinnableSlice value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), data_cf_, KeySlice(key), &value);
  if (!s.ok()) return ToAbsl(s, absl::StrCat("spill read of ", KeyToHex(key)));
  if (value.size() != size) {
    return absl::DataLossError(absl::StrCat("spill read of ", KeyToHex(key), ": stored payload is ",
                                            value.size(), " bytes, expected ", size));
  }
  if (size > 0) std::memcpy(dst, value.data(), size);
  // Verified on the copy, so what the caller got is exactly what was checked. On DataLoss the
  // contents of dst are unspecified.
  const uint64_t actual = BlockChecksum(dst, size);
  if (actual != expected_checksum) {
    return absl::DataLossError(absl::StrCat("spill read of ", KeyToHex(key),
                                            ": checksum mismatch (stored payload hashes to ",
                                            actual, ", expected ", expected_checksum, ")"));
  }
  return absl::OkStatus();
}

absl::Status SpillStore::Delete(const BlockKey& key) {
  rocksdb::WriteBatch batch;
  rocksdb::Status s = batch.Delete(meta_cf_, KeySlice(key));
  if (s.ok()) s = batch.Delete(data_cf_, KeySlice(key));
  if (s.ok()) s = db_->Write(rocksdb::WriteOptions(), &batch);
  return ToAbsl(s, absl::StrCat("spill delete of ", KeyToHex(key)));
}

absl::Status SpillStore::ForEachMeta(
    const std::function<void(const BlockKey&, const SpillMeta&)>& fn) {
  // Raw keys of malformed entries; deleted after the scan so the iterator stays simple.
  std::vector<std::string> malformed;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_cf_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const rocksdb::Slice k = it->key();
      SpillMeta meta;
      if (k.size() != kBlockKeyBytes || !DecodeMeta(it->value().ToStringView(), &meta)) {
        spdlog::warn(
            "spill store: dropping malformed meta entry (key {} bytes: {}, value {} bytes)",
            k.size(), k.ToString(/*hex=*/true), it->value().size());
        malformed.push_back(k.ToString());
        continue;
      }
      BlockKey key;
      std::memcpy(key.data(), k.data(), kBlockKeyBytes);
      fn(key, meta);
    }
    if (!it->status().ok()) return ToAbsl(it->status(), "spill store: scanning meta");
  }
  for (const std::string& k : malformed) {
    rocksdb::WriteBatch batch;
    rocksdb::Status s = batch.Delete(meta_cf_, k);
    if (s.ok()) s = batch.Delete(data_cf_, k);
    if (s.ok()) s = db_->Write(rocksdb::WriteOptions(), &batch);
    if (!s.ok()) return ToAbsl(s, "spill store: deleting a malformed meta entry");
  }
  return absl::OkStatus();
}

}  // namespace kvtier::cachestore
