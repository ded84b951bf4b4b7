// A scripted WorkerClient (router/worker_client.h) for the unit tests of WorkerPool and
// Generation: GetWorkerInfo answers a settable WorkerInfo (or Unavailable while "down"), Prefill
// answers a settable response, and each Generate plays the next queued GenerateScript. It records
// the requests it got and the streams that were cancelled. FakeFleet builds a WorkerPool over
// such workers. Test-only.
//
// Thread-safe: the test thread scripts and inspects the fakes while request threads call them;
// their streams must be destroyed before them.
#ifndef KVTIER_ROUTER_FAKE_WORKER_CLIENT_H_
#define KVTIER_ROUTER_FAKE_WORKER_CLIENT_H_

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "kvtier/block_key.h"
#include "router/router_options.h"
#include "router/worker_client.h"
#include "router/worker_pool.h"

namespace kvtier::router {

// What one Generate call does: send `messages`, then end with `end` (or, with `hold_open`, wait
// until it is cancelled and end with Cancelled).
struct GenerateScript {
  std::vector<v1::GenerateResponse> messages;
  absl::Status end;
  bool hold_open = false;
};

class FakeWorkerClient : public WorkerClient {
 public:
  explicit FakeWorkerClient(std::string address) : address_(std::move(address)) {}

  // Scripting.
  void set_info(v1::WorkerInfo info);
  void set_up(bool up);  // false: GetWorkerInfo fails with Unavailable
  void set_prefill_response(absl::StatusOr<v1::PrefillResponse> response);  // default: {}
  void AddGenerate(GenerateScript script);  // played by the next Generate call

  // Inspection.
  std::vector<v1::GenerateRequest> generate_requests() const;
  std::vector<v1::PrefillRequest> prefill_requests() const;
  int cancelled_streams() const;  // streams cancelled before their script ended
  int open_streams() const;       // streams created and not yet destroyed

  const std::string& address() const override { return address_; }
  // The scripted info, whatever the request asks (its `blocks`, if a test sets them, is a full
  // report every time).
  absl::StatusOr<v1::WorkerInfo> GetWorkerInfo(const v1::WorkerInfoRequest& request,
                                               absl::Duration timeout) override;
  absl::StatusOr<v1::PrefillResponse> Prefill(const v1::PrefillRequest& request,
                                              absl::Duration timeout) override;
  absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(const v1::GenerateRequest& request,
                                                           absl::Duration timeout) override;
  void CancelAll() override;

 private:
  class Stream;

  const std::string address_;
  mutable absl::Mutex mu_;
  v1::WorkerInfo info_ ABSL_GUARDED_BY(mu_);
  bool up_ ABSL_GUARDED_BY(mu_) = true;
  bool cancelled_all_ ABSL_GUARDED_BY(mu_) = false;
  absl::StatusOr<v1::PrefillResponse> prefill_response_ ABSL_GUARDED_BY(mu_) =
      v1::PrefillResponse();
  std::deque<GenerateScript> scripts_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::GenerateRequest> generate_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::PrefillRequest> prefill_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<Stream*> streams_ ABSL_GUARDED_BY(mu_);
  int cancelled_streams_ ABSL_GUARDED_BY(mu_) = 0;
};

// A WorkerPool over `decode` + `prefill` FakeWorkerClients named "decode-<i>" / "prefill-<i>",
// all up and answering `WorkerInfoFor(role, ns, block_tokens, max_context)` (Refresh not called
// yet). The pool owns the fakes; the pointers stay valid for its life.
struct FakeFleet {
  FakeFleet(const RouterOptions& options, int decode, int prefill, const NamespaceId& ns,
            uint32_t block_tokens, uint32_t max_context, MetricsRegistry* metrics);

  std::vector<FakeWorkerClient*> decode;
  std::vector<FakeWorkerClient*> prefill;
  std::unique_ptr<WorkerPool> pool;
};

// A WorkerInfo as a `role` worker would answer it.
v1::WorkerInfo WorkerInfoFor(WorkerRole role, const NamespaceId& ns, uint32_t block_tokens,
                             uint32_t max_context);

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_FAKE_WORKER_CLIENT_H_
