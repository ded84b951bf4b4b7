// kvtier-router: the OpenAI-compatible HTTP front end of the serving workers. Flags override
// the YAML config (--config); see docs/serving.md, "Router".
#include "common/service.h"
#include "common/status_macros.h"
#include "router/router.h"
#include "router/router_options.h"
#include "spdlog/spdlog.h"

namespace kvtier::router {
namespace {

// What --help says kvtier-router is.
constexpr char kAbout[] = "OpenAI-compatible HTTP front end of the kvtier workers";

absl::StatusOr<StopFunction> Start(const RouterOptions& options) {
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<Router> router, Router::Create(options));
  KVTIER_ASSIGN_OR_RETURN(const int port, router->Start());
  // grpc_port repeats the HTTP port for tools that read any server's ready file alike.
  KVTIER_RETURN_IF_ERROR(
      WriteReadyFile(options.ready_file, {{"http_port", port}, {"grpc_port", port}}));
  spdlog::info("kvtier-router serving '{}' on port {}: {} prefill, {} decode worker(s)",
               options.model_name, port, options.prefill_workers.size(),
               options.decode_workers.size());
  return [router] { router->Stop(); };
}

}  // namespace
}  // namespace kvtier::router

int main(int argc, char** argv) {
  return kvtier::RunServer<kvtier::router::RouterFlags>("kvtier-router", kvtier::router::kAbout,
                                                        argc, argv, kvtier::router::Start);
}
