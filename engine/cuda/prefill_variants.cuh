// Every configuration ("variant") of the prefill attention kernel, selectable at run time, for
// tests and benchmarks (docs/engine-cuda.md has the variant table). Serving runs
// LaunchPrefillAttention (engine/cuda/prefill_attention.cuh); this library,
// kvtier_engine_cuda_variants, instantiates the variants serving never selects and is linked
// only by tests and benchmarks. For the variant DefaultPrefillVariant names it runs serving's
// own kernel. Includable from host-only C++; thread-compatible, like the launchers.
#ifndef KVTIER_ENGINE_CUDA_PREFILL_VARIANTS_CUH_
#define KVTIER_ENGINE_CUDA_PREFILL_VARIANTS_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/layout.cuh"

namespace kvtier::engine::cuda {

// Variant ids are shared by both head dims, but not every variant exists for every head_dim
// (PrefillVariantAvailable). Variant 0 is the first kernel's configuration.
inline constexpr int kNumPrefillVariants = 7;

// Whether `variant` exists for head_dim and a GQA ratio num_heads / num_kv_heads (variants that
// give one CTA several q heads of a KV group need the ratio to be a multiple of that count).
bool PrefillVariantAvailable(int variant, int head_dim, int num_heads, int num_kv_heads);

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

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_PREFILL_VARIANTS_CUH_
