#include "cachestore/spiller.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvtier::cachestore {
namespace {

// A write stall pauses the spiller this long; one that lasts kStallLimit fails the tier.
constexpr absl::Duration kStallPause = absl::Milliseconds(20);
constexpr absl::Duration kStallLimit = absl::Seconds(10);
// Nice value of the spiller thread (and RocksDB's background threads lower theirs too).
constexpr int kSpillerNice = 10;
// The spiller looks for work at least this often.
constexpr absl::Duration kSpillerPoll = absl::Milliseconds(100);

}  // namespace

Spiller::Spiller(const StoreOptions& options, absl::Mutex* mu, Index* index,
                 MetricsRegistry* metrics)
    : options_(options), mu_(mu), index_(index), retry_(options.spill_retry) {
  MetricsRegistry& m = *metrics;
  writes_ = m.AddCounter("kvtier_store_spill_writes_total",
                         "Blocks the spiller wrote to the spill tier.");
  errors_ = m.AddCounter("kvtier_store_spill_errors_total",
                         "RocksDB failures that took the spill tier offline or kept it so.");
  quarantines_ =
      m.AddCounter("kvtier_store_spill_quarantines_total", "Damaged spill databases moved aside.");
  online_g_ = m.AddGauge("kvtier_store_spill_online",
                         "1 while the spill tier is open; 0 while it is off or offline.");
  disk_bytes_g_ =
      m.AddGauge("kvtier_store_spill_disk_bytes", "Bytes the spill database takes on disk.");
  online_g_->Set(0);
}

Spiller::~Spiller() { Stop(); }

void Spiller::QueueDelete(const BlockKey& key) {
  if (db_ == nullptr) return;
  pending_deletes_.push_back(key);
  wake_ = true;
}

bool Spiller::FileSystemHasRoom(uint64_t bytes) {
  const uint64_t free_bytes = db_->FreeBytes();
  if (free_bytes >= bytes + db_->HeadroomBytes()) return true;
  pauses_.Log(spdlog::level::warn,
              "spill tier: {} bytes free on the disk, {} needed; spilling paused", free_bytes,
              bytes + db_->HeadroomBytes());
  return false;
}

size_t Spiller::Write(const std::vector<WriteJob>& jobs) {
  // Deletes first: a key deleted and written again is written after its deletion.
  std::vector<BlockKey> deletes = std::move(pending_deletes_);
  pending_deletes_.clear();
  std::shared_ptr<SpillStore> db = db_;
  const uint64_t epoch = epoch_;
  blocks_in_flight_ += jobs.size();
  mu_->Unlock();
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
      const WriteJob& j = jobs[written];
      s = db->Put(j.key, j.meta, j.data, j.meta.size);
      if (!s.ok()) break;
    }
  }
  const uint64_t disk_bytes = db->DiskBytes();
  mu_->Lock();
  blocks_in_flight_ -= jobs.size();
  disk_bytes_ = disk_bytes;
  disk_bytes_g_->Set(static_cast<double>(disk_bytes));
  if (epoch == epoch_) writes_->Increment(static_cast<double>(written));
  // A write stall is no failure, unless it lasts: what is left is tried again later.
  if (absl::IsAborted(s) && absl::Now() - stalled_since_ < kStallLimit) {
    if (stalled_since_ == absl::InfiniteFuture()) stalled_since_ = absl::Now();
    if (epoch == epoch_) {
      pending_deletes_.insert(pending_deletes_.begin(), deletes.begin() + deleted, deletes.end());
    }
    stalled_ = true;
  } else if (!s.ok()) {
    TierFailed(db.get(), s, op);
  }
  if (s.ok()) stalled_since_ = absl::InfiniteFuture();
  CloseIfLast(std::move(db));
  return epoch == epoch_ ? written : 0;
}

std::vector<absl::Status> Spiller::Read(const std::vector<ReadJob>& jobs) {
  std::shared_ptr<SpillStore> db = db_;
  if (db == nullptr) {  // the tier failed while the caller waited for a slot
    return std::vector<absl::Status>(jobs.size(), absl::UnavailableError("spill tier offline"));
  }
  std::vector<absl::Status> out;
  mu_->Unlock();
  absl::Status failed;  // a failure of the database, not of one block
  for (const ReadJob& j : jobs) {
    if (!failed.ok()) {
      out.push_back(failed);
      continue;
    }
    absl::Status s = db->Read(j.key, j.dst, j.size, j.checksum);
    if (!s.ok() && !absl::IsDataLoss(s) && !absl::IsNotFound(s)) failed = s;
    out.push_back(std::move(s));
  }
  mu_->Lock();
  if (!failed.ok()) TierFailed(db.get(), failed, "read");
  CloseIfLast(std::move(db));
  return out;
}

void Spiller::CloseIfLast(std::shared_ptr<SpillStore> db) {
  if (db.use_count() > 1) return;
  mu_->Unlock();  // closing waits for RocksDB's background work
  db.reset();
  mu_->Lock();
}

void Spiller::TierFailed(const SpillStore* db, const absl::Status& s, const char* op) {
  if (db_ == nullptr || db_.get() != db) return;  // already offline, or a newer database
  errors_->Increment();
  // Corruption: the database is moved aside for inspection. Anything else (a full disk, EIO,
  // lost permissions): the index forgets the spilled blocks now, so the files are wiped.
  reopen_ = absl::IsDataLoss(s) ? Reopen::kQuarantine : Reopen::kWipe;
  ++epoch_;
  db_.reset();  // closes once the last reader lets go; never written again
  online_g_->Set(0);
  pending_deletes_.clear();
  const uint64_t gone = index_->ForgetSpilled();
  retry_ = options_.spill_retry;
  next_open_ = absl::Now() + retry_;
  spdlog::error(
      "spill tier offline: {} failed: {}; {} spilled blocks dropped, serving from memory, "
      "reopening in {}",
      op, std::string(s.message()), gone, absl::FormatDuration(retry_));
}

absl::Status Spiller::OpenTier() {
  const std::string& dir = options_.spill_dir;
  Reopen mode;
  {
    absl::MutexLock lock(mu_);
    mode = reopen_;
  }
  auto quarantine = [&]() -> absl::Status {
    KVTIER_RETURN_IF_ERROR(SpillStore::Quarantine(dir, options_.spill_quarantine_max));
    quarantines_->Increment();
    return absl::OkStatus();
  };
  if (mode == Reopen::kQuarantine) KVTIER_RETURN_IF_ERROR(quarantine());
  if (mode == Reopen::kWipe) KVTIER_RETURN_IF_ERROR(SpillStore::Destroy(dir));
  {
    absl::MutexLock lock(mu_);
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
    absl::MutexLock lock(mu_);
    if (absl::IsDataLoss(scanned)) reopen_ = Reopen::kQuarantine;
    return scanned;
  }
  const uint64_t disk_bytes = db->DiskBytes();

  absl::MutexLock lock(mu_);
  payload_bytes_ = db->payload_bytes();
  db_ = std::move(db);
  online_g_->Set(1);
  index_->AddRecovered(metas);
  disk_bytes_ = disk_bytes;
  disk_bytes_g_->Set(static_cast<double>(disk_bytes));
  retry_ = options_.spill_retry;
  wake_ = true;
  return absl::OkStatus();
}

absl::Status Spiller::Start() {
  if (options_.spill_dir.empty()) return absl::OkStatus();
  absl::Status s = OpenTier();
  if (!s.ok()) {
    errors_->Increment();
    if (options_.spill_required) {
      return absl::Status(s.code(), absl::StrCat("the spill tier is required (spill_required) "
                                                 "and cannot be opened: ",
                                                 s.message()));
    }
    absl::MutexLock lock(mu_);
    next_open_ = absl::Now() + retry_;
    spdlog::error(
        "spill tier unavailable: {}; STARTING WITHOUT SPILL (memory only), retrying in {} "
        "(set spill_required to refuse to start instead)",
        std::string(s.message()), absl::FormatDuration(retry_));
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void Spiller::Loop() {
  // Disk work yields the CPU to the control calls (docs/store-protocol.md, "Spill tier").
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), kSpillerNice);
  absl::MutexLock lock(mu_);
  while (!stop_) {
    if (db_ == nullptr) {
      idle_ = true;
      wake_ = false;
      if (absl::Now() < next_open_) {
        mu_->AwaitWithDeadline(absl::Condition(&stop_), next_open_);
        continue;
      }
      idle_ = false;
      mu_->Unlock();
      absl::Status s = OpenTier();
      mu_->Lock();
      if (!s.ok()) {
        errors_->Increment();
        next_open_ = absl::Now() + retry_;
        spdlog::warn("spill tier still offline: {}; next try in {}", std::string(s.message()),
                     absl::FormatDuration(retry_));
        retry_ = std::min(retry_ * 2, options_.spill_retry * 64);
      }
      continue;
    }
    const uint64_t capacity = db_->capacity_bytes();
    const bool disk_has_room = disk_bytes_ <= capacity;
    if (!disk_has_room) {
      pauses_.Log(spdlog::level::warn,
                  "spill tier: the directory takes {} bytes, over its capacity of {}; "
                  "spilling paused until RocksDB reclaims space",
                  disk_bytes_, capacity);
    }
    if (!index_->SpillRound(disk_has_room)) {
      idle_ = true;
      wake_ = false;
      mu_->AwaitWithTimeout(absl::Condition(
                                +[](Spiller* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
                                  return s->wake_ || s->stop_;
                                },
                                this),
                            kSpillerPoll);
      idle_ = false;
      continue;
    }
    if (stalled_) {  // RocksDB is busy flushing: give it a moment
      stalled_ = false;
      mu_->AwaitWithTimeout(absl::Condition(&stop_), kStallPause);
    }
  }
  idle_ = true;
}

void Spiller::Stop() {
  {
    absl::MutexLock lock(mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Spiller::WaitIdle() {
  absl::MutexLock lock(mu_);
  if (!thread_.joinable()) return;
  wake_ = true;
  mu_->Await(absl::Condition(
      +[](Spiller* s)
           ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) { return s->stop_ || (s->idle_ && !s->wake_); },
      this));
}

}  // namespace kvtier::cachestore
