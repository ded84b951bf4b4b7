// kvtier-store assembled: UCX context/worker/pool and progress thread (data plane), the Store,
// the gRPC service (control plane), the metrics endpoint, and a reaper thread for expired
// reservations and leases.
//
// Ownership: owns everything it starts. Thread-safety: Start, then Shutdown once, from one
// thread; gRPC, UCX progress, metrics and reaper run on their own threads meanwhile.
#ifndef KVTIER_CACHESTORE_STORE_SERVER_H_
#define KVTIER_CACHESTORE_STORE_SERVER_H_

#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "cachestore/store_config.h"

namespace grpc {
class Server;
}

namespace kvtier {
class MetricsHttpServer;
class MetricsRegistry;
namespace transport {
class UcxContext;
class UcxWorker;
class MemoryRegion;
class ProgressThread;
}  // namespace transport

namespace membership {
class Registration;
}  // namespace membership

namespace cachestore {

class Store;
class StoreService;

class StoreServer {
 public:
  static absl::StatusOr<std::unique_ptr<StoreServer>> Start(const StoreConfig& config);
  ~StoreServer();  // Shuts down if still running.

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }

  // Graceful stop: refuses new RPCs, lets running ones finish (bounded), spills memory blocks
  // if configured, then stops every thread. Idempotent.
  void Shutdown();

 private:
  StoreServer() = default;

  StoreConfig config_;
  std::unique_ptr<MetricsRegistry> metrics_;
  std::unique_ptr<transport::UcxContext> ucx_;
  std::unique_ptr<transport::UcxWorker> worker_;
  std::unique_ptr<transport::MemoryRegion> pool_;
  std::unique_ptr<transport::ProgressThread> progress_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<StoreService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  std::unique_ptr<membership::Registration> registration_;  // null without membership
  absl::Notification stop_reaper_;
  std::thread reaper_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace cachestore
}  // namespace kvtier

#endif  // KVTIER_CACHESTORE_STORE_SERVER_H_
