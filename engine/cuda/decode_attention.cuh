// Decode attention of the CUDA backend (engine/cuda/cuda_backend.cu): split-KV flash-decoding on
// tensor cores over the paged KV cache, then a combine kernel (docs/engine-cuda.md, "Decode
// attention"). A plain launcher (raw device pointers, a stream) that only enqueues work and
// returns the launch error, so it may be captured into CUDA graphs; thread-compatible.
// Includable from host-only C++.
#ifndef KVTIER_ENGINE_CUDA_DECODE_ATTENTION_CUH_
#define KVTIER_ENGINE_CUDA_DECODE_ATTENTION_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/layout.cuh"

namespace kvtier::engine::cuda {

// Most splits of the decode kernel (workspace sizing).
inline constexpr int kMaxDecodeSplits = 128;
// Most query heads per KV head that the decode kernel handles.
inline constexpr int kMaxGqaRatio = 16;

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

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_DECODE_ATTENTION_CUH_
