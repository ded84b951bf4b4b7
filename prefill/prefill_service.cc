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
      options_(std::move(options)),
      free_pages_(engine->num_pages()),
      allocator_(engine->num_pages()) {}

absl::StatusOr<PrefillResult> PrefillService::Run(absl::Span<const TokenId> prompt,
                                                  absl::string_view tenant) {
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
  absl::MutexLock lock(&engine_mu_);
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
  free_pages_.store(allocator_.free_pages());
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
      spdlog::info("prefill: {} of {} computed blocks not stored (store full or unreachable)",
                   put.skipped, keys.size() - fetched);
    }
    r.stored_blocks = put.stored;
  }
  engine::ReleasePages(allocator_, seq);
  free_pages_.store(allocator_.free_pages());
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
  active_.fetch_add(1);
  absl::StatusOr<PrefillResult> r = Run(prompt, request->tenant());
  active_.fetch_sub(1);
  if (!r.ok()) return ToGrpc(r.status());
  spdlog::debug("prefill '{}': {} tokens, {} cached, {} computed in {:.1f} ms, {} blocks stored",
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
