#include "cachestore/store_service.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvtier::cachestore {
namespace {

constexpr const char* kMethodNames[] = {"GetInfo", "Lookup",  "Reserve", "Commit",
                                        "Abort",   "Release", "Stats",   "DropNamespace"};

absl::StatusOr<std::vector<BlockKey>> ParseKeys(
    const google::protobuf::RepeatedPtrField<std::string>& raw) {
  std::vector<BlockKey> keys;
  keys.reserve(raw.size());
  for (int i = 0; i < raw.size(); ++i) {
    KVTIER_ASSIGN_OR_RETURN(BlockKey k, KeyFromBytes(raw[i], absl::StrCat("keys[", i, "]")));
    keys.push_back(k);
  }
  return keys;
}

// Who holds a lease or reservation, for max_open_per_client: the gRPC peer (address and
// port: one connection; docs/store-protocol.md, "Limits"). No context (in-process callers,
// the fuzzer): one anonymous client.
std::string ClientOf(const grpc::ServerContext* ctx) {
  return ctx == nullptr ? std::string() : ctx->peer();
}

}  // namespace

// Observes the method's latency, and counts errors, when it goes out of scope.
class StoreService::Timer {
 public:
  Timer(StoreService* s, Method m) : s_(s), m_(m), start_(absl::Now()) {}
  ~Timer() { s_->latency_[m_]->Observe(absl::ToDoubleSeconds(absl::Now() - start_)); }
  grpc::Status Done(const absl::Status& status) {
    if (!status.ok()) s_->errors_[m_]->Increment();
    return ToGrpc(status);
  }

 private:
  StoreService* s_;
  Method m_;
  absl::Time start_;
};

StoreService::StoreService(Store* store, DataPlaneInfo info, MetricsRegistry* metrics)
    : store_(store), info_(std::move(info)) {
  for (int m = 0; m < kCount; ++m) {
    latency_[m] = metrics->AddHistogram("kvtier_store_rpc_seconds", "Control-plane RPC latency.",
                                        LatencyBucketsSeconds(), {{"method", kMethodNames[m]}});
    errors_[m] = metrics->AddCounter("kvtier_store_rpc_errors_total",
                                     "Control-plane RPCs that returned an error.",
                                     {{"method", kMethodNames[m]}});
  }
}

grpc::Status StoreService::GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*,
                                   v1::GetInfoResponse* resp) {
  Timer t(this, kGetInfo);
  const StoreOptions& o = store_->options();
  resp->set_version("kvtier-store 0.1.0");
  resp->set_incarnation(info_.incarnation);
  resp->set_ucx_worker_address(info_.ucx_worker_address);
  resp->set_pool_rkey(info_.pool_rkey);
  resp->set_pool_base_address(info_.pool_base_address);
  resp->set_pool_bytes(o.slot_bytes * o.slot_count);
  resp->set_slot_bytes(o.slot_bytes);
  resp->set_slot_count(o.slot_count);
  resp->set_max_batch_keys(o.max_batch_keys);
  resp->set_lease_timeout_ms(absl::ToInt64Milliseconds(o.lease_timeout));
  resp->set_reservation_timeout_ms(absl::ToInt64Milliseconds(o.reservation_timeout));
  for (const auto& m : info_.ucx_memory_types) resp->add_ucx_memory_types(m);
  resp->set_cuda_memory_supported(info_.cuda_memory_supported);
  resp->set_spill_enabled(info_.spill_enabled);
  return t.Done(absl::OkStatus());
}

grpc::Status StoreService::Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                                  v1::LookupResponse* resp) {
  Timer t(this, kLookup);
  auto ns = KeyFromBytes(req->namespace_id(), "namespace_id");
  if (!ns.ok()) return t.Done(ns.status());
  auto keys = ParseKeys(req->keys());
  if (!keys.ok()) return t.Done(keys.status());
  auto r = store_->Lookup(*ns, *keys, req->lease(), ClientOf(ctx));
  if (!r.ok()) return t.Done(r.status());
  resp->set_incarnation(info_.incarnation);
  resp->set_hit_count(r->hit_count);
  for (const BlockLocation& b : r->blocks) {
    v1::BlockLocation* out = resp->add_blocks();
    out->set_offset(b.offset);
    out->set_size(b.size);
    out->set_checksum(b.checksum);
  }
  resp->set_lease_id(r->lease_id);
  resp->set_lease_timeout_ms(absl::ToInt64Milliseconds(store_->options().lease_timeout));
  resp->set_promoted_count(r->promoted);
  return t.Done(absl::OkStatus());
}

grpc::Status StoreService::Reserve(grpc::ServerContext* ctx, const v1::ReserveRequest* req,
                                   v1::ReserveResponse* resp) {
  Timer t(this, kReserve);
  auto ns = KeyFromBytes(req->namespace_id(), "namespace_id");
  if (!ns.ok()) return t.Done(ns.status());
  auto keys = ParseKeys(req->keys());
  if (!keys.ok()) return t.Done(keys.status());
  std::optional<BlockKey> parent;
  if (!req->parent_key().empty()) {
    auto p = KeyFromBytes(req->parent_key(), "parent_key");
    if (!p.ok()) return t.Done(p.status());
    parent = *p;
  }
  auto r = store_->Reserve(*ns, *keys, parent, req->block_bytes(), ClientOf(ctx));
  if (!r.ok()) return t.Done(r.status());
  resp->set_incarnation(info_.incarnation);
  resp->set_reservation_id(r->reservation_id);
  for (size_t i = 0; i < r->outcomes.size(); ++i) {
    switch (r->outcomes[i]) {
      case ReserveOutcome::kReserved:
        resp->add_outcomes(v1::RESERVE_OUTCOME_RESERVED);
        break;
      case ReserveOutcome::kPresent:
        resp->add_outcomes(v1::RESERVE_OUTCOME_PRESENT);
        break;
      case ReserveOutcome::kNoSpace:
        resp->add_outcomes(v1::RESERVE_OUTCOME_NO_SPACE);
        break;
      case ReserveOutcome::kInProgress:
        resp->add_outcomes(v1::RESERVE_OUTCOME_IN_PROGRESS);
        break;
    }
    resp->add_offsets(r->offsets[i]);
  }
  resp->set_reservation_timeout_ms(
      absl::ToInt64Milliseconds(store_->options().reservation_timeout));
  return t.Done(absl::OkStatus());
}

grpc::Status StoreService::Commit(grpc::ServerContext*, const v1::CommitRequest* req,
                                  v1::CommitResponse* resp) {
  Timer t(this, kCommit);
  std::vector<uint64_t> sums(req->checksums().begin(), req->checksums().end());
  auto r = store_->Commit(req->reservation_id(), sums);
  if (!r.ok()) return t.Done(r.status());
  resp->set_committed(r->committed);
  for (const BlockKey& k : r->rejected) resp->add_rejected_keys(std::string(KeyBytes(k)));
  return t.Done(absl::OkStatus());
}

grpc::Status StoreService::Abort(grpc::ServerContext*, const v1::AbortRequest* req,
                                 v1::AbortResponse*) {
  Timer t(this, kAbort);
  return t.Done(store_->Abort(req->reservation_id()));
}

grpc::Status StoreService::Release(grpc::ServerContext*, const v1::ReleaseRequest* req,
                                   v1::ReleaseResponse*) {
  Timer t(this, kRelease);
  return t.Done(store_->Release(req->lease_id()));
}

grpc::Status StoreService::Stats(grpc::ServerContext*, const v1::StatsRequest*,
                                 v1::StatsResponse* resp) {
  Timer t(this, kStats);
  StoreStats s = store_->Stats();
  resp->set_blocks_in_memory(s.blocks_in_memory);
  resp->set_blocks_spilled(s.blocks_spilled);
  resp->set_slots_total(s.slots_total);
  resp->set_slots_used(s.slots_used);
  resp->set_spill_bytes(s.spill_bytes);
  resp->set_spill_capacity_bytes(s.spill_capacity_bytes);
  resp->set_lookups(s.lookups);
  resp->set_hit_blocks(s.hit_blocks);
  resp->set_miss_blocks(s.miss_blocks);
  resp->set_bytes_in(s.bytes_in);
  resp->set_bytes_out(s.bytes_out);
  resp->set_evictions(s.evictions);
  resp->set_spills(s.spills);
  resp->set_promotions(s.promotions);
  resp->set_spill_drops(s.spill_drops);
  resp->set_checksum_failures(s.checksum_failures);
  resp->set_expired_reservations(s.expired_reservations);
  resp->set_expired_leases(s.expired_leases);
  resp->set_active_leases(s.active_leases);
  resp->set_active_reservations(s.active_reservations);
  resp->set_namespaces(s.namespaces);
  resp->set_slots_quarantined(s.slots_quarantined);
  return t.Done(absl::OkStatus());
}

grpc::Status StoreService::DropNamespace(grpc::ServerContext*, const v1::DropNamespaceRequest* req,
                                         v1::DropNamespaceResponse* resp) {
  Timer t(this, kDrop);
  auto ns = KeyFromBytes(req->namespace_id(), "namespace_id");
  if (!ns.ok()) return t.Done(ns.status());
  DropResult r = store_->DropNamespace(*ns);
  resp->set_dropped(r.dropped);
  resp->set_pinned_kept(r.pinned_kept);
  return t.Done(absl::OkStatus());
}

}  // namespace kvtier::cachestore
