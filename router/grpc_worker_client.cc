#include "router/grpc_worker_client.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"

namespace kvtier::router {
namespace {

absl::Status Stopped() { return absl::CancelledError("router stopping"); }

absl::Status WrongRole(WorkerRole role, const char* call) {
  return absl::FailedPreconditionError(absl::StrCat(call, " on a ", RoleName(role), " worker"));
}

}  // namespace

// One Generate call: its context stays registered with the client until the stream is
// destroyed.
class GrpcWorkerClient::Stream : public GenerateStream {
 public:
  Stream(GrpcWorkerClient* client, std::unique_ptr<grpc::ClientContext> ctx,
         const v1::GenerateRequest& request)
      : client_(client),
        ctx_(std::move(ctx)),
        reader_(client->decode_->Generate(ctx_.get(), request)) {}

  ~Stream() override {
    if (!finished_) {
      ctx_->TryCancel();
      v1::GenerateResponse ignored;
      while (reader_->Read(&ignored)) {
      }
      reader_->Finish();
    }
    client_->Unregister(ctx_.get());
  }

  bool Read(v1::GenerateResponse* message) override { return reader_->Read(message); }
  void Cancel() override { ctx_->TryCancel(); }
  absl::Status Finish() override {
    finished_ = true;
    return FromGrpc(reader_->Finish());
  }

 private:
  GrpcWorkerClient* const client_;
  const std::unique_ptr<grpc::ClientContext> ctx_;
  const std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader_;
  bool finished_ = false;
};

GrpcWorkerClient::GrpcWorkerClient(WorkerRole role, std::string address,
                                   const std::shared_ptr<grpc::ChannelCredentials>& creds)
    : role_(role), address_(std::move(address)) {
  grpc::ChannelArguments args;
  // Reconnect quickly after a worker restart.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(address_, creds, args);
  if (role_ == WorkerRole::kDecode) {
    decode_ = v1::DecodeWorker::NewStub(channel);
  } else {
    prefill_ = v1::PrefillWorker::NewStub(channel);
  }
}

GrpcWorkerClient::~GrpcWorkerClient() = default;

bool GrpcWorkerClient::Register(grpc::ClientContext* ctx, absl::Duration timeout) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  active_.insert(ctx);
  return true;
}

void GrpcWorkerClient::Unregister(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&mu_);
  active_.erase(ctx);
}

void GrpcWorkerClient::CancelAll() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  for (grpc::ClientContext* ctx : active_) ctx->TryCancel();
}

absl::StatusOr<v1::WorkerInfo> GrpcWorkerClient::GetWorkerInfo(const v1::WorkerInfoRequest& request,
                                                               absl::Duration timeout) {
  grpc::ClientContext ctx;
  if (!Register(&ctx, timeout)) return Stopped();
  v1::WorkerInfo info;
  const grpc::Status st = role_ == WorkerRole::kDecode
                              ? decode_->GetWorkerInfo(&ctx, request, &info)
                              : prefill_->GetWorkerInfo(&ctx, request, &info);
  Unregister(&ctx);
  if (!st.ok()) return FromGrpc(st);
  return info;
}

absl::StatusOr<v1::PrefillResponse> GrpcWorkerClient::Prefill(const v1::PrefillRequest& request,
                                                              absl::Duration timeout) {
  if (role_ != WorkerRole::kPrefill) return WrongRole(role_, "Prefill");
  grpc::ClientContext ctx;
  if (!Register(&ctx, timeout)) return Stopped();
  v1::PrefillResponse response;
  const grpc::Status st = prefill_->Prefill(&ctx, request, &response);
  Unregister(&ctx);
  if (!st.ok()) return FromGrpc(st);
  return response;
}

absl::StatusOr<std::unique_ptr<GenerateStream>> GrpcWorkerClient::Generate(
    const v1::GenerateRequest& request, absl::Duration timeout) {
  if (role_ != WorkerRole::kDecode) return WrongRole(role_, "Generate");
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!Register(ctx.get(), timeout)) return Stopped();
  return std::make_unique<Stream>(this, std::move(ctx), request);
}

}  // namespace kvtier::router
