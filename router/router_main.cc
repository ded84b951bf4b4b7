// kvtier-router: the OpenAI-compatible HTTP front end of the serving workers. Flags override
// the YAML config (--config); see docs/serving.md, "Router".
#include "common/service.h"
#include "router/router.h"
#include "router/router_options.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  kvtier::Service service("kvtier-router");
  kvtier::router::RouterFlags flags;
  const kvtier::router::RouterOptions options = service.Configure(
      flags, "OpenAI-compatible HTTP front end of the kvtier workers", argc, argv);

  auto router = kvtier::router::Router::Create(options);
  if (!router.ok()) return service.Fail(router.status());
  absl::StatusOr<int> port = (*router)->Start();
  if (!port.ok()) return service.Fail(port.status());
  // grpc_port repeats the HTTP port for tools that read any server's ready file alike.
  absl::Status ready =
      kvtier::WriteReadyFile(options.ready_file, {{"http_port", *port}, {"grpc_port", *port}});
  if (!ready.ok()) return service.Fail(ready);
  spdlog::info("kvtier-router serving '{}' on port {}: {} prefill, {} decode worker(s)",
               options.model_name, *port, options.prefill_workers.size(),
               options.decode_workers.size());

  service.WaitForStop();
  (*router)->Stop();
  return service.Stopped();
}
