#include "worker/server_util.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/host_port.h"
#include "common/service.h"
#include "common/status_macros.h"
#include "kvtier/v1/worker.pb.h"
#include "spdlog/spdlog.h"
#include "worker/request_checks.h"

namespace kvtier::worker {
namespace {

// How long start-up waits for membership to name the first store node.
constexpr absl::Duration kFirstStoresWait = absl::Seconds(5);

}  // namespace

absl::StatusOr<WorkerParts> MakeWorkerParts(absl::string_view role, const WorkerOptions& options,
                                            absl::string_view no_store_note) {
  WorkerParts parts;
  parts.metrics = std::make_unique<WorkerMetrics>(role);
  absl::StatusOr<std::unique_ptr<engine::Engine>> engine =
      engine::Engine::Create(options.model_dir, ToEngineOptions(options));
  if (!engine.ok()) {
    return absl::Status(engine.status().code(),
                        absl::StrCat("cannot load the model: ", engine.status().message()));
  }
  parts.engine = std::move(*engine);
  const bool follow_stores = options.stores.empty() && options.membership.enabled();
  if (!options.stores.empty() || follow_stores) {
    absl::StatusOr<std::unique_ptr<StoreClient>> store =
        StoreClient::Create(ToStoreClientOptions(options));
    if (!store.ok()) {
      return absl::Status(store.status().code(),
                          absl::StrCat("store client: ", store.status().message()));
    }
    parts.store = std::move(*store);
  } else {
    spdlog::warn("no store configured: {}", std::string(no_store_note));
  }
  parts.tier = std::make_unique<KvTier>(parts.engine.get(), parts.store.get(), parts.metrics.get());
  if (follow_stores) {
    KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<membership::EtcdClient> etcd,
                            membership::MakeEtcdClient(options.membership));
    parts.store_watch = membership::MemberWatcher::Start(
        std::move(etcd), options.membership.prefix, "store",
        [tier = parts.tier.get()](const std::vector<membership::Member>& stores) {
          std::vector<std::string> addresses;
          for (const membership::Member& m : stores) addresses.push_back(m.address);
          spdlog::info("store nodes from membership: {}",
                       addresses.empty() ? "none" : absl::StrJoin(addresses, ", "));
          tier->SetStores(addresses);
        },
        &parts.metrics->registry());
    // The first requests find the stores that exist now rather than missing everything.
    if (!parts.store_watch->WaitUntil(
            [](const std::vector<membership::Member>& m) { return !m.empty(); },
            kFirstStoresWait)) {
      spdlog::warn("no store node in membership yet: requests recompute until one joins");
    }
  }
  // Page-lock a same-host store's pool now rather than on the first request.
  parts.tier->RegisterStorePools();
  return parts;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> ServeWorker(absl::string_view binary,
                                                          const WorkerOptions& options,
                                                          WorkerParts* parts,
                                                          grpc::Service* service) {
  int metrics_port = 0;
  if (!options.metrics_listen.empty()) {
    KVTIER_ASSIGN_OR_RETURN(HostPort hp, ParseHostPort(options.metrics_listen));
    KVTIER_ASSIGN_OR_RETURN(
        parts->metrics_http,
        MetricsHttpServer::Start(hp.host, hp.port, &parts->metrics->registry()));
    metrics_port = parts->metrics_http->port();
  }
  int port = 0;
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> server,
                          StartGrpcServer(binary, options.listen, options.tls, {service}, &port));
  if (options.membership.enabled()) {
    membership::Member member{.role = parts->metrics->role(),
                              .model = options.model_name,
                              .capacity_bytes = options.kv_cache_bytes};
    KVTIER_ASSIGN_OR_RETURN(
        parts->registration,
        membership::RegisterServer(
            options.membership, options.listen, port, metrics_port, std::move(member),
            [m = parts->metrics.get()](membership::Member* member) {
              member->load = m->num_requests_running->Value() + m->num_requests_waiting->Value();
            }));
  }
  KVTIER_RETURN_IF_ERROR(
      WriteReadyFile(options.ready_file, {{"grpc_port", port}, {"metrics_port", metrics_port}}));
  spdlog::info(
      "{} serving {} on port {} (metrics port {}): {} KV pages of {} tokens, {} store node(s)",
      std::string(binary), options.model_name, port,
      metrics_port == 0 ? "off" : std::to_string(metrics_port), parts->engine->num_pages(),
      options.block_tokens, options.stores.size());
  return server;
}

void FillWorkerInfo(absl::string_view role, const WorkerOptions& options,
                    const engine::Engine& engine, const KvTier& tier, v1::WorkerInfo* info) {
  info->set_role(std::string(role));
  info->set_model(options.model_name);
  info->set_namespace_id(std::string(KeyBytes(tier.namespace_id())));
  info->set_block_tokens(tier.block_tokens());
  info->set_vocab_size(static_cast<uint32_t>(engine.config().vocab_size));
  info->set_max_context(static_cast<uint32_t>(MaxContext(engine.config())));
  info->set_backend(options.backend);
  info->set_total_pages(static_cast<uint32_t>(engine.num_pages()));
  // The client's own snapshot: this runs on gRPC threads, while the engine thread may be in
  // the middle of a call (or hold a MapPrefix) on that client.
  info->set_store_connected(tier.store() != nullptr && tier.store()->AnyNodeConnected());
}

}  // namespace kvtier::worker
