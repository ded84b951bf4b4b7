// kvtier-store: the cache store server. Flags override the YAML config (--config);
// deploy/store.example.yaml shows every key.
#include "cachestore/store_config.h"
#include "cachestore/store_server.h"
#include "common/service.h"

int main(int argc, char** argv) {
  kvtier::Service service("kvtier-store");
  kvtier::cachestore::StoreFlags flags;
  const kvtier::cachestore::StoreConfig config = service.Configure(
      flags, "KV-cache block store (UCX data plane, gRPC control plane)", argc, argv);

  auto server = kvtier::cachestore::StoreServer::Start(config);
  if (!server.ok()) return service.Fail(server.status());
  absl::Status ready = kvtier::WriteReadyFile(
      config.ready_file,
      {{"grpc_port", (*server)->grpc_port()}, {"metrics_port", (*server)->metrics_port()}});
  if (!ready.ok()) return service.Fail(ready);

  service.WaitForStop();
  (*server)->Shutdown();
  server->reset();
  return service.Stopped();
}
