// The bf16 CUDA backend (CreateCudaEngine): weights and the paged KV cache in bf16 on one
// device, fp32 accumulation everywhere, an fp32 residual stream, cuBLAS GEMMs and the kernels
// of engine/cuda/ (elementwise, prefill and decode attention); decode steps replay CUDA graphs.
// docs/engine-cuda.md has the design.
//
// A CudaEngine is driven by one thread at a time (Engine's contract). It owns one stream; every
// call selects the engine's device, enqueues its work on that stream and synchronizes before
// returning, so host staging buffers are free again when a call returns.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/backends.h"
#include "engine/cuda/cuda_util.h"
#include "engine/cuda/decode_attention.cuh"
#include "engine/cuda/elementwise.cuh"
#include "engine/cuda/layout.cuh"
#include "engine/cuda/prefill_attention.cuh"
#include "engine/engine.h"
#include "engine/rope.h"
#include "engine/safetensors.h"

namespace kvtier::engine {
namespace {

using cuda::bf16;

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// Export/import move pages through two pinned staging halves of about this size.
constexpr size_t kStagingHalfBytes = size_t{16} << 20;
// Host-side weight conversion chunk (elements).
constexpr size_t kConvertChunk = size_t{1} << 22;

size_t AlignUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Offsets (bytes) of the per-step metadata arrays inside one buffer; the host fills a pinned
// copy and one cudaMemcpyAsync moves [0, CopyBytes(used page entries)) to the device. The page
// table comes last so that only its used part is copied.
struct MetaLayout {
  int rows = 0;
  int seqs = 0;
  int work = 0;
  int page_entries = 0;
  size_t tokens = 0;       // int32 [rows]
  size_t positions = 0;    // int32 [rows]
  size_t slots = 0;        // int32 [rows]: page * block_tokens + token in page
  size_t seq_info = 0;     // SeqInfo [seqs]
  size_t last_rows = 0;    // int32 [seqs]
  size_t decode_seqs = 0;  // int32 [seqs]
  size_t work_items = 0;   // PrefillWorkItem [work]
  size_t page_table = 0;   // int32 [page_entries]
  size_t total = 0;

  static MetaLayout Make(int rows, int seqs, int work, int page_entries) {
    MetaLayout l;
    l.rows = rows;
    l.seqs = seqs;
    l.work = work;
    l.page_entries = page_entries;
    size_t off = 0;
    auto take = [&off](size_t bytes) {
      const size_t at = off;
      off = AlignUp(off + bytes, 16);
      return at;
    };
    l.tokens = take(sizeof(int32_t) * rows);
    l.positions = take(sizeof(int32_t) * rows);
    l.slots = take(sizeof(int32_t) * rows);
    l.seq_info = take(sizeof(cuda::SeqInfo) * seqs);
    l.last_rows = take(sizeof(int32_t) * seqs);
    l.decode_seqs = take(sizeof(int32_t) * seqs);
    l.work_items = take(sizeof(cuda::PrefillWorkItem) * std::max(work, 1));
    l.page_table = take(sizeof(int32_t) * page_entries);
    l.total = off;
    return l;
  }
  size_t CopyBytes(int used_page_entries) const {
    return page_table + sizeof(int32_t) * used_page_entries;
  }
};

// The host-side shape of one step (everything else is read from the metadata on the device).
struct StepShape {
  int rows = 0;        // activation rows T
  int seqs = 0;        // sequences (logit rows)
  int num_work = 0;    // prefill attention work items
  int num_decode = 0;  // sequences on the decode attention kernel
  int splits = 1;      // decode splits
  bool argmax = false;
  size_t copy_bytes = 0;
};

class CudaEngine final : public Engine {
 public:
  CudaEngine(ModelWeights weights, const EngineOptions& options, KvLayout layout, int num_pages)
      : Engine(std::move(weights), options, std::move(layout), num_pages) {}
  ~CudaEngine() override {
    if (cudaSetDevice(device_) == cudaSuccess && stream_.get() != nullptr) {
      cudaStreamSynchronize(stream_.get());
    }
    // Members are destroyed after this body, on device_.
  }

  absl::Status Init();

 protected:
  absl::Status DoForward(absl::Span<const SeqInput> batch, float* logits,
                         TokenId* next_tokens) override;
  absl::Status DoExportPages(absl::Span<const int32_t> pages, uint8_t* dst) override;
  absl::Status DoImportBlocks(absl::Span<const int32_t> pages,
                              const uint8_t* const* blocks) override;
  absl::Status RegisterHostMemory(const void* base, size_t bytes) override;
  void UnregisterHostMemory(const void* base) override;
  absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) const override;

 private:
  struct LayerBuffers {
    DeviceBuffer w_qkv;      // bf16 [(H + 2 KV) * hd, hidden]
    DeviceBuffer b_qkv;      // fp32 [(H + 2 KV) * hd], Qwen2 only
    DeviceBuffer w_o;        // bf16 [hidden, H * hd]
    DeviceBuffer w_gate_up;  // bf16 [2 * inter, hidden]: gate rows, then up rows
    DeviceBuffer w_down;     // bf16 [hidden, inter]
    DeviceBuffer in_norm;    // fp32 [hidden]
    DeviceBuffer post_norm;  // fp32 [hidden]
  };

  absl::Status ValidateConfig() const;
  absl::Status UploadWeights();
  absl::Status AllocateWorkspaces();
  absl::StatusOr<StepShape> BuildStep(absl::Span<const SeqInput> batch, const MetaLayout& lay,
                                      int bucket, bool argmax);
  absl::Status EnqueueStep(const StepShape& shape, const MetaLayout& lay);
  absl::Status RunGraphStep(size_t bucket_index, const StepShape& shape);
  // c[rows, n] = x[rows, k] * w[n, k]^T (row-major), bf16 inputs, fp32 accumulation.
  absl::Status Gemm(const bf16* x, const bf16* w, void* c, cudaDataType_t c_type, int rows, int n,
                    int k);
  cuda::KvCacheView CacheView(int layer) const;
  // Index into buckets_ of the smallest bucket >= n.
  size_t BucketIndex(int n) const;

  int device_ = 0;
  int num_sms_ = 0;
  int max_pages_per_seq_ = 0;
  size_t layer_stride_bytes_ = 0;  // (num_pages + 1) * LayerBytes

  // Declared first: destroyed last.
  CudaStream stream_;
  CublasHandle cublas_;
  DeviceBuffer cublas_workspace_;

  // Weights.
  DeviceBuffer embed_;    // bf16 [vocab, hidden]
  DeviceBuffer lm_head_;  // bf16 [vocab, hidden]; empty when tied (embed_ is used)
  DeviceBuffer final_norm_;
  DeviceBuffer inv_freq_;  // fp32 [hd / 2]
  std::vector<LayerBuffers> layers_;

  // KV cache: [layer][page 0 .. num_pages][LayerBytes]; page num_pages is the scratch page
  // that padding rows of graph batches write into.
  DeviceBuffer kv_cache_;

  // Activations, sized for max_batch_tokens rows / max_batch_seqs sequences.
  DeviceBuffer residual_;     // fp32 [T, hidden]
  DeviceBuffer normed_;       // bf16 [T, hidden]
  DeviceBuffer big_;          // bf16 [T, max(qkv_dim, 2 * inter)]: qkv, then gate_up
  DeviceBuffer q_;            // bf16 [T, H * hd]
  DeviceBuffer attn_;         // bf16 [T, H * hd]
  DeviceBuffer delta_;        // bf16 [T, hidden]: o_proj and down_proj outputs
  DeviceBuffer act_;          // bf16 [T, inter]
  DeviceBuffer final_;        // bf16 [S, hidden]
  DeviceBuffer logits_;       // fp32 [S, vocab]
  DeviceBuffer next_tokens_;  // int32 [S]
  DeviceBuffer partial_acc_;
  DeviceBuffer partial_lse_;

  // Per-step metadata.
  MetaLayout eager_layout_;
  std::vector<int> buckets_;
  std::vector<MetaLayout> bucket_layouts_;
  DeviceBuffer meta_dev_;
  PinnedBuffer meta_host_;
  PinnedBuffer tokens_host_;  // int32 [S]

  // Export / import staging.
  size_t staging_half_bytes_ = 0;
  PinnedBuffer staging_;
  CudaEvent staging_events_[2];

  // Declared last: destroyed first.
  std::vector<CudaGraphExec> graphs_;  // per bucket, captured lazily
};

absl::Status CudaEngine::ValidateConfig() const {
  const ModelConfig& c = config();
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::UnimplementedError(
        absl::StrCat("CUDA backend: head_dim ", c.head_dim, " (supported: 64, 128)"));
  }
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0 ||
      c.num_heads / c.num_kv_heads > cuda::kMaxGqaRatio) {
    return absl::UnimplementedError(absl::StrCat("CUDA backend: ", c.num_heads, " heads over ",
                                                 c.num_kv_heads, " kv heads (ratio up to ",
                                                 cuda::kMaxGqaRatio, ")"));
  }
  if (c.hidden_size % 8 != 0 || c.intermediate_size % 8 != 0) {
    return absl::UnimplementedError(
        "CUDA backend: hidden_size and intermediate_size must be multiples of 8");
  }
  if (c.num_kv_heads > 65535) return absl::UnimplementedError("CUDA backend: too many kv heads");
  return absl::OkStatus();
}

// Copies `t` (any supported dtype) into `dst` as bf16; `elements` is the expected size.
absl::Status UploadBf16(const TensorView& t, int64_t elements, bf16* dst) {
  if (t.NumElements() != elements) {
    return absl::InternalError(absl::StrCat("CUDA backend: tensor ", t.name, " has ",
                                            t.NumElements(), " elements, expected ", elements));
  }
  if (t.dtype == DType::kBF16) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, t.data, t.nbytes, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  const size_t n = static_cast<size_t>(elements);
  const size_t esize = DTypeBytes(t.dtype);
  std::vector<float> f(std::min(n, kConvertChunk));
  std::vector<uint16_t> b(f.size());
  for (size_t off = 0; off < n; off += kConvertChunk) {
    const size_t len = std::min(kConvertChunk, n - off);
    ConvertToFloat(t.dtype, t.data + off * esize, len, f.data());
    for (size_t i = 0; i < len; ++i) b[i] = FloatToBf16(f[i]);
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(dst + off, b.data(), len * sizeof(uint16_t), cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

// Copies `t` into `dst` as fp32.
absl::Status UploadF32(const TensorView& t, int64_t elements, float* dst) {
  if (t.NumElements() != elements) {
    return absl::InternalError(absl::StrCat("CUDA backend: tensor ", t.name, " has ",
                                            t.NumElements(), " elements, expected ", elements));
  }
  std::vector<float> f(static_cast<size_t>(elements));
  ConvertToFloat(t.dtype, t.data, f.size(), f.data());
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(dst, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status CudaEngine::UploadWeights() {
  const ModelConfig& c = config();
  const ModelWeights& w = weights();
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size, hd = c.head_dim;
  const int64_t q_rows = c.num_heads * hd, kv_rows = c.num_kv_heads * hd;
  const int64_t qkv_rows = q_rows + 2 * kv_rows;
  const int64_t vocab = c.vocab_size;

  KVTIER_ASSIGN_OR_RETURN(embed_, DeviceBuffer::Allocate(vocab * hidden * 2));
  KVTIER_RETURN_IF_ERROR(UploadBf16(w.embed(), vocab * hidden, embed_.as<bf16>()));
  const bool tied = c.tie_word_embeddings || &w.lm_head() == &w.embed();
  if (!tied) {
    KVTIER_ASSIGN_OR_RETURN(lm_head_, DeviceBuffer::Allocate(vocab * hidden * 2));
    KVTIER_RETURN_IF_ERROR(UploadBf16(w.lm_head(), vocab * hidden, lm_head_.as<bf16>()));
  }
  KVTIER_ASSIGN_OR_RETURN(final_norm_, DeviceBuffer::Allocate(hidden * 4));
  KVTIER_RETURN_IF_ERROR(UploadF32(w.final_norm(), hidden, final_norm_.as<float>()));

  const std::vector<float> inv_freq = RopeInvFreq(c);
  KVTIER_ASSIGN_OR_RETURN(inv_freq_, DeviceBuffer::Allocate(inv_freq.size() * 4));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(inv_freq_.get(), inv_freq.data(), inv_freq.size() * 4, cudaMemcpyHostToDevice));

  layers_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerWeights& lw = w.layers()[i];
    LayerBuffers& lb = layers_[i];
    KVTIER_ASSIGN_OR_RETURN(lb.w_qkv, DeviceBuffer::Allocate(qkv_rows * hidden * 2));
    bf16* qkv = lb.w_qkv.as<bf16>();
    KVTIER_RETURN_IF_ERROR(UploadBf16(*lw.q_proj, q_rows * hidden, qkv));
    KVTIER_RETURN_IF_ERROR(UploadBf16(*lw.k_proj, kv_rows * hidden, qkv + q_rows * hidden));
    KVTIER_RETURN_IF_ERROR(
        UploadBf16(*lw.v_proj, kv_rows * hidden, qkv + (q_rows + kv_rows) * hidden));
    if (c.attention_bias) {
      if (lw.q_bias == nullptr || lw.k_bias == nullptr || lw.v_bias == nullptr) {
        return absl::InternalError(absl::StrCat("CUDA backend: layer ", i, " lacks q/k/v bias"));
      }
      KVTIER_ASSIGN_OR_RETURN(lb.b_qkv, DeviceBuffer::Allocate(qkv_rows * 4));
      float* b = lb.b_qkv.as<float>();
      KVTIER_RETURN_IF_ERROR(UploadF32(*lw.q_bias, q_rows, b));
      KVTIER_RETURN_IF_ERROR(UploadF32(*lw.k_bias, kv_rows, b + q_rows));
      KVTIER_RETURN_IF_ERROR(UploadF32(*lw.v_bias, kv_rows, b + q_rows + kv_rows));
    }
    KVTIER_ASSIGN_OR_RETURN(lb.w_o, DeviceBuffer::Allocate(hidden * q_rows * 2));
    KVTIER_RETURN_IF_ERROR(UploadBf16(*lw.o_proj, hidden * q_rows, lb.w_o.as<bf16>()));
    KVTIER_ASSIGN_OR_RETURN(lb.w_gate_up, DeviceBuffer::Allocate(2 * inter * hidden * 2));
    bf16* gu = lb.w_gate_up.as<bf16>();
    KVTIER_RETURN_IF_ERROR(UploadBf16(*lw.gate_proj, inter * hidden, gu));
    KVTIER_RETURN_IF_ERROR(UploadBf16(*lw.up_proj, inter * hidden, gu + inter * hidden));
    KVTIER_ASSIGN_OR_RETURN(lb.w_down, DeviceBuffer::Allocate(hidden * inter * 2));
    KVTIER_RETURN_IF_ERROR(UploadBf16(*lw.down_proj, hidden * inter, lb.w_down.as<bf16>()));
    KVTIER_ASSIGN_OR_RETURN(lb.in_norm, DeviceBuffer::Allocate(hidden * 4));
    KVTIER_RETURN_IF_ERROR(UploadF32(*lw.input_norm, hidden, lb.in_norm.as<float>()));
    KVTIER_ASSIGN_OR_RETURN(lb.post_norm, DeviceBuffer::Allocate(hidden * 4));
    KVTIER_RETURN_IF_ERROR(UploadF32(*lw.post_norm, hidden, lb.post_norm.as<float>()));
  }
  return absl::OkStatus();
}

size_t CudaEngine::BucketIndex(int n) const {
  for (size_t i = 0; i < buckets_.size(); ++i) {
    if (buckets_[i] >= n) return i;
  }
  return buckets_.size() - 1;  // unreachable: n <= buckets_.back() by validation
}

absl::Status CudaEngine::AllocateWorkspaces() {
  const ModelConfig& c = config();
  const EngineOptions& o = options();
  const size_t T = o.max_batch_tokens, S = o.max_batch_seqs;
  const size_t hidden = c.hidden_size, inter = c.intermediate_size, hd = c.head_dim;
  const size_t qd = size_t(c.num_heads) * hd;
  const size_t qkv_dim = qd + 2 * size_t(c.num_kv_heads) * hd;

  KVTIER_ASSIGN_OR_RETURN(residual_, DeviceBuffer::Allocate(T * hidden * 4));
  KVTIER_ASSIGN_OR_RETURN(normed_, DeviceBuffer::Allocate(T * hidden * 2));
  KVTIER_ASSIGN_OR_RETURN(big_, DeviceBuffer::Allocate(T * std::max(qkv_dim, 2 * inter) * 2));
  KVTIER_ASSIGN_OR_RETURN(q_, DeviceBuffer::Allocate(T * qd * 2));
  KVTIER_ASSIGN_OR_RETURN(attn_, DeviceBuffer::Allocate(T * qd * 2));
  KVTIER_ASSIGN_OR_RETURN(delta_, DeviceBuffer::Allocate(T * hidden * 2));
  KVTIER_ASSIGN_OR_RETURN(act_, DeviceBuffer::Allocate(T * inter * 2));
  KVTIER_ASSIGN_OR_RETURN(final_, DeviceBuffer::Allocate(S * hidden * 2));
  KVTIER_ASSIGN_OR_RETURN(logits_, DeviceBuffer::Allocate(S * size_t(c.vocab_size) * 4));
  KVTIER_ASSIGN_OR_RETURN(next_tokens_, DeviceBuffer::Allocate(S * 4));
  KVTIER_ASSIGN_OR_RETURN(tokens_host_, PinnedBuffer::Allocate(S * 4));

  // Graph buckets: powers of two below the cap, then the cap (a decode batch of n sequences
  // has n rows, so the cap is also bounded by max_batch_tokens).
  const int cap = std::min(o.max_batch_seqs, o.max_batch_tokens);
  for (int b = 1; b < cap; b *= 2) buckets_.push_back(b);
  buckets_.push_back(cap);
  graphs_.resize(buckets_.size());

  // Decode partials: a decode set of n sequences uses the splits of its bucket.
  size_t max_partials = 0;
  for (int b : buckets_) {
    const int splits = cuda::DecodeSplits(b, c.num_kv_heads, num_sms_);
    max_partials = std::max(max_partials, size_t(b) * splits * c.num_heads);
  }
  KVTIER_ASSIGN_OR_RETURN(partial_acc_, DeviceBuffer::Allocate(max_partials * hd * 4));
  KVTIER_ASSIGN_OR_RETURN(partial_lse_, DeviceBuffer::Allocate(max_partials * 4));

  // Metadata: the eager layout covers any valid batch; bucket layouts are tight.
  const int max_work = static_cast<int>(T / cuda::kPrefillBlockM + S);
  eager_layout_ = MetaLayout::Make(static_cast<int>(T), static_cast<int>(S), max_work,
                                   static_cast<int>(S) * max_pages_per_seq_ + 1);
  size_t meta_bytes = eager_layout_.total;
  for (int b : buckets_) {
    bucket_layouts_.push_back(MetaLayout::Make(b, b, 0, b * max_pages_per_seq_ + 1));
    meta_bytes = std::max(meta_bytes, bucket_layouts_.back().total);
  }
  KVTIER_ASSIGN_OR_RETURN(meta_dev_, DeviceBuffer::Allocate(meta_bytes));
  KVTIER_ASSIGN_OR_RETURN(meta_host_, PinnedBuffer::Allocate(meta_bytes));

  // Export/import staging: two halves, each a whole number of blocks.
  const size_t block = kv_layout().BlockBytes();
  staging_half_bytes_ = std::max<size_t>(1, kStagingHalfBytes / block) * block;
  KVTIER_ASSIGN_OR_RETURN(staging_, PinnedBuffer::Allocate(2 * staging_half_bytes_));
  for (CudaEvent& e : staging_events_) {
    KVTIER_ASSIGN_OR_RETURN(e, CudaEvent::Create());
  }
  return absl::OkStatus();
}

absl::Status CudaEngine::Init() {
  device_ = options().cuda_device;
  int count = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&count);
  if (count_err != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear
    return absl::UnimplementedError(
        absl::StrCat("CUDA backend: no CUDA device (", cudaGetErrorString(count_err), ")"));
  }
  if (device_ < 0 || device_ >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA backend: cuda_device ", device_, " of ", count, " devices"));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  cudaDeviceProp prop;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device_));
  if (prop.major < 8) {
    return absl::UnimplementedError(absl::StrCat("CUDA backend: device ", prop.name,
                                                 " (compute capability ", prop.major, ".",
                                                 prop.minor, ") lacks bf16 tensor cores"));
  }
  num_sms_ = prop.multiProcessorCount;
  KVTIER_RETURN_IF_ERROR(ValidateConfig());

  const KvLayout& kv = kv_layout();
  const int64_t slots = (int64_t{num_pages()} + 1) * kv.block_tokens;
  if (num_pages() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA backend: kv_cache_bytes ",
                                                   options().kv_cache_bytes, " holds no block of ",
                                                   kv.BlockBytes(), " bytes"));
  }
  if (slots > INT32_MAX) {
    return absl::InvalidArgumentError("CUDA backend: too many KV slots for int32 indexing");
  }
  const int64_t pages_for_max_pos =
      (int64_t{config().max_position_embeddings} + kv.block_tokens - 1) / kv.block_tokens;
  max_pages_per_seq_ =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pages_for_max_pos, num_pages())));

  KVTIER_ASSIGN_OR_RETURN(stream_, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(cublas_, CublasHandle::Create());
  KVTIER_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_.get(), stream_.get()));
  KVTIER_ASSIGN_OR_RETURN(cublas_workspace_, DeviceBuffer::Allocate(kCublasWorkspaceBytes));
  KVTIER_CUBLAS_RETURN_IF_ERROR(
      cublasSetWorkspace(cublas_.get(), cublas_workspace_.get(), kCublasWorkspaceBytes));
  KVTIER_CUBLAS_RETURN_IF_ERROR(cublasSetPointerMode(cublas_.get(), CUBLAS_POINTER_MODE_HOST));

  KVTIER_RETURN_IF_ERROR(UploadWeights());

  layer_stride_bytes_ = (size_t(num_pages()) + 1) * kv.LayerBytes();
  KVTIER_ASSIGN_OR_RETURN(kv_cache_,
                          DeviceBuffer::Allocate(layer_stride_bytes_ * size_t(kv.num_layers)));
  // Zeroed so that the scratch page (and never-written pages) hold finite values.
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(kv_cache_.get(), 0, kv_cache_.bytes(), stream_.get()));
  KVTIER_RETURN_IF_ERROR(AllocateWorkspaces());
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
  return absl::OkStatus();
}

cuda::KvCacheView CudaEngine::CacheView(int layer) const {
  const KvLayout& kv = kv_layout();
  cuda::KvCacheView v;
  v.base = reinterpret_cast<bf16*>(kv_cache_.as<uint8_t>() + layer_stride_bytes_ * layer);
  v.page_stride = static_cast<int64_t>(kv.LayerBytes() / sizeof(bf16));
  v.num_kv_heads = kv.num_kv_heads;
  v.block_tokens = kv.block_tokens;
  v.head_dim = kv.head_dim;
  return v;
}

absl::Status CudaEngine::Gemm(const bf16* x, const bf16* w, void* c, cudaDataType_t c_type,
                              int rows, int n, int k) {
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major C[rows, n] = X[rows, k] W[n, k]^T is column-major C^T[n, rows] = W^T X^T.
  KVTIER_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(cublas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k,
                                             &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k, &beta, c,
                                             c_type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::StatusOr<StepShape> CudaEngine::BuildStep(absl::Span<const SeqInput> batch,
                                                const MetaLayout& lay, int bucket, bool argmax) {
  uint8_t* h = meta_host_.as<uint8_t>();
  int32_t* tokens = reinterpret_cast<int32_t*>(h + lay.tokens);
  int32_t* positions = reinterpret_cast<int32_t*>(h + lay.positions);
  int32_t* slots = reinterpret_cast<int32_t*>(h + lay.slots);
  cuda::SeqInfo* seq_info = reinterpret_cast<cuda::SeqInfo*>(h + lay.seq_info);
  int32_t* last_rows = reinterpret_cast<int32_t*>(h + lay.last_rows);
  int32_t* decode_seqs = reinterpret_cast<int32_t*>(h + lay.decode_seqs);
  cuda::PrefillWorkItem* work = reinterpret_cast<cuda::PrefillWorkItem*>(h + lay.work_items);
  int32_t* page_table = reinterpret_cast<int32_t*>(h + lay.page_table);

  const int B = kv_layout().block_tokens;
  const int S = static_cast<int>(batch.size());
  int row = 0, pe = 0, nw = 0, nd = 0;
  for (int i = 0; i < S; ++i) {
    const SeqInput& sq = batch[i];
    const int n = static_cast<int>(sq.tokens.size());
    const int start = sq.start_pos;
    const int used = (start + n + B - 1) / B;
    if (used > max_pages_per_seq_) {
      return absl::InvalidArgumentError(absl::StrCat("forward: sequence ", i, " spans ", used,
                                                     " pages; the CUDA backend holds at most ",
                                                     max_pages_per_seq_, " per sequence"));
    }
    if (row + n > lay.rows || pe + used > lay.page_entries) {
      return absl::InternalError("forward: step metadata overflow");
    }
    seq_info[i] = cuda::SeqInfo{row, n, start, pe};
    std::copy_n(sq.pages.data(), used, page_table + pe);
    for (int j = 0; j < n; ++j) {
      const int pos = start + j;
      tokens[row + j] = sq.tokens[j];
      positions[row + j] = pos;
      slots[row + j] = sq.pages[pos / B] * B + pos % B;
    }
    last_rows[i] = row + n - 1;
    if (n == 1) {
      decode_seqs[nd++] = i;
    } else {
      for (int qt = 0; qt * cuda::kPrefillBlockM < n; ++qt) {
        if (nw >= lay.work) return absl::InternalError("forward: work list overflow");
        work[nw++] = cuda::PrefillWorkItem{i, qt};
      }
    }
    row += n;
    pe += used;
  }
  int seqs = S;
  if (bucket > 0) {
    // Padding sequences: token 0 at position 0, one page (the scratch page), length 1.
    if (bucket > lay.seqs || bucket > lay.rows || pe + 1 > lay.page_entries) {
      return absl::InternalError("forward: bucket metadata overflow");
    }
    page_table[pe] = num_pages();
    for (int i = S; i < bucket; ++i) {
      seq_info[i] = cuda::SeqInfo{row, 1, 0, pe};
      tokens[row] = 0;
      positions[row] = 0;
      slots[row] = num_pages() * B;
      last_rows[i] = row;
      decode_seqs[nd++] = i;
      ++row;
    }
    pe += 1;
    seqs = bucket;
  }
  // Longest key ranges first (causal: later query tiles do more work).
  auto extent = [&](const cuda::PrefillWorkItem& w) {
    const cuda::SeqInfo& si = seq_info[w.seq];
    return si.start_pos + std::min((w.q_tile + 1) * cuda::kPrefillBlockM, si.n_new);
  };
  std::stable_sort(work, work + nw,
                   [&](const cuda::PrefillWorkItem& a, const cuda::PrefillWorkItem& b) {
                     return extent(a) > extent(b);
                   });

  StepShape shape;
  shape.rows = row;
  shape.seqs = seqs;
  shape.num_work = nw;
  shape.num_decode = nd;
  shape.splits =
      nd > 0 ? cuda::DecodeSplits(buckets_[BucketIndex(nd)], config().num_kv_heads, num_sms_) : 1;
  shape.argmax = argmax;
  shape.copy_bytes = lay.CopyBytes(pe);
  return shape;
}

absl::Status CudaEngine::EnqueueStep(const StepShape& shape, const MetaLayout& lay) {
  const ModelConfig& c = config();
  cudaStream_t s = stream_.get();
  const uint8_t* meta = meta_dev_.as<uint8_t>();
  const auto* tokens = reinterpret_cast<const int32_t*>(meta + lay.tokens);
  const auto* positions = reinterpret_cast<const int32_t*>(meta + lay.positions);
  const auto* slots = reinterpret_cast<const int32_t*>(meta + lay.slots);
  const auto* seq_info = reinterpret_cast<const cuda::SeqInfo*>(meta + lay.seq_info);
  const auto* last_rows = reinterpret_cast<const int32_t*>(meta + lay.last_rows);
  const auto* decode_seqs = reinterpret_cast<const int32_t*>(meta + lay.decode_seqs);
  const auto* work = reinterpret_cast<const cuda::PrefillWorkItem*>(meta + lay.work_items);
  const auto* page_table = reinterpret_cast<const int32_t*>(meta + lay.page_table);

  const int T = shape.rows;
  const int hidden = c.hidden_size, inter = c.intermediate_size;
  const int H = c.num_heads, hd = c.head_dim;
  const int qd = H * hd;
  const int qkv_dim = qd + 2 * c.num_kv_heads * hd;
  const float eps = c.rms_norm_eps;
  float* residual = residual_.as<float>();
  bf16* normed = normed_.as<bf16>();
  bf16* big = big_.as<bf16>();
  bf16* delta = delta_.as<bf16>();

  KVTIER_CUDA_RETURN_IF_ERROR(
      cuda::LaunchEmbedding(embed_.as<bf16>(), tokens, T, hidden, residual, s));
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerBuffers& lb = layers_[l];
    const cuda::KvCacheView cache = CacheView(l);
    // Layer 0 normalizes the embeddings; later layers first add the previous MLP output.
    KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(
        residual, l == 0 ? nullptr : delta, nullptr, T, hidden, lb.in_norm.as<float>(), eps, normed,
        /*write_residual=*/l > 0, s));
    KVTIER_RETURN_IF_ERROR(Gemm(normed, lb.w_qkv.as<bf16>(), big, CUDA_R_16BF, T, qkv_dim, hidden));
    KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchQkvRopeKv(big, lb.b_qkv.as<float>(), positions, slots,
                                                      T, H, inv_freq_.as<float>(), cache,
                                                      q_.as<bf16>(), s));
    KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchPrefillAttention(
        q_.as<bf16>(), seq_info, page_table, work, shape.num_work, H, cache, attn_.as<bf16>(), s));
    KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchDecodeAttention(
        q_.as<bf16>(), seq_info, page_table, decode_seqs, shape.num_decode, shape.splits, H, cache,
        partial_acc_.as<float>(), partial_lse_.as<float>(), attn_.as<bf16>(), s));
    KVTIER_RETURN_IF_ERROR(
        Gemm(attn_.as<bf16>(), lb.w_o.as<bf16>(), delta, CUDA_R_16BF, T, hidden, qd));
    KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(residual, delta, nullptr, T, hidden,
                                                       lb.post_norm.as<float>(), eps, normed,
                                                       /*write_residual=*/true, s));
    KVTIER_RETURN_IF_ERROR(
        Gemm(normed, lb.w_gate_up.as<bf16>(), big, CUDA_R_16BF, T, 2 * inter, hidden));
    KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchSiluMul(big, T, inter, act_.as<bf16>(), s));
    KVTIER_RETURN_IF_ERROR(
        Gemm(act_.as<bf16>(), lb.w_down.as<bf16>(), delta, CUDA_R_16BF, T, hidden, inter));
  }
  // Each sequence's last row: residual + last MLP output, final norm, lm_head, (argmax).
  KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(residual, delta, last_rows, shape.seqs, hidden,
                                                     final_norm_.as<float>(), eps,
                                                     final_.as<bf16>(),
                                                     /*write_residual=*/false, s));
  const bf16* lm_head = lm_head_.get() != nullptr ? lm_head_.as<bf16>() : embed_.as<bf16>();
  KVTIER_RETURN_IF_ERROR(Gemm(final_.as<bf16>(), lm_head, logits_.get(), CUDA_R_32F, shape.seqs,
                              c.vocab_size, hidden));
  if (shape.argmax) {
    KVTIER_CUDA_RETURN_IF_ERROR(cuda::LaunchArgmax(logits_.as<float>(), shape.seqs, c.vocab_size,
                                                   next_tokens_.as<int32_t>(), s));
  }
  return absl::OkStatus();
}

absl::Status CudaEngine::RunGraphStep(size_t bucket_index, const StepShape& shape) {
  const MetaLayout& lay = bucket_layouts_[bucket_index];
  cudaStream_t s = stream_.get();
  if (graphs_[bucket_index]) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(graphs_[bucket_index].get(), s));
    return absl::OkStatus();
  }
  // First step of this bucket: run it eagerly (this also warms up cuBLAS and loads every
  // kernel module outside the capture), then capture the same step for later replays.
  KVTIER_RETURN_IF_ERROR(EnqueueStep(shape, lay));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const absl::Status enqueued = EnqueueStep(shape, lay);
  cudaGraph_t raw_graph = nullptr;
  const cudaError_t end_err = cudaStreamEndCapture(s, &raw_graph);
  CudaGraph graph(raw_graph);
  if (!enqueued.ok()) {
    cudaGetLastError();
    return enqueued;
  }
  KVTIER_CUDA_RETURN_IF_ERROR(end_err);
  cudaGraphExec_t exec = nullptr;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&exec, graph.get(), 0));
  graphs_[bucket_index] = CudaGraphExec(exec);
  return absl::OkStatus();
}

absl::Status CudaEngine::DoForward(absl::Span<const SeqInput> batch, float* logits,
                                   TokenId* next_tokens) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  cudaStream_t s = stream_.get();
  const int S = static_cast<int>(batch.size());
  const bool all_decode = std::all_of(batch.begin(), batch.end(),
                                      [](const SeqInput& q) { return q.tokens.size() == 1; });
  const bool use_graph = all_decode && options().cuda_graphs;
  const size_t bi = use_graph ? BucketIndex(S) : 0;
  const MetaLayout& lay = use_graph ? bucket_layouts_[bi] : eager_layout_;
  // Graph steps always end with the argmax (one graph serves Forward and ForwardGreedy).
  KVTIER_ASSIGN_OR_RETURN(const StepShape shape, BuildStep(batch, lay, use_graph ? buckets_[bi] : 0,
                                                           use_graph || next_tokens != nullptr));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(meta_dev_.get(), meta_host_.get(), shape.copy_bytes,
                                              cudaMemcpyHostToDevice, s));
  if (use_graph) {
    KVTIER_RETURN_IF_ERROR(RunGraphStep(bi, shape));
  } else {
    KVTIER_RETURN_IF_ERROR(EnqueueStep(shape, lay));
  }
  if (logits != nullptr) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits, logits_.get(),
                                                size_t(S) * config().vocab_size * sizeof(float),
                                                cudaMemcpyDeviceToHost, s));
  }
  if (next_tokens != nullptr) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(tokens_host_.get(), next_tokens_.get(),
                                                size_t(S) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                                s));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  if (next_tokens != nullptr) std::copy_n(tokens_host_.as<int32_t>(), S, next_tokens);
  return absl::OkStatus();
}

// Whether [p, p + bytes) is page-locked host memory (cudaHostAlloc or cudaHostRegister), which
// the copy engine reads and writes directly.
bool IsPinned(const void* p, size_t bytes) {
  for (const void* q : {p, static_cast<const void*>(static_cast<const uint8_t*>(p) + bytes - 1)}) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, q) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (a.type != cudaMemoryTypeHost) return false;
  }
  return true;
}

void FreePinned(void* p) { (void)cudaFreeHost(p); }

absl::StatusOr<HostBuffer> CudaEngine::AllocateHostBuffer(size_t bytes) const {
  if (bytes == 0) return HostBuffer();
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  void* p = nullptr;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
  return HostBuffer(p, bytes, FreePinned);
}

absl::Status CudaEngine::DoExportPages(absl::Span<const int32_t> pages, uint8_t* dst) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (pages.empty()) return absl::OkStatus();
  cudaStream_t s = stream_.get();
  const KvLayout& kv = kv_layout();
  const size_t block = kv.BlockBytes(), layer_bytes = kv.LayerBytes();
  if (IsPinned(dst, pages.size() * block)) {  // straight into the caller's buffer
    for (size_t i = 0; i < pages.size(); ++i) {
      const size_t page = static_cast<size_t>(pages[i]);
      KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
          dst + i * block, layer_bytes, kv_cache_.as<uint8_t>() + page * layer_bytes,
          layer_stride_bytes_, layer_bytes, kv.num_layers, cudaMemcpyDeviceToHost, s));
    }
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    return absl::OkStatus();
  }
  const size_t per_chunk = staging_half_bytes_ / block;
  const size_t n = pages.size();
  const size_t chunks = (n + per_chunk - 1) / per_chunk;
  uint8_t* staging = staging_.as<uint8_t>();
  const uint8_t* cache = kv_cache_.as<uint8_t>();
  // Chunk c goes device -> staging half c % 2 while the host copies chunk c - 1 out.
  auto drain = [&](size_t c) -> absl::Status {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(staging_events_[c % 2].get()));
    const size_t first = c * per_chunk, count = std::min(per_chunk, n - first);
    std::memcpy(dst + first * block, staging + (c % 2) * staging_half_bytes_, count * block);
    return absl::OkStatus();
  };
  for (size_t c = 0; c < chunks; ++c) {
    const size_t first = c * per_chunk, count = std::min(per_chunk, n - first);
    uint8_t* half = staging + (c % 2) * staging_half_bytes_;
    for (size_t i = 0; i < count; ++i) {
      const size_t page = static_cast<size_t>(pages[first + i]);
      KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
          half + i * block, layer_bytes, cache + page * layer_bytes, layer_stride_bytes_,
          layer_bytes, kv.num_layers, cudaMemcpyDeviceToHost, s));
    }
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(staging_events_[c % 2].get(), s));
    if (c > 0) KVTIER_RETURN_IF_ERROR(drain(c - 1));
  }
  KVTIER_RETURN_IF_ERROR(drain(chunks - 1));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return absl::OkStatus();
}

absl::Status CudaEngine::DoImportBlocks(absl::Span<const int32_t> pages,
                                        const uint8_t* const* blocks) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (pages.empty()) return absl::OkStatus();
  cudaStream_t s = stream_.get();
  const KvLayout& kv = kv_layout();
  const size_t block = kv.BlockBytes(), layer_bytes = kv.LayerBytes();
  uint8_t* cache = kv_cache_.as<uint8_t>();
  const size_t n = pages.size();
  auto upload = [&](size_t i, const uint8_t* src) {
    return cudaMemcpy2DAsync(cache + static_cast<size_t>(pages[i]) * layer_bytes,
                             layer_stride_bytes_, src, layer_bytes, layer_bytes, kv.num_layers,
                             cudaMemcpyHostToDevice, s);
  };
  bool pinned = true;
  for (size_t i = 0; i < n && pinned; ++i) pinned = IsPinned(blocks[i], block);
  if (pinned) {  // straight from the caller's memory
    for (size_t i = 0; i < n; ++i) KVTIER_CUDA_RETURN_IF_ERROR(upload(i, blocks[i]));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    return absl::OkStatus();
  }
  // Pageable memory: through the two pinned staging halves, the host filling one while the
  // copy engine drains the other.
  const size_t per_chunk = staging_half_bytes_ / block;
  const size_t chunks = (n + per_chunk - 1) / per_chunk;
  uint8_t* staging = staging_.as<uint8_t>();
  for (size_t c = 0; c < chunks; ++c) {
    const size_t first = c * per_chunk, count = std::min(per_chunk, n - first);
    uint8_t* half = staging + (c % 2) * staging_half_bytes_;
    // The copies of chunk c - 2 read this half: wait for them before refilling it.
    if (c >= 2) KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(staging_events_[c % 2].get()));
    for (size_t i = 0; i < count; ++i) std::memcpy(half + i * block, blocks[first + i], block);
    for (size_t i = 0; i < count; ++i) {
      KVTIER_CUDA_RETURN_IF_ERROR(upload(first + i, half + i * block));
    }
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(staging_events_[c % 2].get(), s));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return absl::OkStatus();
}

absl::Status CudaEngine::RegisterHostMemory(const void* base, size_t bytes) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaHostRegister(const_cast<void*>(base), bytes, cudaHostRegisterPortable));
  return absl::OkStatus();
}

void CudaEngine::UnregisterHostMemory(const void* base) {
  (void)cudaSetDevice(device_);
  if (cudaHostUnregister(const_cast<void*>(base)) != cudaSuccess) (void)cudaGetLastError();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(ModelWeights weights,
                                                         const EngineOptions& options) {
  KvLayout layout = MakeKvLayout(weights.config(), options.block_tokens, "bf16");
  const int64_t block = static_cast<int64_t>(layout.BlockBytes());
  if (block <= 0) return absl::InvalidArgumentError("CUDA backend: empty KV layout");
  const int64_t pages = options.kv_cache_bytes / block;
  if (pages > INT32_MAX) return absl::InvalidArgumentError("CUDA backend: too many KV pages");
  auto engine = std::make_unique<CudaEngine>(std::move(weights), options, std::move(layout),
                                             static_cast<int>(pages));
  KVTIER_RETURN_IF_ERROR(engine->Init());
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace kvtier::engine
