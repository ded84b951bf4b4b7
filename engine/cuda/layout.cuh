// The memory layouts that the CUDA backend (engine/cuda/cuda_backend.cu) and its kernels share:
// one layer of the paged KV cache (KvCacheView), one sequence of a forward step (SeqInfo) and one
// work item of prefill attention (PrefillWorkItem). docs/engine-cuda.md describes the cache and
// the step's metadata. Plain data, includable from host-only
// C++; the views do not own the memory they point to (the backend does).
#ifndef KVTIER_ENGINE_CUDA_LAYOUT_CUH_
#define KVTIER_ENGINE_CUDA_LAYOUT_CUH_

#include <cuda_bf16.h>

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

// One work item of prefill attention: query rows
// [q_tile * kPrefillBlockM, (q_tile + 1) * kPrefillBlockM) of sequence `seq` (all heads); a CTA
// per head (or per group of heads), or per 64-row half of it, depending on the kernel's
// configuration (engine/cuda/prefill_kernel.cuh).
struct PrefillWorkItem {
  int32_t seq;
  int32_t q_tile;
};

inline constexpr int kPrefillBlockM = 128;

// One layer of the paged KV cache. Page p of the layer starts at base + p * page_stride
// (elements) and holds [K|V][kv_head][token][head_dim] (K after RoPE).
struct KvCacheView {
  bf16* base = nullptr;
  int64_t page_stride = 0;  // 2 * num_kv_heads * block_tokens * head_dim
  int num_kv_heads = 0;
  int block_tokens = 0;
  int head_dim = 0;  // 64 or 128
};

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_LAYOUT_CUH_
