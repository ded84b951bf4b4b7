#include "engine/engine.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/backends.h"

namespace kvtier::engine {

absl::StatusOr<BackendKind> ParseBackend(absl::string_view name) {
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("unknown backend '", name, "' (cpu | cuda)"));
}

KvLayout MakeKvLayout(const ModelConfig& config, int block_tokens, const std::string& dtype_name) {
  KvLayout layout;
  layout.num_layers = config.num_layers;
  layout.num_kv_heads = config.num_kv_heads;
  layout.head_dim = config.head_dim;
  layout.block_tokens = block_tokens;
  layout.dtype_name = dtype_name;
  layout.dtype_bytes = dtype_name == "fp32" ? 4 : 2;
  return layout;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const std::string& model_dir,
                                                       const EngineOptions& options) {
  if (options.block_tokens <= 0 || options.max_batch_tokens <= 0 || options.max_batch_seqs <= 0 ||
      options.kv_cache_bytes <= 0 || options.num_threads < 0) {
    return absl::InvalidArgumentError(
        "engine options: block_tokens, max_batch_tokens, max_batch_seqs and kv_cache_bytes "
        "must be positive, num_threads non-negative");
  }
  KVTIER_ASSIGN_OR_RETURN(ModelWeights weights, ModelWeights::Load(model_dir));
  switch (options.backend) {
    case BackendKind::kCpu:
      return CreateCpuEngine(std::move(weights), options);
    case BackendKind::kCuda:
      return CreateCudaEngine(std::move(weights), options);
  }
  return absl::InvalidArgumentError("unknown backend");
}

Engine::Engine(ModelWeights weights, const EngineOptions& options, KvLayout layout, int num_pages)
    : weights_(std::move(weights)),
      options_(options),
      layout_(std::move(layout)),
      num_pages_(num_pages) {}

NamespaceParams Engine::namespace_params() const {
  if (!fingerprint_) fingerprint_ = weights_.Fingerprint();
  NamespaceParams params;
  params.model_fingerprint = *fingerprint_;
  params.kv_dtype = layout_.dtype_name;
  params.block_tokens = static_cast<uint32_t>(layout_.block_tokens);
  params.layout_version = 1;
  return params;
}

absl::Status Engine::ValidateBatch(absl::Span<const SeqInput> batch) const {
  if (batch.empty()) return absl::InvalidArgumentError("forward: empty batch");
  if (static_cast<int>(batch.size()) > options_.max_batch_seqs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forward: ", batch.size(), " sequences, max_batch_seqs is ", options_.max_batch_seqs));
  }
  const ModelConfig& cfg = config();
  const int B = layout_.block_tokens;
  int64_t total = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SeqInput& s = batch[i];
    if (s.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("forward: sequence ", i, " has no tokens"));
    }
    if (s.start_pos < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: sequence ", i, " has negative start_pos"));
    }
    total += static_cast<int64_t>(s.tokens.size());
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    if (end > cfg.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("forward: sequence ", i, " reaches position ",
                                                     end, ", past max_position_embeddings ",
                                                     cfg.max_position_embeddings));
    }
    if (cfg.sliding_window > 0 && end > cfg.sliding_window) {
      return absl::InvalidArgumentError(absl::StrCat(
          "forward: sequence ", i, " reaches position ", end, ", past the sliding window ",
          cfg.sliding_window, " (sliding-window attention is not implemented)"));
    }
    if (static_cast<int64_t>(s.pages.size()) * B < end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "forward: sequence ", i, " has ", s.pages.size(), " pages for ", end, " positions"));
    }
    const size_t used_pages = (end + B - 1) / B;
    for (size_t p = 0; p < used_pages; ++p) {
      if (s.pages[p] < 0 || s.pages[p] >= num_pages_) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward: sequence ", i, " names page ", s.pages[p], " of ", num_pages_));
      }
    }
    for (TokenId t : s.tokens) {
      if (t < 0 || t >= cfg.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward: token id ", t, " outside the vocabulary of ", cfg.vocab_size));
      }
    }
  }
  if (total > options_.max_batch_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forward: ", total, " new tokens, max_batch_tokens is ", options_.max_batch_tokens));
  }
  return absl::OkStatus();
}

absl::Status Engine::Forward(absl::Span<const SeqInput> batch, absl::Span<float> logits) {
  KVTIER_RETURN_IF_ERROR(ValidateBatch(batch));
  if (logits.size() < batch.size() * static_cast<size_t>(config().vocab_size)) {
    return absl::InvalidArgumentError("forward: logits buffer smaller than batch * vocab_size");
  }
  return DoForward(batch, logits.data(), nullptr);
}

absl::Status Engine::ForwardGreedy(absl::Span<const SeqInput> batch,
                                   absl::Span<TokenId> next_tokens) {
  KVTIER_RETURN_IF_ERROR(ValidateBatch(batch));
  if (next_tokens.size() < batch.size()) {
    return absl::InvalidArgumentError("forward: next_tokens buffer smaller than the batch");
  }
  return DoForward(batch, nullptr, next_tokens.data());
}

absl::Status Engine::ValidatePages(absl::Span<const int32_t> pages, size_t buffer_bytes) const {
  if (buffer_bytes != pages.size() * layout_.BlockBytes()) {
    return absl::InvalidArgumentError(absl::StrCat("pages: buffer of ", buffer_bytes, " bytes for ",
                                                   pages.size(), " blocks of ",
                                                   layout_.BlockBytes()));
  }
  for (int32_t p : pages) {
    if (p < 0 || p >= num_pages_) {
      return absl::InvalidArgumentError(absl::StrCat("pages: page ", p, " of ", num_pages_));
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::ExportPages(absl::Span<const int32_t> pages, absl::Span<uint8_t> dst) {
  KVTIER_RETURN_IF_ERROR(ValidatePages(pages, dst.size()));
  if (pages.empty()) return absl::OkStatus();
  return DoExportPages(pages, dst.data());
}

absl::Status Engine::ImportPages(absl::Span<const int32_t> pages, absl::Span<const uint8_t> src) {
  KVTIER_RETURN_IF_ERROR(ValidatePages(pages, src.size()));
  if (pages.empty()) return absl::OkStatus();
  std::vector<const uint8_t*> blocks(pages.size());
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = src.data() + i * layout_.BlockBytes();
  return DoImportBlocks(pages, blocks.data());
}

absl::Status Engine::ImportBlocks(absl::Span<const int32_t> pages,
                                  absl::Span<const uint8_t* const> blocks) {
  if (blocks.size() != pages.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ImportBlocks: ", blocks.size(), " blocks for ", pages.size(), " pages"));
  }
  KVTIER_RETURN_IF_ERROR(ValidatePages(pages, pages.size() * layout_.BlockBytes()));
  for (const uint8_t* b : blocks) {
    if (b == nullptr) return absl::InvalidArgumentError("ImportBlocks: null block");
  }
  if (pages.empty()) return absl::OkStatus();
  return DoImportBlocks(pages, blocks.data());
}

absl::Status Engine::RegisterHostMemory(const void* /*base*/, size_t /*bytes*/) {
  return absl::OkStatus();
}

void Engine::UnregisterHostMemory(const void* /*base*/) {}

absl::StatusOr<HostBuffer> Engine::AllocateHostBuffer(size_t bytes) const {
  if (bytes == 0) return HostBuffer();
  constexpr size_t kAlign = 4096;
  void* p = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " host bytes"));
  }
  return HostBuffer(p, bytes, std::free);
}

}  // namespace kvtier::engine
