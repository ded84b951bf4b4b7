// CUDA kernels of the bf16 backend (engine/cuda_backend.cu), each behind a plain C++ launcher
// that takes raw device pointers and a stream, so that tests can run every kernel alone.
// Includable from host-only C++ (no device code here). docs/engine-cuda.md has the designs.
//
// Conventions: activations are row-major [rows, features]; bf16 storage, fp32 arithmetic;
// the residual stream is fp32. Launchers only enqueue work: they return the launch error
// (cudaGetLastError) and never synchronize, so they may be captured into CUDA graphs.
// Launchers are thread-compatible (no global state besides per-function attributes).
#ifndef KVTIER_ENGINE_CUDA_KERNELS_CUH_
#define KVTIER_ENGINE_CUDA_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvtier::engine::cuda {

using bf16 = __nv_bfloat16;

// One sequence of a forward step. The sequence's new tokens are rows
// [q_row, q_row + n_new) of the step's activations, at positions start_pos, start_pos + 1, ...;
// its keys are positions [0, start_pos + n_new). Its page table is
// page_table[page_off, page_off + ceil((start_pos + n_new) / block_tokens)).
struct SeqInfo {
  int32_t q_row;
  int32_t n_new;
  int32_t start_pos;
  int32_t page_off;
};

// One work item of the prefill attention kernel: query rows
// [q_tile * kPrefillBlockM, (q_tile + 1) * kPrefillBlockM) of sequence `seq` (all heads); a CTA
// per head (or per group of heads), or per 64-row half of it, depending on the variant.
struct PrefillWorkItem {
  int32_t seq;
  int32_t q_tile;
};

inline constexpr int kPrefillBlockM = 128;
// Most splits of the decode kernel (workspace sizing).
inline constexpr int kMaxDecodeSplits = 128;
// Most query heads per KV head that the decode kernel handles.
inline constexpr int kMaxGqaRatio = 16;

// One layer of the paged KV cache. Page p of the layer starts at base + p * page_stride
// (elements) and holds [K|V][kv_head][token][head_dim] (K after RoPE).
struct KvCacheView {
  bf16* base = nullptr;
  int64_t page_stride = 0;  // 2 * num_kv_heads * block_tokens * head_dim
  int num_kv_heads = 0;
  int block_tokens = 0;
  int head_dim = 0;  // 64 or 128
};

// out[i, :] = fp32(table[tokens[i], :]) for i < rows. hidden % 8 == 0.
cudaError_t LaunchEmbedding(const bf16* table, const int32_t* tokens, int rows, int hidden,
                            float* out, cudaStream_t stream);

// For i < n, with r = rows ? rows[i] : i:
//   x = residual[r, :] + (delta ? fp32(delta[r, :]) : 0);
//   if (write_residual) residual[r, :] = x;
//   out[i, :] = bf16(x * rsqrt(mean(x^2) + eps) * weight)      (fp32 math)
// hidden % 8 == 0. out may not alias residual or delta.
cudaError_t LaunchAddRmsNorm(float* residual, const bf16* delta, const int32_t* rows, int n,
                             int hidden, const float* weight, float eps, bf16* out,
                             bool write_residual, cudaStream_t stream);

// For each of `rows` rows of qkv [rows, (num_heads + 2 * kv_heads) * head_dim] (q heads, then k
// heads, then v heads): adds `bias` (fp32, same layout; may be null), applies RoPE at
// positions[row] to q and k (angle = fp32(float(pos) * inv_freq[i]), accurate sincosf,
// rotate_half pairing (i, i + head_dim/2)), writes q to q_out [rows, num_heads, head_dim] and k,
// v into the cache at slot slots[row] (page = slot / block_tokens, token = slot % block_tokens).
cudaError_t LaunchQkvRopeKv(const bf16* qkv, const float* bias, const int32_t* positions,
                            const int32_t* slots, int rows, int num_heads, const float* inv_freq,
                            const KvCacheView& cache, bf16* q_out, cudaStream_t stream);

// out[r, i] = bf16(silu(gate_up[r, i]) * gate_up[r, inter + i]) (fp32 math). inter % 8 == 0.
cudaError_t LaunchSiluMul(const bf16* gate_up, int rows, int inter, bf16* out, cudaStream_t stream);

// Causal attention over the paged cache for the work items work[0, num_work): a query at
// position p sees keys [0, p]. q: [T, num_heads, head_dim] (RoPE applied), out: [T, num_heads *
// head_dim]; rows are SeqInfo::q_row based. One CTA per (head, work item), FlashAttention-2
// style on tensor cores (mma.sync m16n8k16 bf16, fp32 accumulation and softmax).
cudaError_t LaunchPrefillAttention(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
                                   const PrefillWorkItem* work, int num_work, int num_heads,
                                   const KvCacheView& cache, bf16* out, cudaStream_t stream);

// Prefill attention kernel variants (tile shapes, warp layouts, pipelines; docs/engine-cuda.md),
// selectable at run time for benchmarks and tests. Variant 0 is the original kernel;
// LaunchPrefillAttention uses DefaultPrefillVariant(head_dim). Variant ids are shared by both
// head dims, but not every variant exists for every head_dim (PrefillVariantAvailable).
inline constexpr int kNumPrefillVariants = 7;

// Whether `variant` exists for head_dim and a GQA ratio num_heads / num_kv_heads (variants that
// give one CTA several q heads of a KV group need the ratio to be a multiple of that count).
bool PrefillVariantAvailable(int variant, int head_dim, int num_heads, int num_kv_heads);

// The variant LaunchPrefillAttention uses for head_dim (64 or 128); it falls back to variant 0
// where that one is not available for the GQA ratio.
int DefaultPrefillVariant(int head_dim);

struct PrefillVariantInfo {
  const char* name = nullptr;  // tile shapes, e.g. "m128n64 w4x32 q:smem st2"
  int threads = 0;
  int smem_bytes = 0;     // dynamic shared memory per CTA
  int heads_per_cta = 0;  // q heads of one KV group per CTA
  int rows_per_cta = 0;   // query rows per head per CTA
  int regs = 0;           // per thread (cudaFuncGetAttributes)
  int local_bytes = 0;    // local memory per thread (spills); 0 expected
  int ctas_per_sm = 0;    // occupancy at smem_bytes
};

// Describes `variant` for head_dim from the device's view of the compiled kernel.
cudaError_t GetPrefillVariantInfo(int variant, int head_dim, PrefillVariantInfo* info);

// LaunchPrefillAttention with an explicit variant; cudaErrorInvalidValue where
// !PrefillVariantAvailable.
cudaError_t LaunchPrefillAttentionVariant(int variant, const bf16* q, const SeqInfo* seqs,
                                          const int32_t* page_table, const PrefillWorkItem* work,
                                          int num_work, int num_heads, const KvCacheView& cache,
                                          bf16* out, cudaStream_t stream);

// Attention of the last new token (row q_row + n_new - 1) of each sequence
// seqs[decode_seqs[i]], i < num_decode, over all its keys [0, start_pos + n_new): split-KV
// flash-decoding with `num_splits` splits per (sequence, kv head) writing partials to
// partial_acc [num_decode * num_heads * num_splits * head_dim] and partial_lse
// [num_decode * num_heads * num_splits], then a combine kernel writing out. Each split takes
// its page range from the sequence's length on the device (empty splits write neutral
// partials), so num_splits may be fixed when a CUDA graph is captured.
// num_heads / kv_heads <= kMaxGqaRatio, num_splits <= kMaxDecodeSplits.
cudaError_t LaunchDecodeAttention(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
                                  const int32_t* decode_seqs, int num_decode, int num_splits,
                                  int num_heads, const KvCacheView& cache, float* partial_acc,
                                  float* partial_lse, bf16* out, cudaStream_t stream);

// The decode split count for a batch padded to `bucket` sequences: enough CTAs to fill
// `num_sms` SMs twice, at most kMaxDecodeSplits.
int DecodeSplits(int bucket, int num_kv_heads, int num_sms);

// out[r] = argmax_j logits[r, j] for r < rows (lowest index on ties; NaN counts as -inf).
cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* out,
                         cudaStream_t stream);

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_KERNELS_CUH_
