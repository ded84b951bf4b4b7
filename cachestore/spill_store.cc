#include "cachestore/spill_store.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/checksum.h"
#include "common/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
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

// WAL on, no fsync (see the header on durability); a write that would wait for RocksDB to
// flush or compact fails at once instead (Incomplete), so that the spiller never hangs.
rocksdb::WriteOptions NoStall() {
  rocksdb::WriteOptions o;
  o.no_slowdown = true;
  return o;
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
    case C::kIncomplete:  // a write stall (WriteOptions::no_slowdown): try again later
      return absl::AbortedError(msg);
    case C::kMergeInProgress:
    case C::kExpired:
      return absl::InternalError(msg);
    default:
      return absl::UnknownError(msg);
  }
}

namespace fs = std::filesystem;

std::string DbDir(const std::string& dir) { return (fs::path(dir) / "db").string(); }
std::string QuarantineDir(const std::string& dir) {
  return (fs::path(dir) / "quarantine").string();
}

// RocksDB's write buffer for the data CF, also the WAL bound and the blob file size: 1/16 of
// the capacity within 1..64 MiB.
uint64_t WriteBufferBytes(uint64_t capacity) {
  return std::clamp<uint64_t>(capacity / 16, 1ull << 20, 64ull << 20);
}
// MANIFEST and OPTIONS files, bounded by the options below.
constexpr uint64_t kMiscBytes = 4ull << 20;
constexpr uint64_t kMaxManifestBytes = 1ull << 20;
// Blob garbage collection runs when garbage reaches this share of the blob files, so garbage
// stays below 1/3 of the payload: the payload is at most 3/4 of what remains.
constexpr double kBlobGarbageShare = 0.25;

struct DiskFile {
  std::string name;
  uint64_t bytes = 0;
};

// Regular files of `dir` with the bytes each takes on disk (allocated blocks, or the size if
// larger).
absl::Status FsError(const std::string& what, const std::string& path, const std::error_code& ec) {
  return absl::FailedPreconditionError(
      absl::StrCat("spill store: cannot ", what, " '", path, "': ", ec.message()));
}

std::vector<DiskFile> ListFiles(const std::string& dir) {
  std::vector<DiskFile> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    struct stat st;
    if (::stat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    out.push_back({entry.path().filename().string(),
                   std::max<uint64_t>(st.st_size, uint64_t{512} * st.st_blocks)});
  }
  return out;
}

bool EndsWith(const std::string& s, absl::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix.data(), suffix.size()) == 0;
}

bool IsTableOrBlob(const std::string& name) {
  return EndsWith(name, ".sst") || EndsWith(name, ".blob");
}

std::vector<rocksdb::ColumnFamilyDescriptor> ColumnFamilies(uint64_t capacity) {
  const uint64_t buffer = WriteBufferBytes(capacity);
  // meta: small records, scanned at start-up.
  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.write_buffer_size = std::min<uint64_t>(buffer, 4ull << 20);
  // data: MiB-sized payloads that are already dense (K/V tensors), so no compression. Large
  // values are kept in blob files (integrated BlobDB) so compaction moves only small blob
  // references instead of rewriting the payloads; blob GC reclaims space of deleted blocks.
  rocksdb::ColumnFamilyOptions data_options;
  data_options.write_buffer_size = buffer;
  data_options.compression = rocksdb::kNoCompression;
  data_options.enable_blob_files = true;
  data_options.min_blob_size = kMinBlobSize;
  data_options.blob_file_size = buffer;
  data_options.blob_compression_type = rocksdb::kNoCompression;
  data_options.enable_blob_garbage_collection = true;
  data_options.blob_garbage_collection_age_cutoff = 1.0;
  data_options.blob_garbage_collection_force_threshold = kBlobGarbageShare;
  return {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kMetaCf, meta_options},
      {kDataCf, data_options},
  };
}

// RocksDB's info log goes to our log, not to a file in the spill directory: a LOG file that
// hits a full disk trips an assert in RocksDB's next log line (Debian builds keep asserts).
class SpdlogLogger : public rocksdb::Logger {
 public:
  SpdlogLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    spdlog::log(
        level >= rocksdb::InfoLogLevel::ERROR_LEVEL ? spdlog::level::err : spdlog::level::warn,
        "rocksdb: {}", line);
  }
};

rocksdb::DBOptions DbOptions(uint64_t capacity) {
  rocksdb::DBOptions o;
  // Flushes and compactions yield the CPU to the store's control calls.
  static const bool lowered = [] {
    rocksdb::Env::Default()->LowerThreadPoolCPUPriority(rocksdb::Env::Priority::LOW);
    rocksdb::Env::Default()->LowerThreadPoolCPUPriority(rocksdb::Env::Priority::HIGH);
    return true;
  }();
  (void)lowered;
  o.info_log = std::make_shared<SpdlogLogger>();
  o.create_if_missing = true;
  o.create_missing_column_families = true;
  // Bounds the WAL: past this size RocksDB flushes the CFs holding the oldest WAL so that it
  // can be deleted (the meta CF's tiny writes would otherwise pin WAL files full of payloads).
  o.max_total_wal_size = WriteBufferBytes(capacity);
  o.max_manifest_file_size = kMaxManifestBytes;
  // Files take what they hold: preallocated WAL and blob space would escape the accounting.
  o.allow_fallocate = false;
  return o;
}

// Damage that RocksDB would open silently as an empty or partial database: CURRENT missing
// beside other database files, or table and blob files the MANIFEST no longer names (beyond
// what a flush or compaction interrupted by a kill leaves). Read-only, before the real open
// (which deletes unreferenced files).
absl::Status CheckIntact(const std::string& db_dir, uint64_t capacity) {
  const std::vector<DiskFile> files = ListFiles(db_dir);
  bool has_current = false, has_data = false;
  for (const DiskFile& f : files) {
    has_current |= f.name == "CURRENT";
    has_data |=
        IsTableOrBlob(f.name) || EndsWith(f.name, ".log") || f.name.rfind("MANIFEST-", 0) == 0;
  }
  if (!has_current) {
    if (!has_data) return absl::OkStatus();  // a new database
    return absl::DataLossError(
        absl::StrCat("spill store: '", db_dir, "' has database files but no CURRENT file"));
  }
  rocksdb::DB* raw = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Status s = rocksdb::DB::OpenForReadOnly(DbOptions(capacity), db_dir,
                                                   ColumnFamilies(capacity), &handles, &raw);
  if (!s.ok()) {
    // This process created the database with these column families: anything but an I/O
    // error (permissions, a full disk) means it is damaged.
    if (s.IsIOError()) {
      return ToAbsl(s, absl::StrCat("spill store: opening '", db_dir, "' read-only"));
    }
    return absl::DataLossError(
        absl::StrCat("spill store: the database in '", db_dir, "' is damaged: ", s.ToString()));
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  std::vector<std::string> live;
  uint64_t manifest_bytes = 0;
  s = db->GetLiveFiles(live, &manifest_bytes, /*flush_memtable=*/false);
  for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  db->Close();
  if (!s.ok()) return ToAbsl(s, "spill store: listing live files");
  std::set<std::string> live_names;
  for (const std::string& name : live) live_names.insert(fs::path(name).filename().string());
  uint64_t orphan_bytes = 0, orphans = 0;
  for (const DiskFile& f : files) {
    if (!IsTableOrBlob(f.name) || live_names.contains(f.name)) continue;
    orphan_bytes += f.bytes;
    ++orphans;
  }
  if (orphan_bytes > 2 * WriteBufferBytes(capacity)) {
    return absl::DataLossError(absl::StrCat(
        "spill store: the MANIFEST of '", db_dir, "' does not name ", orphans,
        " table and blob files (", orphan_bytes, " bytes): truncated or damaged MANIFEST"));
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t SpillStore::PayloadBytes(uint64_t capacity) {
  const uint64_t fixed = 3 * WriteBufferBytes(capacity) + kMiscBytes;
  if (capacity <= fixed) return 0;
  return static_cast<uint64_t>(static_cast<double>(capacity - fixed) * (1 - kBlobGarbageShare));
}

absl::StatusOr<std::unique_ptr<SpillStore>> SpillStore::Open(const std::string& dir,
                                                             uint64_t capacity_bytes) {
  const std::string db_dir = DbDir(dir);
  // RocksDB's create_if_missing only creates the last path component; create the parents too.
  std::error_code ec;
  fs::create_directories(db_dir, ec);
  if (ec) return FsError("create directory", db_dir, ec);
  // The capacity the file system can hold: what the database takes plus what is free. A
  // larger configured capacity would only fill the disk.
  uint64_t db_bytes = 0, wal_bytes = 0;
  for (const DiskFile& f : ListFiles(db_dir)) {
    db_bytes += f.bytes;
    if (EndsWith(f.name, ".log")) wal_bytes += f.bytes;
  }
  const fs::space_info space = fs::space(db_dir, ec);
  if (!ec && db_bytes + space.available < capacity_bytes) {
    spdlog::warn(
        "spill store: capacity {} bytes is more than '{}' can hold ({} bytes used, {} free); "
        "using {}",
        capacity_bytes, db_dir, db_bytes, space.available, db_bytes + space.available);
    capacity_bytes = db_bytes + space.available;
  }
  // Opening replays the WAL and may flush it; on a full disk RocksDB can then trip its own
  // asserts (Debian builds keep them), so a disk without room for that is not opened.
  const uint64_t need = wal_bytes + kMiscBytes;
  if (!ec && space.available < need) {
    return absl::ResourceExhaustedError(
        absl::StrCat("spill store: '", db_dir, "' has ", space.available,
                     " bytes free; opening the database needs ", need));
  }
  KVTIER_RETURN_IF_ERROR(CheckIntact(db_dir, capacity_bytes));

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw_db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(DbOptions(capacity_bytes), db_dir,
                                        ColumnFamilies(capacity_bytes), &handles, &raw_db);
  if (!s.ok()) {
    // On failure RocksDB returns neither a DB nor handles.
    return ToAbsl(s, absl::StrCat("spill store: opening RocksDB in '", db_dir, "'"));
  }

  std::unique_ptr<SpillStore> store(new SpillStore());
  store->db_dir_ = db_dir;
  store->capacity_bytes_ = capacity_bytes;
  store->db_.reset(raw_db);
  store->default_cf_ = handles[0];
  store->meta_cf_ = handles[1];
  store->data_cf_ = handles[2];
  return store;
}

absl::Status SpillStore::Quarantine(const std::string& dir, uint32_t keep) {
  const std::string db_dir = DbDir(dir);
  std::error_code ec;
  if (!fs::exists(db_dir, ec)) return absl::OkStatus();
  if (keep == 0) return Destroy(dir);
  const fs::path root = QuarantineDir(dir);
  fs::create_directories(root, ec);
  if (ec) return FsError("create directory", root.string(), ec);
  // Names sort by time: the oldest go first when more than `keep` are there.
  std::string name = absl::FormatTime("%Y%m%dT%H%M%E6SZ", absl::Now(), absl::UTCTimeZone());
  fs::rename(db_dir, root / name, ec);
  if (ec) return FsError("move " + db_dir + " to", (root / name).string(), ec);
  std::vector<fs::path> kept;
  for (const auto& entry : fs::directory_iterator(root, ec)) kept.push_back(entry.path());
  std::sort(kept.begin(), kept.end());
  for (size_t i = 0; i + keep < kept.size(); ++i) fs::remove_all(kept[i], ec);
  spdlog::error("spill store: damaged database moved to '{}' ({} kept at most)",
                (root / name).string(), keep);
  return absl::OkStatus();
}

absl::Status SpillStore::Destroy(const std::string& dir) {
  const std::string db_dir = DbDir(dir);
  std::error_code ec;
  fs::remove_all(db_dir, ec);
  if (ec) return FsError("delete", db_dir, ec);
  return absl::OkStatus();
}

uint64_t SpillStore::FreeBytes() const {
  std::error_code ec;
  const fs::space_info space = fs::space(db_dir_, ec);
  return ec ? 0 : space.available;
}

uint64_t SpillStore::HeadroomBytes() const {
  return 2 * WriteBufferBytes(capacity_bytes_) + kMiscBytes;
}

uint64_t SpillStore::DiskBytes() const {
  uint64_t total = 0;
  for (const DiskFile& f : ListFiles(db_dir_)) total += f.bytes;
  return total;
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
  if (s.ok()) s = db_->Write(NoStall(), &batch);
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
  if (s.ok()) s = db_->Write(NoStall(), &batch);
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
