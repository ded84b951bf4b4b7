#include "router/fake_worker_client.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvtier::router {
namespace {

// How long a held-open stream waits to be cancelled before it fails the test's call.
constexpr absl::Duration kHoldOpenLimit = absl::Seconds(10);

absl::Status CancelledAll() { return absl::CancelledError("CancelAll"); }

}  // namespace

// Plays one GenerateScript; all its state is under the client's mutex.
class FakeWorkerClient::Stream : public GenerateStream {
 public:
  Stream(FakeWorkerClient* client, GenerateScript script)
      : client_(client), script_(std::move(script)) {
    absl::MutexLock lock(&client_->mu_);
    client_->streams_.push_back(this);
  }
  ~Stream() override {
    absl::MutexLock lock(&client_->mu_);
    auto& s = client_->streams_;
    s.erase(std::find(s.begin(), s.end(), this));
  }

  bool Read(v1::GenerateResponse* message) override {
    absl::MutexLock lock(&client_->mu_);
    if (cancelled_) return false;
    if (next_ < script_.messages.size()) {
      *message = script_.messages[next_++];
      return true;
    }
    if (script_.hold_open) {
      auto cancelled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(client_->mu_) { return cancelled_; };
      timed_out_ = !client_->mu_.AwaitWithTimeout(absl::Condition(&cancelled), kHoldOpenLimit);
    }
    return false;
  }

  void Cancel() override {
    absl::MutexLock lock(&client_->mu_);
    CancelLocked();
  }

  absl::Status Finish() override {
    absl::MutexLock lock(&client_->mu_);
    if (cancelled_) return absl::CancelledError("the stream was cancelled");
    if (timed_out_) return absl::DeadlineExceededError("held open and never cancelled");
    return script_.end;
  }

  void CancelLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(client_->mu_) {
    if (cancelled_) return;
    cancelled_ = true;
    if (next_ < script_.messages.size() || script_.hold_open) ++client_->cancelled_streams_;
  }

 private:
  FakeWorkerClient* const client_;
  const GenerateScript script_;
  size_t next_ ABSL_GUARDED_BY(client_->mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(client_->mu_) = false;
  bool timed_out_ ABSL_GUARDED_BY(client_->mu_) = false;
};

void FakeWorkerClient::set_info(v1::WorkerInfo info) {
  absl::MutexLock lock(&mu_);
  info_ = std::move(info);
}

void FakeWorkerClient::set_up(bool up) {
  absl::MutexLock lock(&mu_);
  up_ = up;
}

void FakeWorkerClient::set_prefill_response(absl::StatusOr<v1::PrefillResponse> response) {
  absl::MutexLock lock(&mu_);
  prefill_response_ = std::move(response);
}

void FakeWorkerClient::AddGenerate(GenerateScript script) {
  absl::MutexLock lock(&mu_);
  scripts_.push_back(std::move(script));
}

std::vector<v1::GenerateRequest> FakeWorkerClient::generate_requests() const {
  absl::MutexLock lock(&mu_);
  return generate_requests_;
}

std::vector<v1::PrefillRequest> FakeWorkerClient::prefill_requests() const {
  absl::MutexLock lock(&mu_);
  return prefill_requests_;
}

int FakeWorkerClient::cancelled_streams() const {
  absl::MutexLock lock(&mu_);
  return cancelled_streams_;
}

int FakeWorkerClient::open_streams() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(streams_.size());
}

absl::StatusOr<v1::WorkerInfo> FakeWorkerClient::GetWorkerInfo(const v1::WorkerInfoRequest&,
                                                               absl::Duration) {
  absl::MutexLock lock(&mu_);
  if (cancelled_all_) return CancelledAll();
  if (!up_) return absl::UnavailableError(address_ + " is down");
  return info_;
}

absl::StatusOr<v1::PrefillResponse> FakeWorkerClient::Prefill(const v1::PrefillRequest& request,
                                                              absl::Duration) {
  absl::MutexLock lock(&mu_);
  if (cancelled_all_) return CancelledAll();
  prefill_requests_.push_back(request);
  return prefill_response_;
}

absl::StatusOr<std::unique_ptr<GenerateStream>> FakeWorkerClient::Generate(
    const v1::GenerateRequest& request, absl::Duration) {
  GenerateScript script;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_all_) return CancelledAll();
    generate_requests_.push_back(request);
    if (scripts_.empty()) return absl::FailedPreconditionError("no GenerateScript queued");
    script = std::move(scripts_.front());
    scripts_.pop_front();
  }
  return std::make_unique<Stream>(this, std::move(script));
}

void FakeWorkerClient::CancelAll() {
  absl::MutexLock lock(&mu_);
  cancelled_all_ = true;
  for (Stream* s : streams_) s->CancelLocked();
}

v1::WorkerInfo WorkerInfoFor(WorkerRole role, const NamespaceId& ns, uint32_t block_tokens,
                             uint32_t max_context) {
  v1::WorkerInfo info;
  info.set_role(RoleName(role));
  info.set_namespace_id(std::string(KeyBytes(ns)));
  info.set_block_tokens(block_tokens);
  info.set_max_context(max_context);
  return info;
}

FakeFleet::FakeFleet(const RouterOptions& options, int num_decode, int num_prefill,
                     const NamespaceId& ns, uint32_t block_tokens, uint32_t max_context,
                     MetricsRegistry* metrics) {
  std::vector<std::unique_ptr<WorkerClient>> clients[2];
  for (WorkerRole role : {WorkerRole::kDecode, WorkerRole::kPrefill}) {
    const bool is_decode = role == WorkerRole::kDecode;
    for (int i = 0; i < (is_decode ? num_decode : num_prefill); ++i) {
      auto fake = std::make_unique<FakeWorkerClient>(absl::StrCat(RoleName(role), "-", i));
      fake->set_info(WorkerInfoFor(role, ns, block_tokens, max_context));
      (is_decode ? decode : prefill).push_back(fake.get());
      clients[is_decode ? 0 : 1].push_back(std::move(fake));
    }
  }
  pool =
      std::make_unique<WorkerPool>(options, std::move(clients[0]), std::move(clients[1]), metrics);
}

}  // namespace kvtier::router
