// Serving's prefill attention: the kernels of the configurations DefaultPrefillVariant names and
// the launcher every configuration goes through. See prefill_attention.cuh for the contract,
// prefill_kernel.cuh for the kernel and docs/engine-cuda.md for the design.
#include <cstdint>

#include "engine/cuda/attention.cuh"
#include "engine/cuda/prefill_attention.cuh"
#include "engine/cuda/prefill_kernel.cuh"

namespace kvtier::engine::cuda {
namespace {

template <int D>
PrefillKernelDesc DefaultKernel() {
  using Variant = PrefillVariant<D, DefaultPrefillVariant(D)>;
  static_assert(Variant::Cfg::kHeads == 1,
                "serving's prefill kernel must serve every GQA ratio: one q head per CTA");
  return DescribePrefillKernel<Variant>();
}

}  // namespace

bool DefaultPrefillKernel(int head_dim, PrefillKernelDesc* d) {
  switch (head_dim) {
    case 64:
      *d = DefaultKernel<64>();
      return true;
    case 128:
      *d = DefaultKernel<128>();
      return true;
    default:
      return false;
  }
}

cudaError_t LaunchPrefillKernel(const PrefillKernelDesc& d, const bf16* q, const SeqInfo* seqs,
                                const int32_t* page_table, const PrefillWorkItem* work,
                                int num_work, int num_heads, const KvCacheView& cache, bf16* out,
                                cudaStream_t stream) {
  if (num_work <= 0) return cudaSuccess;
  const int sub_tiles = kPrefillBlockM / d.rows_per_head;
  if (num_work > 65535 || !ValidGqa(num_heads, cache.num_kv_heads) || cache.block_tokens <= 0 ||
      (num_heads / cache.num_kv_heads) % d.heads_per_cta != 0 ||
      int64_t{num_work} * sub_tiles > 65535) {
    return cudaErrorInvalidValue;
  }
  AttnParams p = MakeAttnParams(q, seqs, page_table, num_heads, cache, out);
  p.work = work;
  cudaError_t err =
      cudaFuncSetAttribute(d.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, d.smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(num_heads / d.heads_per_cta, num_work * sub_tiles);
  void* args[] = {&p};
  err =
      cudaLaunchKernel(d.kernel, grid, dim3(d.threads), args, static_cast<size_t>(d.smem), stream);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

cudaError_t LaunchPrefillAttention(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
                                   const PrefillWorkItem* work, int num_work, int num_heads,
                                   const KvCacheView& cache, bf16* out, cudaStream_t stream) {
  if (num_work <= 0) return cudaSuccess;
  PrefillKernelDesc d;
  if (!DefaultPrefillKernel(cache.head_dim, &d)) return cudaErrorInvalidValue;
  return LaunchPrefillKernel(d, q, seqs, page_table, work, num_work, num_heads, cache, out, stream);
}

}  // namespace kvtier::engine::cuda
