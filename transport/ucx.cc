#include "transport/ucx.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

namespace kvtier::transport {
namespace {

constexpr absl::Duration kCloseTimeout = absl::Seconds(2);

}  // namespace

absl::Status UcsToStatus(ucs_status_t status, absl::string_view what) {
  if (status == UCS_OK) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", ucs_status_string(status));
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::ResourceExhaustedError(msg);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      return absl::InvalidArgumentError(msg);
    case UCS_ERR_TIMED_OUT:
      return absl::DeadlineExceededError(msg);
    case UCS_ERR_CANCELED:
      return absl::CancelledError(msg);
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_UNREACHABLE:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

// ---------------------------------------------------------------------------------------------
// UcxContext

absl::StatusOr<std::unique_ptr<UcxContext>> UcxContext::Create(const UcxContextOptions& options) {
  // PEER error handling drops posix/sysv unless their error handling is on (docs/store-protocol.md,
  // "Data plane"). The environment is the one place UCX 1.13 reads transport-level settings from
  // for every context; an explicit user setting wins (overwrite = 0).
  setenv("UCX_POSIX_ERROR_HANDLING", "y", 0);
  setenv("UCX_SYSV_ERROR_HANDLING", "y", 0);
  // TCP's default 8 KiB segments cut a 2 MiB block into 256 messages that the (emulated) RMA
  // path handles one by one; 256 KiB segments move blocks 2.5-5x faster on loopback.
  setenv("UCX_TCP_TX_SEG_SIZE", "256k", 0);
  setenv("UCX_TCP_RX_SEG_SIZE", "256k", 0);

  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_config_read");
  // The data plane's interfaces are configuration, not environment: UCX's TCP transport
  // listens on every device it may use (docs/store-protocol.md, "Data plane: interfaces and
  // trust").
  if (!options.net_devices.empty()) {
    const char* env = std::getenv("UCX_NET_DEVICES");
    if (env != nullptr && options.net_devices != env) {
      spdlog::warn("UCX_NET_DEVICES={} is overridden by the configured data interface {}", env,
                   options.net_devices);
    }
    st = ucp_config_modify(config, "NET_DEVICES", options.net_devices.c_str());
    if (st != UCS_OK) {
      ucp_config_release(config);
      return UcsToStatus(st, absl::StrCat("UCX NET_DEVICES=", options.net_devices));
    }
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = options.workers_on_threads ? 1 : 0;

  auto ctx = std::unique_ptr<UcxContext>(new UcxContext());
  st = ucp_init(&params, config, &ctx->context_);
  ucp_config_release(config);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_init");

  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  st = ucp_context_query(ctx->context_, &attr);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_context_query");
  for (int t = 0; t < UCS_MEMORY_TYPE_LAST; ++t) {
    if (attr.memory_types & UCS_BIT(t)) ctx->memory_types_.push_back(ucs_memory_type_names[t]);
  }
  ctx->cuda_supported_ = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  spdlog::info("UCX {}.{}: memory types [{}], CUDA memory {}, network devices {}", UCP_API_MAJOR,
               UCP_API_MINOR, absl::StrJoin(ctx->memory_types_, ","),
               ctx->cuda_supported_ ? "supported" : "not supported (GPU data is staged)",
               options.net_devices.empty() ? "all" : options.net_devices);
  return ctx;
}

UcxContext::~UcxContext() {
  if (context_ != nullptr) ucp_cleanup(context_);
}

// ---------------------------------------------------------------------------------------------
// UcxWorker

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(UcxContext* context) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_EVENTS;
  params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  // Any traffic wakes a sleeping progress thread: the store must progress to serve RMA that a
  // transport emulates with active messages (tcp).
  params.events = UCP_WAKEUP_RMA | UCP_WAKEUP_AMO | UCP_WAKEUP_TX | UCP_WAKEUP_RX;
  auto w = std::unique_ptr<UcxWorker>(new UcxWorker());
  ucs_status_t st = ucp_worker_create(context->handle(), &params, &w->worker_);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_worker_create");

  ucp_address_t* addr = nullptr;
  size_t len = 0;
  st = ucp_worker_get_address(w->worker_, &addr, &len);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_worker_get_address");
  w->address_.assign(reinterpret_cast<const char*>(addr), len);
  ucp_worker_release_address(w->worker_, addr);
  return w;
}

UcxWorker::~UcxWorker() {
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
}

ucs_status_t UcxWorker::Poll(void* request, absl::Time deadline) {
  ucs_status_t st;
  uint32_t spins = 0;
  while ((st = ucp_request_check_status(request)) == UCS_INPROGRESS) {
    ucp_worker_progress(worker_);
    // Reading the clock is cheap, but not free: look every 1024 progress calls.
    if ((++spins & 1023) == 0 && absl::Now() > deadline) return UCS_INPROGRESS;
  }
  return st;
}

absl::Status UcxWorker::Wait(ucs_status_ptr_t request, absl::Time deadline,
                             absl::string_view what) {
  if (request == nullptr) return absl::OkStatus();
  if (UCS_PTR_IS_ERR(request)) return UcsToStatus(UCS_PTR_STATUS(request), what);
  const ucs_status_t st = Poll(request, deadline);
  if (st == UCS_INPROGRESS) {
    // Never spin on a request that cancel cannot stop: release it to UCX and return.
    ucp_request_cancel(worker_, request);
    ucp_request_free(request);
    return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
  }
  ucp_request_free(request);
  return UcsToStatus(st, what);
}

// ---------------------------------------------------------------------------------------------
// MemoryRegion

namespace {

absl::StatusOr<std::unique_ptr<MemoryRegion>> MapMemory(UcxContext* context, void* address,
                                                        size_t bytes, bool allocate,
                                                        ucp_mem_h* memh_out, void** addr_out,
                                                        std::unique_ptr<MemoryRegion> region) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.address = address;
  params.length = bytes;
  params.flags = allocate ? UCP_MEM_MAP_ALLOCATE : 0;
  ucs_status_t st = ucp_mem_map(context->handle(), &params, memh_out);
  if (st != UCS_OK) {
    return UcsToStatus(st, absl::StrCat("ucp_mem_map of ", bytes, " bytes"));
  }
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  st = ucp_mem_query(*memh_out, &attr);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_mem_query");
  *addr_out = attr.address;
  return region;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryRegion>> MemoryRegion::Allocate(UcxContext* context,
                                                                     size_t bytes) {
  auto r = std::unique_ptr<MemoryRegion>(new MemoryRegion());
  r->context_ = context->handle();
  r->size_ = bytes;
  MemoryRegion* raw = r.get();
  return MapMemory(context, nullptr, bytes, /*allocate=*/true, &raw->memh_, &raw->address_,
                   std::move(r));
}

absl::StatusOr<std::unique_ptr<MemoryRegion>> MemoryRegion::Register(UcxContext* context,
                                                                     void* address, size_t bytes) {
  auto r = std::unique_ptr<MemoryRegion>(new MemoryRegion());
  r->context_ = context->handle();
  r->size_ = bytes;
  MemoryRegion* raw = r.get();
  return MapMemory(context, address, bytes, /*allocate=*/false, &raw->memh_, &raw->address_,
                   std::move(r));
}

MemoryRegion::~MemoryRegion() {
  if (memh_ != nullptr) ucp_mem_unmap(context_, memh_);
}

absl::StatusOr<std::string> MemoryRegion::PackRkey() const {
  void* buf = nullptr;
  size_t len = 0;
  ucs_status_t st = ucp_rkey_pack(context_, memh_, &buf, &len);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_rkey_pack");
  std::string out(static_cast<const char*>(buf), len);
  ucp_rkey_buffer_release(buf);
  return out;
}

// ---------------------------------------------------------------------------------------------
// RemoteKey, Endpoint

RemoteKey::~RemoteKey() {
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
}

void* RemoteKey::LocalPointer(uint64_t remote_address) const {
  void* p = nullptr;
  return ucp_rkey_ptr(rkey_, remote_address, &p) == UCS_OK ? p : nullptr;
}

void Endpoint::OnError(void* arg, ucp_ep_h, ucs_status_t status) {
  // Runs inside ucp_worker_progress: only flag it.
  static_cast<Endpoint*>(arg)->failed_.store(true, std::memory_order_relaxed);
}

absl::StatusOr<std::unique_ptr<Endpoint>> Endpoint::Connect(UcxWorker* worker,
                                                            const std::string& peer_address) {
  if (peer_address.empty()) return absl::InvalidArgumentError("empty UCX worker address");
  auto ep = std::unique_ptr<Endpoint>(new Endpoint());
  ep->worker_ = worker;
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(peer_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &Endpoint::OnError;
  params.err_handler.arg = ep.get();
  ucs_status_t st = ucp_ep_create(worker->handle(), &params, &ep->ep_);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_ep_create");
  return ep;
}

Endpoint::~Endpoint() {
  if (ep_ == nullptr) return;
  if (failed()) {
    ForceClose();
    return;
  }
  ucp_request_param_t param{};
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep_, &param);
  absl::Status s = worker_->Wait(req, absl::Now() + kCloseTimeout, "ucp_ep_close_nbx");
  if (!s.ok()) spdlog::debug("endpoint close: {}", s.ToString());
}

void Endpoint::ForceClose() {
  failed_.store(true, std::memory_order_relaxed);
  if (ep_ == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  absl::Status s =
      worker_->Wait(ucp_ep_close_nbx(ep_, &param), absl::Now() + kCloseTimeout, "force close");
  if (!s.ok()) spdlog::debug("endpoint force close: {}", s.ToString());
  ep_ = nullptr;
}

std::string Endpoint::Describe() const {
  if (ep_ == nullptr) return "closed";
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  if (f == nullptr) return "";
  ucp_ep_print_info(ep_, f);
  fclose(f);
  std::string out(buf, len);
  free(buf);
  return out;
}

absl::StatusOr<std::unique_ptr<RemoteKey>> Endpoint::UnpackRkey(const std::string& packed) {
  if (packed.empty()) return absl::InvalidArgumentError("empty remote key");
  if (ep_ == nullptr) return absl::UnavailableError("UCX endpoint closed");
  auto rkey = std::unique_ptr<RemoteKey>(new RemoteKey());
  ucs_status_t st = ucp_ep_rkey_unpack(ep_, packed.data(), &rkey->rkey_);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_ep_rkey_unpack");
  return rkey;
}

absl::Status Endpoint::PutBatch(const RemoteKey& rkey, absl::Span<const RmaOp> ops,
                                absl::Time deadline) {
  return RunBatch(/*put=*/true, rkey, ops, deadline);
}

absl::Status Endpoint::GetBatch(const RemoteKey& rkey, absl::Span<const RmaOp> ops,
                                absl::Time deadline) {
  return RunBatch(/*put=*/false, rkey, ops, deadline);
}

absl::Status Endpoint::RunBatch(bool put, const RemoteKey& rkey, absl::Span<const RmaOp> ops,
                                absl::Time deadline) {
  if (failed() || ep_ == nullptr) return absl::UnavailableError("UCX endpoint failed earlier");
  const char* what = put ? "ucp_put_nbx" : "ucp_get_nbx";
  ucp_request_param_t param{};  // no callback: completion is observed through the flush
  absl::Status error;
  std::vector<void*> pending;
  pending.reserve(ops.size() + 1);
  for (const RmaOp& op : ops) {
    ucs_status_ptr_t req =
        put ? ucp_put_nbx(ep_, op.local, op.size, op.remote_address, rkey.handle(), &param)
            : ucp_get_nbx(ep_, op.local, op.size, op.remote_address, rkey.handle(), &param);
    if (UCS_PTR_IS_ERR(req)) {
      error = UcsToStatus(UCS_PTR_STATUS(req), what);
      break;
    }
    if (req != nullptr) pending.push_back(req);
  }
  // One flush for the whole batch: completes after every operation above is complete remotely.
  ucs_status_ptr_t flush = ucp_ep_flush_nbx(ep_, &param);
  if (UCS_PTR_IS_ERR(flush)) {
    if (error.ok()) error = UcsToStatus(UCS_PTR_STATUS(flush), "ucp_ep_flush_nbx");
  } else if (flush != nullptr) {
    pending.push_back(flush);
  }
  // ucp_request_cancel does nothing for RMA and flush requests: on the deadline the only way
  // to stop them (and to keep them off the caller's buffers) is to close the endpoint.
  for (void* req : pending) {
    if (!error.ok()) break;
    const ucs_status_t st = worker_->Poll(req, deadline);
    if (st == UCS_INPROGRESS) {
      error = absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
    } else if (st != UCS_OK) {
      error = UcsToStatus(st, what);
    }
  }
  if (error.ok() && failed()) error = absl::UnavailableError("UCX peer failed during transfer");
  if (!error.ok()) ForceClose();  // completes whatever is outstanding, cancelled
  for (void* req : pending) ucp_request_free(req);
  return error;
}

}  // namespace kvtier::transport
