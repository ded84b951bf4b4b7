// The real WorkerClient (router/worker_client.h): the generated gRPC stubs of one worker over
// one channel that reconnects quickly after a worker restart. Every call has a deadline; the
// client keeps the ClientContext of every call in flight so that CancelAll (the router's stop)
// can cancel them.
//
// Owns its channel and stubs. Thread-safe; the GenerateStreams it returns must be destroyed
// before it.
#ifndef KVTIER_ROUTER_GRPC_WORKER_CLIENT_H_
#define KVTIER_ROUTER_GRPC_WORKER_CLIENT_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "kvtier/v1/worker.grpc.pb.h"
#include "router/worker_client.h"

namespace grpc {
class ClientContext;
class ChannelCredentials;
}  // namespace grpc

namespace kvtier::router {

class GrpcWorkerClient : public WorkerClient {
 public:
  // Creates the channel to the `role` worker at `address` (host:port); connects lazily.
  // `creds`: TLS and the service token, or plain text (common/tls.h, MakeChannelCredentials).
  GrpcWorkerClient(WorkerRole role, std::string address,
                   const std::shared_ptr<grpc::ChannelCredentials>& creds);
  ~GrpcWorkerClient() override;

  const std::string& address() const override { return address_; }
  absl::StatusOr<v1::WorkerInfo> GetWorkerInfo(const v1::WorkerInfoRequest& request,
                                               absl::Duration timeout) override;
  absl::StatusOr<v1::PrefillResponse> Prefill(const v1::PrefillRequest& request,
                                              absl::Duration timeout) override;
  absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(const v1::GenerateRequest& request,
                                                           absl::Duration timeout) override;
  void CancelAll() override;

 private:
  class Stream;

  // Counts `ctx` in flight (with its deadline set); false once CancelAll ran.
  bool Register(grpc::ClientContext* ctx, absl::Duration timeout);
  void Unregister(grpc::ClientContext* ctx);

  const WorkerRole role_;
  const std::string address_;
  std::unique_ptr<v1::DecodeWorker::Stub> decode_;    // decode workers
  std::unique_ptr<v1::PrefillWorker::Stub> prefill_;  // prefill workers

  absl::Mutex mu_;
  absl::flat_hash_set<grpc::ClientContext*> active_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_GRPC_WORKER_CLIENT_H_
