// Prefill attention of the CUDA backend (engine/cuda/cuda_backend.cu): causal attention of a
// step's new tokens over the paged KV cache, FlashAttention-2 on tensor cores
// (docs/engine-cuda.md, "Prefill attention"). The kernel is one template with several
// configurations ("variants", engine/cuda/prefill_kernel.cuh); serving runs the one
// DefaultPrefillVariant names for the head_dim, and engine/cuda/prefill_variants.cuh runs any
// of them for tests and benchmarks. Includable from host-only C++.
//
// The launcher only enqueues work: it returns the launch error (cudaGetLastError) and never
// synchronizes, so it may be captured into CUDA graphs. Thread-compatible (no global state
// besides per-function attributes).
#ifndef KVTIER_ENGINE_CUDA_PREFILL_ATTENTION_CUH_
#define KVTIER_ENGINE_CUDA_PREFILL_ATTENTION_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/layout.cuh"

namespace kvtier::engine::cuda {

// The variants LaunchPrefillAttention runs; set them to the winner of
// CudaAttentionBench.DISABLED_PrefillThroughput (engine/cuda/cuda_backend_test.cc). hd128: v6
// measured fastest on an H100 at every length (312 TFLOP/s at 8K tokens vs 237 for v0, 304 for
// v4; 2026-11-22, docs/BENCHMARKS.md) despite its 44-byte spill. hd64 (test shapes only) was not
// timed. Each must serve every GQA ratio (one q head per CTA), which prefill_attention.cu checks.
inline constexpr int kDefaultPrefillVariantHd64 = 0;
inline constexpr int kDefaultPrefillVariantHd128 = 6;

// The variant LaunchPrefillAttention uses for head_dim (64 or 128).
constexpr int DefaultPrefillVariant(int head_dim) {
  return head_dim == 64 ? kDefaultPrefillVariantHd64 : kDefaultPrefillVariantHd128;
}

// Causal attention over the paged cache for the work items work[0, num_work): a query at
// position p sees keys [0, p]. q: [T, num_heads, head_dim] (RoPE applied), out: [T, num_heads *
// head_dim]; rows are SeqInfo::q_row based. head_dim 64 or 128. One CTA per (head, work item),
// FlashAttention-2 style on tensor cores (mma.sync m16n8k16 bf16, fp32 accumulation and
// softmax).
cudaError_t LaunchPrefillAttention(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
                                   const PrefillWorkItem* work, int num_work, int num_heads,
                                   const KvCacheView& cache, bf16* out, cudaStream_t stream);

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_PREFILL_ATTENTION_CUH_
