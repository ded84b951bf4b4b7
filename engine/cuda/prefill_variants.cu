// The table of prefill attention variants for tests and benchmarks; see prefill_variants.cuh.
// The kernels of the variants serving never selects are instantiated here, and only here.
#include <utility>

#include "engine/cuda/attention.cuh"
#include "engine/cuda/prefill_attention.cuh"
#include "engine/cuda/prefill_kernel.cuh"
#include "engine/cuda/prefill_variants.cuh"

namespace kvtier::engine::cuda {
namespace {

template <int D, int V>
bool DescribeVariant(PrefillKernelDesc* d) {
  if constexpr (V == DefaultPrefillVariant(D)) {
    return DefaultPrefillKernel(D, d);  // serving's instantiation
  } else if constexpr (PrefillVariant<D, V>::kExists) {
    *d = DescribePrefillKernel<PrefillVariant<D, V>>();
    return true;
  } else {
    return false;
  }
}

template <int D, int... V>
bool FindVariant(int variant, PrefillKernelDesc* d, std::integer_sequence<int, V...>) {
  return ((variant == V && DescribeVariant<D, V>(d)) || ...);
}

bool FindPrefillVariant(int variant, int head_dim, PrefillKernelDesc* d) {
  constexpr auto kIds = std::make_integer_sequence<int, kNumPrefillVariants>();
  switch (head_dim) {
    case 64:
      return FindVariant<64>(variant, d, kIds);
    case 128:
      return FindVariant<128>(variant, d, kIds);
    default:
      return false;
  }
}

}  // namespace

bool PrefillVariantAvailable(int variant, int head_dim, int num_heads, int num_kv_heads) {
  PrefillKernelDesc d;
  return FindPrefillVariant(variant, head_dim, &d) && ValidGqa(num_heads, num_kv_heads) &&
         (num_heads / num_kv_heads) % d.heads_per_cta == 0;
}

cudaError_t GetPrefillVariantInfo(int variant, int head_dim, PrefillVariantInfo* info) {
  PrefillKernelDesc d;
  if (!FindPrefillVariant(variant, head_dim, &d)) return cudaErrorInvalidValue;
  info->name = d.name;
  info->threads = d.threads;
  info->smem_bytes = d.smem;
  info->heads_per_cta = d.heads_per_cta;
  info->rows_per_cta = d.rows_per_head;
  cudaError_t err =
      cudaFuncSetAttribute(d.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, d.smem);
  if (err != cudaSuccess) return err;
  cudaFuncAttributes attr{};
  err = cudaFuncGetAttributes(&attr, d.kernel);
  if (err != cudaSuccess) return err;
  info->regs = attr.numRegs;
  info->local_bytes = static_cast<int>(attr.localSizeBytes);
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&info->ctas_per_sm, d.kernel, d.threads,
                                                       static_cast<size_t>(d.smem));
}

cudaError_t LaunchPrefillAttentionVariant(int variant, const bf16* q, const SeqInfo* seqs,
                                          const int32_t* page_table, const PrefillWorkItem* work,
                                          int num_work, int num_heads, const KvCacheView& cache,
                                          bf16* out, cudaStream_t stream) {
  if (num_work <= 0) return cudaSuccess;
  PrefillKernelDesc d;
  if (!FindPrefillVariant(variant, cache.head_dim, &d)) return cudaErrorInvalidValue;
  return LaunchPrefillKernel(d, q, seqs, page_table, work, num_work, num_heads, cache, out, stream);
}

}  // namespace kvtier::engine::cuda
