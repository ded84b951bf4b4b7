// What the router needs of one prefill or decode worker (proto/kvtier/v1/worker.proto), as an
// interface so that the layers above it (router/worker_pool.h, router/generation.h) can be tested
// without processes: GrpcWorkerClient (router/grpc_worker_client.h) is the real one, and
// FakeWorkerClient (router/fake_worker_client.h) stands in for it in unit tests.
//
// Errors are absl::Status with the worker's gRPC code and message. A client is owned by the
// WorkerPool; a GenerateStream by the request that opened it and must not outlive its client.
// Every method of WorkerClient may be called from any thread; a GenerateStream is read by one
// thread, and its Cancel may be called from any thread.
#ifndef KVTIER_ROUTER_WORKER_CLIENT_H_
#define KVTIER_ROUTER_WORKER_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtier/v1/worker.pb.h"

namespace kvtier::router {

enum class WorkerRole { kDecode, kPrefill };

// "decode" or "prefill".
inline const char* RoleName(WorkerRole role) {
  return role == WorkerRole::kDecode ? "decode" : "prefill";
}

// The messages of one Generate call, read one by one.
class GenerateStream {
 public:
  virtual ~GenerateStream() = default;
  // Blocks for the next message; false once the stream has ended (then call Finish).
  virtual bool Read(v1::GenerateResponse* message) = 0;
  // Cancels the call: the worker drops the request and Read soon returns false. Thread-safe.
  virtual void Cancel() = 0;
  // After Read returned false: how the call ended (Cancelled after Cancel).
  virtual absl::Status Finish() = 0;
};

class WorkerClient {
 public:
  virtual ~WorkerClient() = default;

  // The worker's host:port (for logs and metric labels).
  virtual const std::string& address() const = 0;

  virtual absl::StatusOr<v1::WorkerInfo> GetWorkerInfo(const v1::WorkerInfoRequest& request,
                                                       absl::Duration timeout) = 0;
  // Prefill workers only.
  virtual absl::StatusOr<v1::PrefillResponse> Prefill(const v1::PrefillRequest& request,
                                                      absl::Duration timeout) = 0;
  // Decode workers only. The stream's call ends with DeadlineExceeded after `timeout`.
  virtual absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(
      const v1::GenerateRequest& request, absl::Duration timeout) = 0;

  // Cancels every call in flight; every later call fails with Cancelled. For the router's stop.
  virtual void CancelAll() = 0;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_WORKER_CLIENT_H_
