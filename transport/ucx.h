// RAII wrappers over UCX (ucp): context, worker, endpoint, registered memory, remote key, and
// batched one-sided put/get with one flush per batch.
//
// Ownership: every type is move-only and releases its UCX handle in its destructor. Objects
// must be destroyed in reverse dependency order: RemoteKey before its Endpoint, Endpoint and
// MemoryRegion before their Worker/Context, Worker before Context.
//
// Threads: a Worker is created in UCS_THREAD_MODE_SERIALIZED: any thread may use it, but never
// two at once. The caller serializes (the store gives its worker to one ProgressThread; the
// client library gives each node a worker of its own, used by one thread at a time, over a
// context made with workers_on_threads). UCX callbacks registered here never block and take no
// locks.
//
// Error handling: endpoints use UCP_ERR_HANDLING_MODE_PEER so that a dead peer fails pending
// operations instead of hanging them. Because that mode silently drops UCX 1.13's shared-memory
// transports unless their error handling is switched on, UcxContext::Create sets
// UCX_POSIX_ERROR_HANDLING=y and UCX_SYSV_ERROR_HANDLING=y in the environment when the user has
// not set them, and raises TCP's segment size to 256 KiB likewise (see docs/store-protocol.md).
#ifndef KVTIER_TRANSPORT_UCX_H_
#define KVTIER_TRANSPORT_UCX_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace kvtier::transport {

// Converts a UCX status to an absl::Status carrying `what` and UCX's own message.
absl::Status UcsToStatus(ucs_status_t status, absl::string_view what);

struct UcxContextOptions {
  // Network devices UCX may use (UCX_NET_DEVICES, from ResolveNetDevices in
  // transport/net_devices.h): UCX's TCP transport listens on each of them. Set here, it wins
  // over the environment. Shared memory and self are no network devices and stay available.
  // Empty: every device (UCX's default). Default: empty.
  std::string net_devices;
  // Whether workers of this context are used by different threads at once (one worker per
  // thread, e.g. the store client's one per node): the context then locks what its workers
  // share (ucp_params_t::mt_workers_shared). Default: false.
  bool workers_on_threads = false;
};

class UcxContext {
 public:
  // Creates a context with RMA and wakeup features.
  static absl::StatusOr<std::unique_ptr<UcxContext>> Create(const UcxContextOptions& options = {});
  ~UcxContext();
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;

  ucp_context_h handle() const { return context_; }
  // Memory types UCX can move ("host", "cuda", ...), from ucp_context_query.
  const std::vector<std::string>& memory_types() const { return memory_types_; }
  bool cuda_memory_supported() const { return cuda_supported_; }

 private:
  UcxContext() = default;
  ucp_context_h context_ = nullptr;
  std::vector<std::string> memory_types_;
  bool cuda_supported_ = false;
};

class UcxWorker {
 public:
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(UcxContext* context);
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  ucp_worker_h handle() const { return worker_; }
  // The worker's address, to be sent to peers through the control plane.
  const std::string& address() const { return address_; }
  // One progress call; returns true if something happened.
  bool Progress() { return ucp_worker_progress(worker_) != 0; }
  // Blocks, progressing this worker, until `request` (from a *_nbx call) completes or
  // `deadline` passes; frees the request. Returns the request's status, or DeadlineExceeded
  // on timeout, after ucp_request_cancel: that does not stop RMA or flush requests, which go on
  // in the background (Endpoint's transfers force-close their endpoint instead). nullptr and
  // non-pointer statuses are handled.
  absl::Status Wait(ucs_status_ptr_t request, absl::Time deadline, absl::string_view what);
  // Progresses until `request` (a pointer from a *_nbx call) completes or `deadline` passes.
  // Returns its status, or UCS_INPROGRESS on timeout. The request stays the caller's to free.
  ucs_status_t Poll(void* request, absl::Time deadline);

 private:
  UcxWorker() = default;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
};

// UCX-registered memory. Allocate() lets UCX allocate (shared-memory transports can then map
// it in peers, making put/get truly one-sided); Register() maps existing memory.
class MemoryRegion {
 public:
  static absl::StatusOr<std::unique_ptr<MemoryRegion>> Allocate(UcxContext* context, size_t bytes);
  static absl::StatusOr<std::unique_ptr<MemoryRegion>> Register(UcxContext* context, void* address,
                                                                size_t bytes);
  ~MemoryRegion();
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;

  uint8_t* data() const { return static_cast<uint8_t*>(address_); }
  size_t size() const { return size_; }
  // The packed remote key peers need for one-sided access.
  absl::StatusOr<std::string> PackRkey() const;

 private:
  MemoryRegion() = default;
  ucp_context_h context_ = nullptr;
  ucp_mem_h memh_ = nullptr;
  void* address_ = nullptr;
  size_t size_ = 0;
};

// One local<->remote transfer of a batch.
struct RmaOp {
  void* local = nullptr;
  uint64_t remote_address = 0;
  size_t size = 0;
};

class Endpoint;

// A peer's remote key unpacked on one endpoint (it works only there).
class RemoteKey {
 public:
  ~RemoteKey();
  RemoteKey(const RemoteKey&) = delete;
  RemoteKey& operator=(const RemoteKey&) = delete;
  ucp_rkey_h handle() const { return rkey_; }

  // A local pointer to `remote_address` when the peer's memory is mapped into this process
  // (shared-memory transports, ucp_rkey_ptr); nullptr otherwise. Valid while this key lives.
  void* LocalPointer(uint64_t remote_address) const;

 private:
  friend class Endpoint;
  RemoteKey() = default;
  ucp_rkey_h rkey_ = nullptr;
};

// A connection to a peer worker. Not thread-safe: used under the worker's serialization.
class Endpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Endpoint>> Connect(UcxWorker* worker,
                                                           const std::string& peer_address);
  // Closes (flushing when healthy, forcibly after an error), bounded by a short deadline.
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  absl::StatusOr<std::unique_ptr<RemoteKey>> UnpackRkey(const std::string& packed);

  // Issues every op as a one-sided put (or get), then one ucp_ep_flush_nbx, and waits until all
  // are complete at the target (put) or locally (get), at most until `deadline`. On failure or
  // timeout the endpoint is force-closed before the call returns (ucp_ep_close_nbx with
  // UCP_EP_CLOSE_FLAG_FORCE completes every outstanding request, cancelled): no byte of the
  // batch moves to or from the caller's buffers after it returns, so they may be reused, and
  // the endpoint is failed for good (docs/store-protocol.md, "Failure model"). A peer that
  // stops answering (SIGSTOP) costs at most `deadline` plus a few milliseconds.
  absl::Status PutBatch(const RemoteKey& rkey, absl::Span<const RmaOp> ops, absl::Time deadline);
  absl::Status GetBatch(const RemoteKey& rkey, absl::Span<const RmaOp> ops, absl::Time deadline);

  // ucp_ep_print_info's text: the transports each lane uses (for logs and tests).
  std::string Describe() const;

  // Marks the endpoint failed (e.g. the peer is known to have restarted): later operations
  // fail at once and the destructor closes it forcibly, without waiting for a dead peer.
  void MarkFailed() { failed_.store(true, std::memory_order_relaxed); }

  // True once the peer failed (error callback) or an operation on it failed.
  bool failed() const { return failed_.load(std::memory_order_relaxed); }

 private:
  Endpoint() = default;
  absl::Status RunBatch(bool put, const RemoteKey& rkey, absl::Span<const RmaOp> ops,
                        absl::Time deadline);
  // Closes the endpoint without waiting for the peer; outstanding requests complete cancelled.
  void ForceClose();
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);

  UcxWorker* worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  std::atomic<bool> failed_{false};
};

}  // namespace kvtier::transport

#endif  // KVTIER_TRANSPORT_UCX_H_
