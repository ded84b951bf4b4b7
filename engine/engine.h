// The inference engine: a Llama-family transformer over a paged KV cache, with a CPU reference
// backend (fp32) and a CUDA backend (bf16). Knows nothing about the network (docs/architecture.md, "Layers").
//
// KV cache: `num_pages` pages of `block_tokens` tokens. Page p of layer l holds
// [K|V][kv_head][token][head_dim] (K after RoPE), so one page of all layers, taken layer by
// layer, is exactly a block payload (docs/architecture.md, "The path of a block"): ExportPages/ImportPages move whole blocks.
//
// An Engine is driven by one thread at a time (a worker's scheduler loop); it is not safe for
// concurrent calls. Pages are owned by the caller (see PageAllocator): the engine only reads
// and writes the pages a call names.
#ifndef KVTIER_ENGINE_ENGINE_H_
#define KVTIER_ENGINE_ENGINE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model_config.h"
#include "engine/weights.h"
#include "kvtier/block_key.h"
#include "kvtier/token.h"

namespace kvtier::engine {

// Shape of one KV page / one block payload.
struct KvLayout {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_tokens = 16;
  int dtype_bytes = 4;     // 4 (CPU, fp32) or 2 (CUDA, bf16)
  std::string dtype_name;  // "fp32" or "bf16": the kv_dtype of the namespace

  // One layer of one page: 2 * kv_heads * block_tokens * head_dim * dtype_bytes.
  size_t LayerBytes() const {
    return size_t{2} * num_kv_heads * block_tokens * head_dim * dtype_bytes;
  }
  // One block payload: all layers.
  size_t BlockBytes() const { return LayerBytes() * num_layers; }
  // Element index (not bytes) within a block payload of (layer, kv: 0=K 1=V, head, token, dim).
  size_t PayloadIndex(int layer, int kv, int head, int token, int dim) const {
    return ((((size_t(layer) * 2 + kv) * num_kv_heads + head) * block_tokens + token) * head_dim) +
           dim;
  }
};

// Host memory for block payloads, as the backend copies to and from it fastest (see
// Engine::AllocateHostBuffer). Move-only; frees itself. Safe to use from any thread.
class HostBuffer {
 public:
  using Deleter = void (*)(void*);
  HostBuffer() = default;
  HostBuffer(void* data, size_t size, Deleter deleter)
      : data_(static_cast<uint8_t*>(data), deleter), size_(size) {}
  HostBuffer(HostBuffer&& o) noexcept : data_(std::move(o.data_)), size_(o.size_) { o.size_ = 0; }
  HostBuffer& operator=(HostBuffer&& o) noexcept {
    data_ = std::move(o.data_);
    size_ = o.size_;
    o.size_ = 0;
    return *this;
  }

  uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }
  absl::Span<uint8_t> span() const { return {data_.get(), size_}; }

 private:
  std::unique_ptr<uint8_t, Deleter> data_{nullptr, nullptr};
  size_t size_ = 0;
};

enum class BackendKind { kCpu, kCuda };

// "cpu" / "cuda"; InvalidArgument otherwise.
absl::StatusOr<BackendKind> ParseBackend(absl::string_view name);

struct EngineOptions {
  // Default: kCpu.
  BackendKind backend = BackendKind::kCpu;
  // Tokens per page and per stored block. Default: 16.
  int block_tokens = 16;
  // Memory for the KV cache; num_pages = kv_cache_bytes / KvLayout::BlockBytes().
  // Default: 256 MiB.
  int64_t kv_cache_bytes = int64_t{256} << 20;
  // Most new tokens in one Forward call (longer prompts are prefilled in chunks).
  // Default: 2048.
  int max_batch_tokens = 2048;
  // Most sequences in one Forward call. Default: 256.
  int max_batch_seqs = 256;
  // CPU backend threads; 0 = all cores. Default: 0.
  int num_threads = 0;
  // CUDA backend: replay decode steps (every sequence one new token) from CUDA graphs.
  // Default: true.
  bool cuda_graphs = true;
  // CUDA device ordinal. Default: 0.
  int cuda_device = 0;
};

// One sequence's part of a Forward call.
struct SeqInput {
  // The new tokens, at positions start_pos, start_pos + 1, ...
  absl::Span<const TokenId> tokens;
  // Tokens of this sequence whose K/V is already in its pages (computed or imported).
  int32_t start_pos = 0;
  // The sequence's page table: page i holds positions [i*B, (i+1)*B). Must cover
  // start_pos + tokens.size() positions.
  absl::Span<const int32_t> pages;
};

class Engine {
 public:
  // Loads `model_dir` (config.json + safetensors) onto the chosen backend. Unimplemented for
  // kCuda in a build without CUDA or with no device.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const std::string& model_dir,
                                                        const EngineOptions& options);
  virtual ~Engine() = default;

  const ModelConfig& config() const { return weights_.config(); }
  const ModelWeights& weights() const { return weights_; }
  const EngineOptions& options() const { return options_; }
  const KvLayout& kv_layout() const { return layout_; }
  int num_pages() const { return num_pages_; }
  // Fingerprint (computed once, on first call), kv dtype, block_tokens, layout version 1.
  NamespaceParams namespace_params() const;

  // Runs the model over every sequence's new tokens, writes their K/V into the sequences'
  // pages, and stores the logits after each sequence's last new token in
  // logits[i * vocab_size, (i + 1) * vocab_size). InvalidArgument (and no page written) for an
  // empty or oversized batch, a sequence with no new tokens, positions past
  // max_position_embeddings or the sliding window, page ids out of range, a page table too
  // short, token ids out of the vocabulary, or logits.size() < batch.size() * vocab_size.
  absl::Status Forward(absl::Span<const SeqInput> batch, absl::Span<float> logits);
  // As Forward, but returns each sequence's argmax token (computed on the device for CUDA:
  // no logits leave it). Decode steps of the CUDA backend replay CUDA graphs.
  absl::Status ForwardGreedy(absl::Span<const SeqInput> batch, absl::Span<TokenId> next_tokens);

  // Copies pages to / from host memory as consecutive block payloads (the block payload layout,
  // kv_layout().BlockBytes() each). InvalidArgument for bad page ids or buffer sizes.
  absl::Status ExportPages(absl::Span<const int32_t> pages, absl::Span<uint8_t> dst);
  absl::Status ImportPages(absl::Span<const int32_t> pages, absl::Span<const uint8_t> src);
  // As ImportPages, with the block of pages[i] read from blocks[i] (BlockBytes() each), e.g.
  // straight from a same-host store's pool. InvalidArgument for bad page ids, a size mismatch
  // or a null block.
  absl::Status ImportBlocks(absl::Span<const int32_t> pages,
                            absl::Span<const uint8_t* const> blocks);

  // `bytes` of host memory that ExportPages/ImportPages move fastest: page-locked on the CUDA
  // backend (the copy engine reads and writes it directly, with no staging copy), 4 KiB-aligned
  // ordinary memory on the CPU backend. Any thread; the buffer may outlive the engine only on
  // the CPU backend.
  virtual absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) const;

  // Page-locks [base, base + bytes), host memory this process mapped (a same-host store's
  // pool), so that imports from it are one DMA with no staging copy (CUDA: cudaHostRegister).
  // A no-op on the CPU backend. Call UnregisterHostMemory(base) before the memory is unmapped.
  virtual absl::Status RegisterHostMemory(const void* base, size_t bytes);
  virtual void UnregisterHostMemory(const void* base);

 protected:
  Engine(ModelWeights weights, const EngineOptions& options, KvLayout layout, int num_pages);

  // Backends implement these; arguments are already validated.
  // `logits` is null for DoForwardGreedy-style calls and `next_tokens` null for Forward.
  virtual absl::Status DoForward(absl::Span<const SeqInput> batch, float* logits,
                                 TokenId* next_tokens) = 0;
  virtual absl::Status DoExportPages(absl::Span<const int32_t> pages, uint8_t* dst) = 0;
  // blocks[i] is the block of pages[i].
  virtual absl::Status DoImportBlocks(absl::Span<const int32_t> pages,
                                      const uint8_t* const* blocks) = 0;

 private:
  absl::Status ValidateBatch(absl::Span<const SeqInput> batch) const;
  absl::Status ValidatePages(absl::Span<const int32_t> pages, size_t buffer_bytes) const;

  ModelWeights weights_;
  EngineOptions options_;
  KvLayout layout_;
  int num_pages_;
  mutable std::optional<BlockKey> fingerprint_;
};

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_ENGINE_H_
