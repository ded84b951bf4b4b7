// gRPC adapter of the store: kvtier.v1.CacheStore over a Store. Validates and converts the
// wire messages (keys must be 32 bytes, batches bounded), maps absl::Status codes onto gRPC
// codes with the same meaning, and records per-method latency histograms.
//
// Ownership: borrows the Store and the MetricsRegistry. Thread-safety: gRPC calls the methods
// from its own thread pool concurrently; the Store serializes what needs it.
#ifndef KVTIER_CACHESTORE_STORE_SERVICE_H_
#define KVTIER_CACHESTORE_STORE_SERVICE_H_

#include <string>

#include "cachestore/store.h"
#include "common/grpc_status.h"
#include "common/metrics.h"
#include "kvtier/v1/cachestore.grpc.pb.h"

namespace kvtier::cachestore {

// What GetInfo reports besides the Store's options: the data plane's coordinates.
struct DataPlaneInfo {
  uint64_t incarnation = 0;
  std::string ucx_worker_address;
  std::string pool_rkey;
  uint64_t pool_base_address = 0;
  std::vector<std::string> ucx_memory_types;
  bool cuda_memory_supported = false;
  bool spill_enabled = false;
};

class StoreService final : public kvtier::v1::CacheStore::Service {
 public:
  StoreService(Store* store, DataPlaneInfo info, MetricsRegistry* metrics);

  grpc::Status GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*,
                       v1::GetInfoResponse*) override;
  grpc::Status Lookup(grpc::ServerContext*, const v1::LookupRequest*, v1::LookupResponse*) override;
  grpc::Status Reserve(grpc::ServerContext*, const v1::ReserveRequest*,
                       v1::ReserveResponse*) override;
  grpc::Status Commit(grpc::ServerContext*, const v1::CommitRequest*, v1::CommitResponse*) override;
  grpc::Status Abort(grpc::ServerContext*, const v1::AbortRequest*, v1::AbortResponse*) override;
  grpc::Status Release(grpc::ServerContext*, const v1::ReleaseRequest*,
                       v1::ReleaseResponse*) override;
  grpc::Status Stats(grpc::ServerContext*, const v1::StatsRequest*, v1::StatsResponse*) override;
  grpc::Status DropNamespace(grpc::ServerContext*, const v1::DropNamespaceRequest*,
                             v1::DropNamespaceResponse*) override;

 private:
  enum Method { kGetInfo, kLookup, kReserve, kCommit, kAbort, kRelease, kStats, kDrop, kCount };
  class Timer;

  Store* const store_;
  const DataPlaneInfo info_;
  Histogram* latency_[kCount];
  Counter* errors_[kCount];
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_STORE_SERVICE_H_
