// Element-wise and row-wise kernels of the CUDA backend (engine/cuda/cuda_backend.cu):
// embedding gather, add + RMSNorm, q/k/v bias + RoPE + K/V cache write, SiLU · up, argmax. Each
// sits behind a plain launcher (raw device pointers, a stream) so that tests can run it alone;
// docs/engine-cuda.md ("The rest") has the designs. Includable from host-only C++.
//
// Conventions: activations are row-major [rows, features]; bf16 storage, fp32 arithmetic; the
// residual stream is fp32. Launchers only enqueue work: they return the launch error
// (cudaGetLastError) and never synchronize, so they may be captured into CUDA graphs. They are
// thread-compatible (no global state besides per-function attributes).
#ifndef KVTIER_ENGINE_CUDA_ELEMENTWISE_CUH_
#define KVTIER_ENGINE_CUDA_ELEMENTWISE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/layout.cuh"

namespace kvtier::engine::cuda {

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

// out[r] = argmax_j logits[r, j] for r < rows (lowest index on ties; NaN counts as -inf).
cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* out,
                         cudaStream_t stream);

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_ELEMENTWISE_CUH_
