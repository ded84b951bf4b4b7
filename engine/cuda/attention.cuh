// What the prefill (engine/cuda/prefill_kernel.cuh) and decode (engine/cuda/decode_attention.cu)
// attention kernels share: their parameter block, its construction from a launcher's arguments,
// and the online softmax over mma accumulator fragments (docs/engine-cuda.md, "Kernels").
// Device code and launcher helpers: include from .cu files only. The parameter block points to
// memory the caller owns; the device functions are called by every thread of a warp.
#ifndef KVTIER_ENGINE_CUDA_ATTENTION_CUH_
#define KVTIER_ENGINE_CUDA_ATTENTION_CUH_

#include <cmath>
#include <cstdint>

#include "engine/cuda/layout.cuh"

namespace kvtier::engine::cuda {

struct AttnParams {
  const bf16* q;
  const SeqInfo* seqs;
  const int32_t* page_table;
  const PrefillWorkItem* work;  // prefill only
  const int32_t* decode_seqs;   // decode only
  const bf16* cache;
  float* partial_acc;  // decode only
  float* partial_lse;  // decode only
  bf16* out;
  int64_t page_stride;
  int num_heads;
  int num_kv_heads;
  int block_tokens;
  float scale_log2;  // log2(e) / sqrt(head_dim)
  int block_shift;   // log2(block_tokens) when a power of two, else -1 (prefill only)
};

inline AttnParams MakeAttnParams(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
                                 int num_heads, const KvCacheView& cache, bf16* out) {
  AttnParams p{};
  p.q = q;
  p.seqs = seqs;
  p.page_table = page_table;
  p.cache = cache.base;
  p.out = out;
  p.page_stride = cache.page_stride;
  p.num_heads = num_heads;
  p.num_kv_heads = cache.num_kv_heads;
  p.block_tokens = cache.block_tokens;
  p.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(double(cache.head_dim)));
  p.block_shift = -1;
  for (int sh = 0; sh < 31; ++sh) {
    if ((1 << sh) == cache.block_tokens) p.block_shift = sh;
  }
  return p;
}

inline bool ValidGqa(int num_heads, int num_kv_heads) {
  return num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0;
}

// Online softmax over one S tile held in mma C fragments: `s` holds NB n-blocks of 8 columns,
// already scaled to the log2 domain and masked (-inf). Rows g (r = 0) and g + 8 (r = 1) of the
// warp's 16 rows; the four threads of a quad share a row. Rescales `o` (DN n-blocks) and `l`
// (per-thread partial row sums; reduced across the quad at the end) and turns `s` into P.
template <int NB, int DN>
__device__ __forceinline__ void OnlineSoftmax(float (&s)[NB][4], float (&m)[2], float (&l)[2],
                                              float (&o)[DN][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[r], mx);
    // A row with every key so far masked keeps m = -inf; subtract 0 then (exp2(-inf) = 0).
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f(m[r] - m_use);
    m[r] = m_new;
    float rs = 0.f;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      s[nb][2 * r] = exp2f(s[nb][2 * r] - m_use);
      s[nb][2 * r + 1] = exp2f(s[nb][2 * r + 1] - m_use);
      rs += s[nb][2 * r] + s[nb][2 * r + 1];
    }
    l[r] = l[r] * alpha + rs;
#pragma unroll
    for (int nb = 0; nb < DN; ++nb) {
      o[nb][2 * r] *= alpha;
      o[nb][2 * r + 1] *= alpha;
    }
  }
}

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_ATTENTION_CUH_
