// Start-up shared by the worker binaries' start functions (common/service.h's RunServer): the
// metrics, engine, store client and tier their options describe, a role served over them with
// gRPC and the metrics over HTTP (and the ready file), and the static part of WorkerInfo.
//
// Ownership: WorkerParts and ServingWorker own what they hold. Thread-safety: the free functions
// are thread-safe.
#ifndef KVTIER_WORKER_SERVER_UTIL_H_
#define KVTIER_WORKER_SERVER_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/metrics_http.h"
#include "engine/engine.h"
#include "kvtier/store_client.h"
#include "membership/membership.h"
#include "worker/kv_tier.h"
#include "worker/worker_metrics.h"
#include "worker/worker_options.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace kvtier::v1 {
class WorkerInfo;
}

namespace kvtier::worker {

// What every worker binary builds from its options: the metrics (docs/observability.md) and
// their HTTP endpoint (started by ServeWorker; null when metrics_listen is off), the engine, the
// store client (null when no store is configured) and the tier between them; with membership
// (options.membership, docs/membership.md), the watch of the store nodes that feeds the tier's
// clients when no static `stores` are given, and this worker's registration (made by
// ServeWorker). Members are declared in reverse destruction order: the registration is revoked
// first, the watch stops before the tier it updates, the tier goes before the store client and
// the engine it borrows, and the metrics last, after everything that updates them.
struct WorkerParts {
  std::unique_ptr<WorkerMetrics> metrics;
  std::unique_ptr<MetricsHttpServer> metrics_http;
  std::unique_ptr<engine::Engine> engine;
  std::unique_ptr<StoreClient> store;
  std::unique_ptr<KvTier> tier;
  std::unique_ptr<membership::MemberWatcher> store_watch;
  std::unique_ptr<membership::Registration> registration;
};

// Registers the metrics of `role` ("prefill" or "decode"), loads the model and prepares the
// store client. `no_store_note` is logged (warn) when no store is configured, saying what that
// means for this role.
absl::StatusOr<WorkerParts> MakeWorkerParts(absl::string_view role, const WorkerOptions& options,
                                            absl::string_view no_store_note);

// A serving worker as its binary's start function builds it: the parts, the role (prefill: its
// gRPC service; decode: the scheduler and the service over it) and the gRPC server serving it.
// Members are declared in destruction order: the server goes first, then the role, then the
// parts the role uses.
template <typename Role>
struct ServingWorker {
  WorkerParts parts;
  std::unique_ptr<Role> role;
  std::unique_ptr<grpc::Server> server;
};

// Starts the gRPC server with `service` and the metrics endpoint (options.metrics_listen, into
// parts->metrics_http), writes the ready file ({"grpc_port":..,"metrics_port":..,"pid":..};
// metrics_port 0 when metrics are off) if configured, logs that `binary` is serving on which
// ports, and with membership registers the worker (its role from parts->metrics, the model, the
// KV cache bytes, requests running + waiting as its load) into parts->registration.
absl::StatusOr<std::unique_ptr<grpc::Server>> ServeWorker(absl::string_view binary,
                                                          const WorkerOptions& options,
                                                          WorkerParts* parts,
                                                          grpc::Service* service);

// Fills the fields of `info` that describe the worker rather than its load: role, model,
// namespace_id, block_tokens, vocab_size, max_context, backend, total_pages, and
// store_connected (StoreClient::AnyNodeConnected: as of the tier's last store call; contacts
// nothing). Any thread, while the engine thread uses the tier.
void FillWorkerInfo(absl::string_view role, const WorkerOptions& options,
                    const engine::Engine& engine, const KvTier& tier, v1::WorkerInfo* info);

}  // namespace kvtier::worker

#endif  // KVTIER_WORKER_SERVER_UTIL_H_
