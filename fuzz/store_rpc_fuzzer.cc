// libFuzzer target: the store's control plane as any gRPC peer may drive it: a sequence of
// Lookup, Reserve, Commit, Abort, Release, DropNamespace and Stats requests, with keys and
// namespaces of any length, through StoreService (cachestore/store_service.h) over a real Store
// (spill off) on a small pool, with a clock the input advances. Checks after every call: every
// offset the store hands out lies inside the pool, no more slots are used than exist, no more
// namespaces are held than blocks; at the end, once every lease and reservation is released or
// expired, none is left active (nor counted against the client's max_open_per_client) and
// every block is evictable (a new chain as long as the pool fits, once the quarantine of
// aborted slots is over).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cachestore/store.h"
#include "cachestore/store_service.h"
#include "common/checksum.h"
#include "common/metrics.h"

namespace kvtier::cachestore {
namespace {

constexpr uint64_t kSlotBytes = 256;
constexpr uint64_t kSlotCount = 8;
constexpr uint64_t kPoolBytes = kSlotBytes * kSlotCount;

class Driver {
 public:
  explicit Driver(FuzzedDataProvider* in)
      : in_(in),
        pool_(kPoolBytes),
        store_(Options(), pool_.data(), &metrics_, [this] { return now_; }),
        service_(&store_, DataPlaneInfo{}, &metrics_) {}

  void Run() {
    while (in_->remaining_bytes() > 0) {
      switch (in_->ConsumeIntegralInRange(0, 8)) {
        case 0:
          Lookup();
          break;
        case 1:
          Reserve();
          break;
        case 2:
          Commit();
          break;
        case 3:
          Abort();
          break;
        case 4:
          Release();
          break;
        case 5: {
          v1::DropNamespaceRequest req;
          v1::DropNamespaceResponse resp;
          req.set_namespace_id(Namespace());
          service_.DropNamespace(nullptr, &req, &resp);
          break;
        }
        case 6:
          now_ += absl::Milliseconds(in_->ConsumeIntegralInRange(0, 2000));
          store_.ReapExpired();
          break;
        default:
          CheckStats();
          break;
      }
    }
    for (uint64_t id : leases_) store_.Release(id).IgnoreError();
    for (uint64_t id : reservations_) store_.Abort(id).IgnoreError();
    now_ += absl::Hours(1);
    store_.ReapExpired();
    const StoreStats s = store_.Stats();
    if (s.active_leases != 0 || s.active_reservations != 0) std::abort();
    CheckEverythingEvictable();
  }

 private:
  static StoreOptions Options() {
    StoreOptions o;
    o.slot_bytes = kSlotBytes;
    o.slot_count = kSlotCount;
    o.lease_timeout = absl::Seconds(1);
    o.reservation_timeout = absl::Seconds(1);
    o.max_batch_keys = 6;
    o.verify_threads = 1;
    // Small enough to be hit; the end needs 2 (CheckEverythingEvictable), so a lease or
    // reservation whose count was not given back fails it.
    o.max_open_per_client = 4;
    return o;
  }

  // Mostly one of a few well-formed 32-byte values, sometimes any bytes.
  std::string Bytes32(uint8_t tag) {
    if (in_->ConsumeIntegralInRange(0, 7) == 0) return in_->ConsumeRandomLengthString(40);
    return std::string(32, static_cast<char>(tag + in_->ConsumeIntegralInRange(0, 5)));
  }
  std::string Namespace() { return Bytes32(0x10); }
  std::string Key() { return Bytes32(0x40); }

  // An id the store returned, or any number.
  uint64_t Id(const std::vector<uint64_t>& ids) {
    if (ids.empty() || in_->ConsumeBool()) return in_->ConsumeIntegral<uint64_t>() % 4;
    return ids[in_->ConsumeIntegralInRange<size_t>(0, ids.size() - 1)];
  }

  void CheckRange(uint64_t offset, uint64_t size) {
    if (offset > kPoolBytes || size > kPoolBytes - offset) std::abort();
  }

  void Lookup() {
    v1::LookupRequest req;
    v1::LookupResponse resp;
    req.set_namespace_id(Namespace());
    const int n = in_->ConsumeIntegralInRange(0, 8);
    for (int i = 0; i < n; ++i) req.add_keys(Key());
    req.set_lease(in_->ConsumeBool());
    if (!service_.Lookup(nullptr, &req, &resp).ok()) return;
    if (resp.hit_count() > static_cast<uint32_t>(n)) std::abort();
    for (const v1::BlockLocation& b : resp.blocks()) CheckRange(b.offset(), b.size());
    if (resp.lease_id() != 0) leases_.push_back(resp.lease_id());
  }

  void Reserve() {
    v1::ReserveRequest req;
    v1::ReserveResponse resp;
    req.set_namespace_id(Namespace());
    const int n = in_->ConsumeIntegralInRange(0, 8);
    for (int i = 0; i < n; ++i) req.add_keys(Key());
    if (in_->ConsumeBool()) req.set_parent_key(Key());
    const uint64_t block_bytes = in_->ConsumeBool() ? in_->ConsumeIntegralInRange<uint64_t>(0, 300)
                                                    : in_->ConsumeIntegral<uint64_t>();
    req.set_block_bytes(block_bytes);
    if (!service_.Reserve(nullptr, &req, &resp).ok()) return;
    if (resp.outcomes_size() != n || resp.offsets_size() != n) std::abort();
    Pending p{resp.reservation_id(), block_bytes, {}};
    for (int i = 0; i < n; ++i) {
      if (resp.outcomes(i) != v1::RESERVE_OUTCOME_RESERVED) continue;
      CheckRange(resp.offsets(i), block_bytes);
      // The writer's put: some bytes, then the block's checksum (or a wrong one).
      uint8_t* block = pool_.data() + resp.offsets(i);
      std::fill(block, block + block_bytes, in_->ConsumeIntegral<uint8_t>());
      const uint64_t sum = BlockChecksum(block, block_bytes);
      p.checksums.push_back(in_->ConsumeIntegralInRange(0, 7) == 0 ? sum + 1 : sum);
    }
    if (resp.reservation_id() != 0) {
      reservations_.push_back(resp.reservation_id());
      pending_.push_back(std::move(p));
    }
  }

  void Commit() {
    v1::CommitRequest req;
    v1::CommitResponse resp;
    if (!pending_.empty() && in_->ConsumeBool()) {
      const Pending& p = pending_[in_->ConsumeIntegralInRange<size_t>(0, pending_.size() - 1)];
      req.set_reservation_id(p.id);
      for (uint64_t s : p.checksums) req.add_checksums(s);
      if (in_->ConsumeIntegralInRange(0, 7) == 0) req.add_checksums(0);  // one too many
    } else {
      req.set_reservation_id(Id(reservations_));
      const int n = in_->ConsumeIntegralInRange(0, 8);
      for (int i = 0; i < n; ++i) req.add_checksums(in_->ConsumeIntegral<uint64_t>());
    }
    service_.Commit(nullptr, &req, &resp);
  }

  void Abort() {
    v1::AbortRequest req;
    v1::AbortResponse resp;
    req.set_reservation_id(Id(reservations_));
    service_.Abort(nullptr, &req, &resp);
  }

  void Release() {
    v1::ReleaseRequest req;
    v1::ReleaseResponse resp;
    req.set_lease_id(Id(leases_));
    service_.Release(nullptr, &req, &resp);
  }

  // With no lease or reservation open every block is evictable: a new chain as long as the
  // pool gets a slot for every block (docs/store-protocol.md), in batches the store accepts.
  void CheckEverythingEvictable() {
    std::string parent;
    for (uint64_t first = 0; first < kSlotCount; first += 4) {
      v1::ReserveRequest req;
      v1::ReserveResponse resp;
      req.set_namespace_id(std::string(32, '\x7f'));
      for (uint64_t i = first; i < first + 4; ++i) {
        req.add_keys(std::string(32, static_cast<char>(0x80 + i)));
      }
      req.set_parent_key(parent);
      req.set_block_bytes(kSlotBytes);
      if (!service_.Reserve(nullptr, &req, &resp).ok()) std::abort();
      for (int o : resp.outcomes()) {
        if (o == v1::RESERVE_OUTCOME_NO_SPACE) std::abort();
      }
      parent = req.keys(3);
    }
  }

  void CheckStats() {
    v1::StatsRequest req;
    v1::StatsResponse resp;
    if (!service_.Stats(nullptr, &req, &resp).ok()) std::abort();
    if (resp.slots_used() > resp.slots_total() || resp.slots_total() != kSlotCount) std::abort();
    // Without spill every namespace id belongs to a block holding a slot (ids are freed with
    // a namespace's last block), and quarantined slots hold none.
    if (resp.slots_quarantined() > resp.slots_used() ||
        resp.namespaces() > resp.slots_used() - resp.slots_quarantined()) {
      std::abort();
    }
  }

  struct Pending {
    uint64_t id;
    uint64_t block_bytes;
    std::vector<uint64_t> checksums;
  };

  FuzzedDataProvider* const in_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
  std::vector<uint8_t> pool_;
  MetricsRegistry metrics_;
  Store store_;
  StoreService service_;
  std::vector<uint64_t> leases_, reservations_;
  std::vector<Pending> pending_;
};

}  // namespace
}  // namespace kvtier::cachestore

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  kvtier::cachestore::Driver(&in).Run();
  return 0;
}
