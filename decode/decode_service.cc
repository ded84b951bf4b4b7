#include "decode/decode_service.h"

#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/request_checks.h"
#include "worker/server_util.h"

namespace kvtier::decode {
namespace {

// How often a handler waiting for tokens checks whether its client is gone.
constexpr absl::Duration kPollInterval = absl::Milliseconds(50);

}  // namespace

DecodeService::DecodeService(Scheduler* scheduler, const engine::Engine* engine,
                             const worker::KvTier* tier, worker::WorkerOptions options)
    : scheduler_(scheduler), engine_(engine), tier_(tier), options_(std::move(options)) {}

absl::StatusOr<GenerateSpec> DecodeService::ToSpec(const v1::GenerateRequest& r) const {
  GenerateSpec spec;
  KVTIER_RETURN_IF_ERROR(worker::CheckRequestId(r.request_id()));
  spec.request_id = r.request_id();
  const absl::Span<const TokenId> prompt(r.tokens().data(), r.tokens().size());
  KVTIER_RETURN_IF_ERROR(worker::CheckPrompt(prompt, engine_->config()));
  spec.prompt.assign(prompt.begin(), prompt.end());
  const v1::SamplingParams& s = r.sampling();
  spec.sampling.temperature = s.temperature();
  spec.sampling.top_k = s.top_k();
  spec.sampling.top_p = s.top_p() == 0.0f ? 1.0f : s.top_p();
  spec.sampling.seed = s.seed();
  spec.sampling.max_tokens = s.max_tokens() == 0
                                 ? options_.default_max_tokens
                                 : static_cast<int>(std::min<uint32_t>(s.max_tokens(), 1u << 30));
  spec.sampling.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  spec.use_cache = r.use_cache();
  spec.tenant = r.tenant();
  spec.n = r.n() == 0 ? 1 : static_cast<int>(std::min<uint32_t>(r.n(), 1u << 20));
  return spec;
}

grpc::Status DecodeService::Generate(grpc::ServerContext* context,
                                     const v1::GenerateRequest* request,
                                     grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (draining_.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the decode worker is draining");
  }
  absl::StatusOr<GenerateSpec> spec = ToSpec(*request);
  if (!spec.ok()) return ToGrpc(spec.status());
  absl::StatusOr<std::shared_ptr<GenerationStream>> stream = scheduler_->Submit(std::move(*spec));
  if (!stream.ok()) return ToGrpc(stream.status());
  std::vector<StreamEvent> events;
  bool more = true;
  while (more) {
    if (context->IsCancelled()) {
      (*stream)->Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled by the client");
    }
    events.clear();
    more = (*stream)->Next(&events, kPollInterval);
    for (const StreamEvent& e : events) {
      v1::GenerateResponse resp;
      resp.set_index(static_cast<uint32_t>(e.index));
      resp.mutable_tokens()->Add(e.tokens.begin(), e.tokens.end());
      if (e.first) {
        resp.set_prompt_tokens(e.prompt_tokens);
        resp.set_cached_tokens(e.cached_tokens);
        v1::Timing* t = resp.mutable_timing();
        t->set_queue_ms(e.timing.queue_ms);
        t->set_fetch_ms(e.timing.fetch_ms);
        t->set_compute_ms(e.timing.compute_ms);
        t->set_first_step_ms(e.timing.first_step_ms);
        t->set_first_tier_tokens(e.timing.first_tier_tokens);
        t->set_store_tokens(e.timing.store_tokens);
      }
      resp.set_finish_reason(e.finish_reason);
      if (!writer->Write(resp)) {
        (*stream)->Cancel();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
  }
  return ToGrpc((*stream)->status());
}

grpc::Status DecodeService::GetWorkerInfo(grpc::ServerContext*,
                                          const v1::WorkerInfoRequest* request,
                                          v1::WorkerInfo* info) {
  if (request->want_blocks()) {
    scheduler_->block_events().Report(request->blocks_epoch(), request->blocks_since(),
                                      info->mutable_blocks());
  }
  worker::FillWorkerInfo("decode", options_, *engine_, *tier_, info);
  const Scheduler::Stats s = scheduler_->stats();
  info->set_active_requests(static_cast<uint32_t>(s.active_requests));
  // Pages a new request can get: free ones plus cached blocks nobody uses (evictable).
  info->set_free_pages(static_cast<uint32_t>(s.available_pages));
  info->set_draining(draining_.load());
  return grpc::Status::OK;
}

int DecodeService::Drain(absl::Duration timeout) {
  draining_.store(true);
  const absl::Time deadline = absl::Now() + timeout;
  // A Generate that passed the check just before it submits soon: it is waited for too.
  while (scheduler_->stats().active_requests > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  return scheduler_->stats().active_requests;
}

}  // namespace kvtier::decode
