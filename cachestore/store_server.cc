#include "cachestore/store_server.h"

#include <grpcpp/grpcpp.h>

#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "cachestore/store.h"
#include "cachestore/store_service.h"
#include "common/host_port.h"
#include "common/logging.h"
#include "common/metrics_http.h"
#include "common/service.h"
#include "common/status_macros.h"
#include "membership/membership.h"
#include "transport/net_devices.h"
#include "transport/progress_thread.h"
#include "transport/ucx.h"

namespace kvtier::cachestore {
namespace {

constexpr absl::Duration kReapInterval = absl::Milliseconds(200);
constexpr absl::Duration kGrpcDrain = absl::Seconds(2);

}  // namespace

absl::StatusOr<std::unique_ptr<StoreServer>> StoreServer::Start(const StoreConfig& config) {
  auto s = std::unique_ptr<StoreServer>(new StoreServer());
  s->config_ = config;
  KVTIER_RETURN_IF_ERROR(FinalizeStoreConfig(&s->config_));
  const StoreOptions& opts = s->config_.store;
  s->metrics_ = std::make_unique<MetricsRegistry>();

  // Data plane: UCX allocates and registers the pool once (shared-memory peers map it, so
  // their put/get is one-sided); the progress thread serves transports that need the target.
  // The data plane stays on the configured interface (UCX's TCP transport would listen on every
  // one, without authentication).
  KVTIER_ASSIGN_OR_RETURN(HostPort listen, ParseHostPort(s->config_.listen));
  transport::UcxContextOptions ucx_options;
  KVTIER_ASSIGN_OR_RETURN(ucx_options.net_devices,
                          transport::ResolveNetDevices(s->config_.data_interface, {listen.host}));
  if (ucx_options.net_devices.empty()) {
    spdlog::warn(
        "data plane on every network interface: UCX has no authentication, keep this host's "
        "networks private or set data_interface (docs/store-protocol.md)");
  }
  KVTIER_ASSIGN_OR_RETURN(s->ucx_, transport::UcxContext::Create(ucx_options));
  KVTIER_ASSIGN_OR_RETURN(s->worker_, transport::UcxWorker::Create(s->ucx_.get()));
  const uint64_t pool_bytes = opts.slot_bytes * opts.slot_count;
  absl::Time t0 = absl::Now();
  KVTIER_ASSIGN_OR_RETURN(s->pool_, transport::MemoryRegion::Allocate(s->ucx_.get(), pool_bytes));
  // Touch every page now: the memory is committed up front (an overcommitted host fails here,
  // not mid-serving) and no page fault lands on the hot path later.
  std::memset(s->pool_->data(), 0, pool_bytes);
  spdlog::info(
      "pool: {} slots of {} bytes ({:.2f} GiB) allocated, registered and touched in {:.0f} ms",
      opts.slot_count, opts.slot_bytes, pool_bytes / double(1ull << 30),
      absl::ToDoubleMilliseconds(absl::Now() - t0));
  KVTIER_ASSIGN_OR_RETURN(std::string rkey, s->pool_->PackRkey());
  KVTIER_ASSIGN_OR_RETURN(s->progress_, transport::ProgressThread::Start(s->worker_.get()));

  // The spill tier is optional: Recover fails only when spill_required is set (a tier that
  // cannot be opened is retried in the background otherwise).
  s->store_ = std::make_unique<Store>(opts, s->pool_->data(), s->metrics_.get(), &absl::Now,
                                      [p = s->progress_.get()] { return p->passes(); });
  KVTIER_RETURN_IF_ERROR(s->store_->Recover());

  DataPlaneInfo info;
  info.incarnation = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  info.ucx_worker_address = s->worker_->address();
  info.pool_rkey = std::move(rkey);
  info.pool_base_address = reinterpret_cast<uint64_t>(s->pool_->data());
  info.ucx_memory_types = s->ucx_->memory_types();
  info.cuda_memory_supported = s->ucx_->cuda_memory_supported();
  info.spill_enabled = !opts.spill_dir.empty();
  s->service_ = std::make_unique<StoreService>(s->store_.get(), std::move(info), s->metrics_.get());

  KVTIER_ASSIGN_OR_RETURN(s->grpc_,
                          StartGrpcServer("kvtier-store", s->config_.listen, s->config_.tls,
                                          {s->service_.get()}, &s->grpc_port_));

  if (!s->config_.metrics_listen.empty()) {
    KVTIER_ASSIGN_OR_RETURN(HostPort hp, ParseHostPort(s->config_.metrics_listen));
    KVTIER_ASSIGN_OR_RETURN(s->metrics_http_,
                            MetricsHttpServer::Start(hp.host, hp.port, s->metrics_.get()));
    s->metrics_port_ = s->metrics_http_->port();
  }

  s->reaper_ = std::thread([p = s.get()] {
    while (!p->stop_reaper_.WaitForNotificationWithTimeout(kReapInterval)) {
      p->store_->ReapExpired();
    }
  });
  if (s->config_.membership.enabled()) {
    // Joins the cluster last, once it serves (docs/membership.md); the load is the pool's use.
    membership::Member member{.role = "store",
                              .data_address = s->config_.data_interface,
                              .capacity_bytes = static_cast<int64_t>(s->config_.pool_bytes)};
    KVTIER_ASSIGN_OR_RETURN(
        s->registration_,
        membership::RegisterServer(
            s->config_.membership, s->config_.listen, s->grpc_port_, s->metrics_port_,
            std::move(member), [store = s->store_.get()](membership::Member* m) {
              const StoreStats st = store->Stats();
              m->load = st.slots_total == 0 ? 0
                                            : static_cast<double>(st.slots_used) /
                                                  static_cast<double>(st.slots_total);
            }));
  }
  spdlog::info("kvtier-store serving: grpc port {}, metrics port {}, spill {}", s->grpc_port_,
               s->metrics_port_, opts.spill_dir.empty() ? "off" : opts.spill_dir);
  return s;
}

void StoreServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  registration_.reset();  // leave the cluster first: clients stop placing blocks here
  if (grpc_ != nullptr)
    grpc_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoSeconds(kGrpcDrain));
  if (reaper_.joinable()) {
    stop_reaper_.Notify();
    reaper_.join();
  }
  if (store_ != nullptr && !config_.store.spill_dir.empty() && config_.spill_on_shutdown) {
    const uint64_t n = store_->SpillAll();
    spdlog::info("shutdown: {} in-memory blocks on disk", n);
  }
  if (metrics_http_ != nullptr) metrics_http_->Stop();
  if (progress_ != nullptr) progress_->Stop();
}

StoreServer::~StoreServer() {
  Shutdown();
  // Members are destroyed in reverse order of declaration: gRPC before the service and store,
  // the pool before the worker and context.
}

}  // namespace kvtier::cachestore
