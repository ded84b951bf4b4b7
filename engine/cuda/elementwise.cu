// Element-wise and row-wise kernels of the CUDA backend; see elementwise.cuh for the contracts and
// docs/engine-cuda.md for the designs.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "engine/cuda/elementwise.cuh"
#include "engine/cuda/mma.cuh"

namespace kvtier::engine::cuda {
namespace {

__device__ __forceinline__ void Load8(const bf16* p, float (&f)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

__device__ __forceinline__ void Store8(bf16* p, const float (&f)[8]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Sum over the block; every thread gets the result. blockDim.x % 32 == 0, <= 1024.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    float s = lane < nwarps ? partial[lane] : 0.f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

__global__ void __launch_bounds__(128)
    EmbeddingKernel(const bf16* __restrict__ table, const int32_t* __restrict__ tokens, int hidden,
                    float* __restrict__ out) {
  const int row = blockIdx.x;
  const bf16* src = table + static_cast<int64_t>(tokens[row]) * hidden;
  float* dst = out + static_cast<int64_t>(row) * hidden;
  for (int v = threadIdx.x; v < hidden / 8; v += blockDim.x) {
    float f[8];
    Load8(src + v * 8, f);
    reinterpret_cast<float4*>(dst)[2 * v] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(dst)[2 * v + 1] = make_float4(f[4], f[5], f[6], f[7]);
  }
}

constexpr int kNormThreads = 256;

__global__ void __launch_bounds__(kNormThreads)
    AddRmsNormKernel(float* __restrict__ residual, const bf16* __restrict__ delta,
                     const int32_t* __restrict__ rows, int hidden, const float* __restrict__ weight,
                     float eps, bf16* __restrict__ out, bool write_residual) {
  extern __shared__ float4 xs[];  // hidden / 4
  const int i = blockIdx.x;
  const int r = rows != nullptr ? rows[i] : i;
  float4* x = reinterpret_cast<float4*>(residual + static_cast<int64_t>(r) * hidden);
  const uint2* dl = delta != nullptr
                        ? reinterpret_cast<const uint2*>(delta + static_cast<int64_t>(r) * hidden)
                        : nullptr;
  const int nv = hidden / 4;
  float ss = 0.f;
  for (int v = threadIdx.x; v < nv; v += blockDim.x) {
    float4 a = x[v];
    if (dl != nullptr) {
      const uint2 d = dl[v];
      const float2 d01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&d.x));
      const float2 d23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&d.y));
      a.x += d01.x;
      a.y += d01.y;
      a.z += d23.x;
      a.w += d23.y;
      if (write_residual) x[v] = a;
    }
    xs[v] = a;
    ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
  }
  ss = BlockSum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(hidden) + eps);
  const float4* w = reinterpret_cast<const float4*>(weight);
  uint2* o = reinterpret_cast<uint2*>(out + static_cast<int64_t>(i) * hidden);
  for (int v = threadIdx.x; v < nv; v += blockDim.x) {
    const float4 a = xs[v];
    const float4 ww = w[v];
    uint2 packed;
    packed.x = PackBf16(a.x * inv * ww.x, a.y * inv * ww.y);
    packed.y = PackBf16(a.z * inv * ww.z, a.w * inv * ww.w);
    o[v] = packed;
  }
}

__global__ void __launch_bounds__(128)
    QkvRopeKvKernel(const bf16* __restrict__ qkv, const float* __restrict__ bias,
                    const int32_t* __restrict__ positions, const int32_t* __restrict__ slots,
                    int num_heads, const float* __restrict__ inv_freq, KvCacheView cache,
                    bf16* __restrict__ q_out) {
  __shared__ float cos_s[64];
  __shared__ float sin_s[64];
  const int D = cache.head_dim;
  const int half = D / 2;
  const int kv_heads = cache.num_kv_heads;
  const int B = cache.block_tokens;
  const int row = blockIdx.x;
  const int pos = positions[row];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    // The shared RoPE convention (engine/rope.h): one fp32 multiply, then accurate sincosf.
    const float angle = __fmul_rn(__int2float_rn(pos), inv_freq[i]);
    float s, c;
    sincosf(angle, &s, &c);
    sin_s[i] = s;
    cos_s[i] = c;
  }
  __syncthreads();
  const int width = (num_heads + 2 * kv_heads) * D;
  const bf16* src = qkv + static_cast<int64_t>(row) * width;
  const int slot = slots[row];
  const int page = slot / B;
  const int tok = slot - page * B;
  bf16* kv_base =
      cache.base + static_cast<int64_t>(page) * cache.page_stride + static_cast<int64_t>(tok) * D;
  const int rope_units = (num_heads + kv_heads) * (D / 16);
  const int v_units = kv_heads * (D / 8);
  for (int u = threadIdx.x; u < rope_units + v_units; u += blockDim.x) {
    if (u < rope_units) {
      const int head = u / (D / 16);
      const int i0 = (u % (D / 16)) * 8;
      float x1[8], x2[8];
      Load8(src + head * D + i0, x1);
      Load8(src + head * D + half + i0, x2);
      if (bias != nullptr) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          x1[e] += bias[head * D + i0 + e];
          x2[e] += bias[head * D + half + i0 + e];
        }
      }
      float y1[8], y2[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float c = cos_s[i0 + e], s = sin_s[i0 + e];
        y1[e] = __fsub_rn(__fmul_rn(x1[e], c), __fmul_rn(x2[e], s));
        y2[e] = __fadd_rn(__fmul_rn(x2[e], c), __fmul_rn(x1[e], s));
      }
      bf16* dst = head < num_heads ? q_out + (static_cast<int64_t>(row) * num_heads + head) * D
                                   : kv_base + static_cast<int64_t>(head - num_heads) * B * D;
      Store8(dst + i0, y1);
      Store8(dst + half + i0, y2);
    } else {
      const int uu = u - rope_units;
      const int kvh = uu / (D / 8);
      const int c0 = (uu % (D / 8)) * 8;
      const int col = (num_heads + kv_heads + kvh) * D + c0;
      float x[8];
      Load8(src + col, x);
      if (bias != nullptr) {
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] += bias[col + e];
      }
      Store8(kv_base + static_cast<int64_t>(kv_heads + kvh) * B * D + c0, x);
    }
  }
}

__global__ void __launch_bounds__(256)
    SiluMulKernel(const bf16* __restrict__ gate_up, int rows, int inter, bf16* __restrict__ out) {
  const int vpr = inter / 8;
  const int64_t total = static_cast<int64_t>(rows) * vpr;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / vpr;
    const int c = static_cast<int>(idx - r * vpr) * 8;
    float g[8], u[8], y[8];
    Load8(gate_up + r * 2 * inter + c, g);
    Load8(gate_up + r * 2 * inter + inter + c, u);
#pragma unroll
    for (int e = 0; e < 8; ++e) y[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
    Store8(out + r * inter + c, y);
  }
}

constexpr int kArgmaxThreads = 512;

__device__ __forceinline__ bool Better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__global__ void __launch_bounds__(kArgmaxThreads)
    ArgmaxKernel(const float* __restrict__ logits, int vocab, int32_t* __restrict__ out) {
  const float* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    float v = x[i];
    if (isnan(v)) v = -INFINITY;
    if (Better(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
    if (Better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    bv = lane < nwarps ? sv[lane] : -INFINITY;
    bi = lane < nwarps ? si[lane] : INT_MAX;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
      if (Better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0) out[blockIdx.x] = bi;
  }
}

}  // namespace

cudaError_t LaunchEmbedding(const bf16* table, const int32_t* tokens, int rows, int hidden,
                            float* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (hidden % 8 != 0) return cudaErrorInvalidValue;
  EmbeddingKernel<<<rows, 128, 0, stream>>>(table, tokens, hidden, out);
  return cudaGetLastError();
}

cudaError_t LaunchAddRmsNorm(float* residual, const bf16* delta, const int32_t* rows, int n,
                             int hidden, const float* weight, float eps, bf16* out,
                             bool write_residual, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (hidden % 8 != 0) return cudaErrorInvalidValue;
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        AddRmsNormKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  AddRmsNormKernel<<<n, kNormThreads, smem, stream>>>(residual, delta, rows, hidden, weight, eps,
                                                      out, write_residual);
  return cudaGetLastError();
}

cudaError_t LaunchQkvRopeKv(const bf16* qkv, const float* bias, const int32_t* positions,
                            const int32_t* slots, int rows, int num_heads, const float* inv_freq,
                            const KvCacheView& cache, bf16* q_out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if ((cache.head_dim != 64 && cache.head_dim != 128) || cache.block_tokens <= 0 ||
      cache.num_kv_heads <= 0 || num_heads <= 0) {
    return cudaErrorInvalidValue;
  }
  QkvRopeKvKernel<<<rows, 128, 0, stream>>>(qkv, bias, positions, slots, num_heads, inv_freq, cache,
                                            q_out);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const bf16* gate_up, int rows, int inter, bf16* out,
                          cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (inter % 8 != 0) return cudaErrorInvalidValue;
  const int64_t total = static_cast<int64_t>(rows) * (inter / 8);
  const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, int64_t{1} << 20));
  SiluMulKernel<<<blocks, 256, 0, stream>>>(gate_up, rows, inter, out);
  return cudaGetLastError();
}

cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* out,
                         cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  ArgmaxKernel<<<rows, kArgmaxThreads, 0, stream>>>(logits, vocab, out);
  return cudaGetLastError();
}

}  // namespace kvtier::engine::cuda
