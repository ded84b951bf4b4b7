// kvtier-store: the cache store server. Flags override the YAML config (--config);
// deploy/store.example.yaml shows every key.
#include "cachestore/store_config.h"
#include "cachestore/store_server.h"
#include "common/service.h"
#include "common/status_macros.h"

namespace kvtier::cachestore {
namespace {

// What --help says kvtier-store is.
constexpr char kAbout[] = "KV-cache block store (UCX data plane, gRPC control plane)";

absl::StatusOr<StopFunction> Start(const StoreConfig& config) {
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<StoreServer> server, StoreServer::Start(config));
  KVTIER_RETURN_IF_ERROR(WriteReadyFile(
      config.ready_file,
      {{"grpc_port", server->grpc_port()}, {"metrics_port", server->metrics_port()}}));
  return [server] { server->Shutdown(); };
}

}  // namespace
}  // namespace kvtier::cachestore

int main(int argc, char** argv) {
  return kvtier::RunServer<kvtier::cachestore::StoreFlags>(
      "kvtier-store", kvtier::cachestore::kAbout, argc, argv, kvtier::cachestore::Start);
}
