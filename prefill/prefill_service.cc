#include "prefill/prefill_service.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "engine/generator.h"
#include "worker/request_checks.h"
#include "worker/server_util.h"

namespace kvtier::prefill {

PrefillService::PrefillService(engine::Engine* engine, worker::KvTier* tier,
                               worker::WorkerOptions options)
    : engine_(engine),
      tier_(tier),
      metrics_(tier->metrics()),
      options_(std::move(options)),
      free_pages_(engine->num_pages()),
      allocator_(engine->num_pages()) {}

void PrefillService::SetFreePages(int free_pages) {
  free_pages_.store(free_pages);
  const int total = engine_->num_pages();
  metrics_->kv_cache_usage_perc->Set(total == 0 ? 0.0
                                                : 1.0 - static_cast<double>(free_pages) / total);
}

absl::StatusOr<PrefillResult> PrefillService::Run(absl::Span<const TokenId> prompt,
                                                  absl::string_view tenant,
                                                  absl::string_view request_id) {
  const absl::Time received = absl::Now();
  absl::StatusOr<PrefillResult> r = Compute(prompt, tenant, request_id, received);
  metrics_->e2e_request_latency->Observe(absl::ToDoubleSeconds(absl::Now() - received));
  metrics_->Finished(r.ok() ? worker::FinishReason::kStop : worker::FinishReason::kError);
  if (r.ok()) {
    metrics_->PromptTokens(worker::TokenSource::kStore, r->cached_tokens);
    metrics_->PromptTokens(worker::TokenSource::kComputed, r->computed_tokens);
  }
  return r;
}

absl::StatusOr<PrefillResult> PrefillService::Compute(absl::Span<const TokenId> prompt,
                                                      absl::string_view tenant,
                                                      absl::string_view request_id,
                                                      absl::Time received) {
  const int b = engine_->kv_layout().block_tokens;
  PrefillResult r;
  r.prompt_tokens = static_cast<uint32_t>(prompt.size());
  const int full = static_cast<int>(prompt.size()) / b;
  if (full == 0) return r;  // no full block: all of it is the decode worker's tail
  if (!tier_->has_store()) {
    spdlog::debug("no store configured: nothing to prefill");
    return r;
  }
  if (full > engine_->num_pages()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the prompt's ", full, " full blocks do not fit in this worker's KV cache (",
                     engine_->num_pages(), " pages)"));
  }
  metrics_->num_requests_waiting->Add(1);
  absl::MutexLock lock(&engine_mu_);
  metrics_->num_requests_waiting->Add(-1);
  // Holding the engine: queued until now, running until this returns.
  struct Running {
    worker::WorkerMetrics* m;
    absl::Time admitted = absl::Now();
    Running(worker::WorkerMetrics* metrics, absl::Time received) : m(metrics) {
      m->request_queue_time->Observe(absl::ToDoubleSeconds(admitted - received));
      m->num_requests_running->Add(1);
    }
    ~Running() {
      m->num_requests_running->Add(-1);
      m->request_prefill_time->Observe(absl::ToDoubleSeconds(absl::Now() - admitted));
    }
  } running(metrics_, received);
  // Queued behind another request while the worker began to stop: not started, refused.
  if (stopping_.load()) return absl::UnavailableError("the prefill worker is shutting down");
  const absl::Span<const int32_t> blocks = prompt.first(static_cast<size_t>(full) * b);
  const std::vector<BlockKey> keys = tier_->Keys(blocks, tenant);
  const size_t present = tier_->Lookup(keys);
  if (present == keys.size()) {
    r.cached_tokens = static_cast<uint32_t>(full * b);
    return r;
  }
  absl::StatusOr<std::vector<int32_t>> pages = allocator_.Allocate(full);
  if (!pages.ok()) return pages.status();  // cannot happen: one request at a time
  SetFreePages(allocator_.free_pages());
  // The blocks may have gone between Lookup and Get: fetched can be shorter than present.
  const size_t fetched =
      present > 0 ? tier_->FetchPrefix(absl::MakeConstSpan(keys).first(present), *pages) : 0;
  engine::Sequence seq;
  seq.tokens.assign(blocks.begin(), blocks.end());
  seq.pages = *pages;
  seq.num_computed = static_cast<int32_t>(fetched) * b;
  logits_.resize(engine_->config().vocab_size);
  const absl::Time t0 = absl::Now();
  absl::Status st = engine::Prefill(*engine_, allocator_, seq, absl::MakeSpan(logits_));
  r.compute_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  if (st.ok()) {
    const absl::Span<const BlockKey> computed = absl::MakeConstSpan(keys).subspan(fetched);
    const PutResult put = tier_->StoreBlocks(
        computed, ChainParents(fetched > 0 ? keys[fetched - 1] : tier_->KeyRoot(tenant), computed),
        absl::MakeConstSpan(*pages).subspan(fetched));
    if (put.skipped > 0) {
      spdlog::info(
          "req={} prefill: {} of {} computed blocks not stored (store full or unreachable)",
          std::string(request_id), put.skipped, keys.size() - fetched);
    }
    r.stored_blocks = put.stored;
  }
  engine::ReleasePages(allocator_, seq);
  SetFreePages(allocator_.free_pages());
  if (!st.ok()) return absl::InternalError(absl::StrCat("prefill: ", st.message()));
  r.cached_tokens = static_cast<uint32_t>(fetched * b);
  r.computed_tokens = static_cast<uint32_t>((full - fetched) * b);
  return r;
}

grpc::Status PrefillService::Prefill(grpc::ServerContext*, const v1::PrefillRequest* request,
                                     v1::PrefillResponse* response) {
  const absl::Span<const TokenId> prompt(request->tokens().data(), request->tokens().size());
  if (absl::Status st = worker::CheckPrompt(prompt, engine_->config()); !st.ok()) {
    return ToGrpc(st);
  }
  if (absl::Status st = worker::CheckRequestId(request->request_id()); !st.ok()) {
    return ToGrpc(st);
  }
  active_.fetch_add(1);
  absl::StatusOr<PrefillResult> r = Run(prompt, request->tenant(), request->request_id());
  active_.fetch_sub(1);
  if (!r.ok()) {
    spdlog::debug("req={} prefill failed: {}", request->request_id(), r.status().ToString());
    return ToGrpc(r.status());
  }
  spdlog::debug("req={} prefill: {} tokens, {} cached, {} computed in {:.1f} ms, {} blocks stored",
                request->request_id(), r->prompt_tokens, r->cached_tokens, r->computed_tokens,
                r->compute_ms, r->stored_blocks);
  response->set_prompt_tokens(r->prompt_tokens);
  response->set_cached_tokens(r->cached_tokens);
  response->set_computed_tokens(r->computed_tokens);
  response->set_stored_blocks(r->stored_blocks);
  response->set_compute_ms(r->compute_ms);
  return grpc::Status::OK;
}

grpc::Status PrefillService::GetWorkerInfo(grpc::ServerContext*, const v1::WorkerInfoRequest*,
                                           v1::WorkerInfo* info) {
  worker::FillWorkerInfo("prefill", options_, *engine_, *tier_, info);
  info->set_active_requests(static_cast<uint32_t>(active_.load()));
  info->set_free_pages(static_cast<uint32_t>(free_pages_.load()));
  return grpc::Status::OK;
}

}  // namespace kvtier::prefill
