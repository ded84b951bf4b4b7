#include "worker/block_events.h"

#include <random>

#include "absl/container/flat_hash_set.h"
#include "kvtier/v1/worker.pb.h"

namespace kvtier::worker {

BlockEvents::BlockEvents()
    : epoch_((uint64_t{std::random_device{}()} << 32 | std::random_device{}()) | 1) {}

void BlockEvents::Log(uint64_t fp) {
  ++seq_;
  log_.push_back(fp);
  if (log_.size() > kMaxLog) log_.pop_front();
}

void BlockEvents::Stored(const BlockKey& key) {
  const uint64_t fp = KeyFingerprint(key);
  absl::MutexLock lock(&mu_);
  ++held_[fp];
  Log(fp);
}

void BlockEvents::Removed(const BlockKey& key) {
  const uint64_t fp = KeyFingerprint(key);
  absl::MutexLock lock(&mu_);
  auto it = held_.find(fp);
  if (it == held_.end()) return;
  if (--it->second == 0) held_.erase(it);
  Log(fp);
}

void BlockEvents::Report(uint64_t epoch, uint64_t since, v1::BlockReport* out) const {
  absl::MutexLock lock(&mu_);
  out->set_epoch(epoch_);
  out->set_seq(seq_);
  const uint64_t first = seq_ - log_.size();  // the log holds the changes first+1 .. seq_
  if (epoch != epoch_ || since < first || since > seq_) {
    out->set_full(true);
    out->mutable_stored()->Reserve(static_cast<int>(held_.size()));
    for (const auto& [fp, n] : held_) out->add_stored(fp);
    return;
  }
  // Net changes: each fingerprint touched after `since`, as it is now.
  absl::flat_hash_set<uint64_t> touched;
  for (size_t i = since - first; i < log_.size(); ++i) touched.insert(log_[i]);
  for (uint64_t fp : touched) {
    if (held_.contains(fp)) {
      out->add_stored(fp);
    } else {
      out->add_removed(fp);
    }
  }
}

size_t BlockEvents::held() const {
  absl::MutexLock lock(&mu_);
  return held_.size();
}

}  // namespace kvtier::worker
