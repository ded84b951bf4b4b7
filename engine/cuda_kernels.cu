// CUDA kernels of the bf16 backend; see cuda_kernels.cuh for the contracts and
// docs/engine-cuda.md for the designs.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "engine/cuda_kernels.cuh"

namespace kvtier::engine::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Small device helpers.

__device__ __forceinline__ uint32_t SmemU32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1; zero-fills the destination when !valid
// (src is then not read but must still be a valid address).
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void Ldmatrix4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void Ldmatrix4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// c += a * b for one m16n8k16 tile (bf16 in, fp32 accumulate). Fragment layouts (g = lane / 4,
// t = lane % 4): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
// b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g); c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1).
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16x2 register, `lo` in the low half (the lower column index).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

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

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][D] bf16 tile whose chunks are
// XOR-swizzled by row % 8, so that ldmatrix (8 rows, one chunk column) and the row-wise
// cp.async writes are free of bank conflicts.
template <int D>
__device__ __forceinline__ uint32_t Swz(int row, int chunk) {
  return static_cast<uint32_t>(row * (D * 2) + ((chunk ^ (row & 7)) << 4));
}

// ldmatrix addressing in a Swz<D> tile: lane supplies row `row_lane` (row_lane % 8 == lane % 8)
// and chunk 2 * k + chunk_lane (chunk_lane in {0, 1}) for the k-th 16-column step. Because
// (2k + c) ^ r == 2k ^ (c ^ r), the step's offset is LaneOffset ^ (k << 5), and rows 16 * i
// further down add 16 * i * D * 2: one XOR and one add per ldmatrix, no per-step registers.
template <int D>
__device__ __forceinline__ uint32_t LaneOffset(int row_lane, int chunk_lane) {
  return static_cast<uint32_t>(row_lane * (D * 2) + ((chunk_lane ^ (row_lane & 7)) << 4));
}
template <int D>
__device__ __forceinline__ uint32_t StepOffset(uint32_t lane_offset, int k, int row_block) {
  return (lane_offset ^ static_cast<uint32_t>(k << 5)) +
         static_cast<uint32_t>(row_block * 16 * D * 2);
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

// ---------------------------------------------------------------------------------------------
// Element-wise and row-wise kernels.

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

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// Prefill attention: FlashAttention-2 forward over the paged cache.
//
// CTA = (head, work item): kPrefillBlockM = 128 query rows; kWarps warps of kMTiles m16 tiles
// each (one K/V fragment read from shared memory feeds kMTiles MMAs). K/V tiles of kBlockN
// tokens are gathered row by row through the page table with cp.async into XOR-swizzled
// shared memory, double-buffered (K0 V0 K1 V1). Q is either held as A fragments in registers
// (staged through buffer 1 before the loop) or kept in its own shared tile and re-read per
// K/V tile. S = Q K^T and O += P V run on mma.sync m16n8k16 (bf16 in, fp32 accumulate); P
// goes from the S accumulators to A fragments in registers; softmax is online, in fp32, in
// the log2 domain. Warps skip K/V tiles entirely after their last row (causal).

template <int D>
struct PrefillTraits;
template <>
struct PrefillTraits<64> {
  static constexpr int kWarps = 4;
  static constexpr int kMTiles = 2;
  static constexpr int kBlockN = 64;
  static constexpr bool kQInRegs = true;
  static constexpr int kMinBlocks = 2;
};
template <>
struct PrefillTraits<128> {
  static constexpr int kWarps = 4;
  static constexpr int kMTiles = 2;
  static constexpr int kBlockN = 32;
  static constexpr bool kQInRegs = false;
  static constexpr int kMinBlocks = 2;
};

template <int D>
constexpr int PrefillThreads() {
  return PrefillTraits<D>::kWarps * 32;
}

template <int D>
constexpr int PrefillSmemBytes() {
  using Tr = PrefillTraits<D>;
  return (Tr::kQInRegs ? 0 : kPrefillBlockM * D * 2) + 4 * Tr::kBlockN * D * 2;
}

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
  int block_shift;   // log2(block_tokens) when a power of two, else -1 (prefill variants)
};

template <int D>
__global__ void __launch_bounds__(PrefillThreads<D>(), PrefillTraits<D>::kMinBlocks)
    PrefillAttentionKernel(const AttnParams p) {
  using Tr = PrefillTraits<D>;
  constexpr int kThreads = PrefillThreads<D>();
  constexpr int kMT = Tr::kMTiles;
  constexpr int kBlockN = Tr::kBlockN;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kTileBytes = kBlockN * D * 2;
  constexpr int kQBytes = kPrefillBlockM * D * 2;
  static_assert(Tr::kWarps * kMT * 16 == kPrefillBlockM, "CTA rows");
  static_assert(!Tr::kQInRegs || kQBytes <= 2 * kTileBytes, "Q staging must fit buffer 1");
  static_assert(kBlockN % 16 == 0 && (kPrefillBlockM * kChunks) % kThreads == 0 &&
                    (kBlockN * kChunks) % kThreads == 0,
                "tile shapes");
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = SmemU32(smem);
  const uint32_t kv_smem = smem_base + (Tr::kQInRegs ? 0 : kQBytes);
  const uint32_t q_smem = Tr::kQInRegs ? kv_smem + 2 * kTileBytes : smem_base;

  const int h = blockIdx.x;
  const PrefillWorkItem item = p.work[blockIdx.y];
  const SeqInfo si = p.seqs[item.seq];
  const int group = p.num_heads / p.num_kv_heads;
  const int kvh = h / group;
  const int q0 = item.q_tile * kPrefillBlockM;
  const int n_q = min(kPrefillBlockM, si.n_new - q0);  // valid query rows of this CTA (>= 1)
  const int kv_len = si.start_pos + si.n_new;
  const int kv_end = si.start_pos + q0 + n_q;  // keys [0, kv_end) are visible to some row
  const int n_tiles = (kv_end + kBlockN - 1) / kBlockN;
  const int32_t* pt = p.page_table + si.page_off;
  const int B = p.block_tokens;
  const int q_stride = p.num_heads * D;
  const bf16* k_head = p.cache + static_cast<int64_t>(kvh) * B * D;
  const bf16* v_head = p.cache + static_cast<int64_t>(p.num_kv_heads + kvh) * B * D;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // Q tile (rows past n_q zero-filled).
  {
    const bf16* q_src =
        p.q + static_cast<int64_t>(si.q_row + q0) * q_stride + static_cast<int64_t>(h) * D;
#pragma unroll
    for (int i = 0; i < kPrefillBlockM * kChunks / kThreads; ++i) {
      const int c = tid + i * kThreads;
      const int r = c / kChunks, ch = c % kChunks;
      const bool valid = r < n_q;
      const bf16* src = valid ? q_src + static_cast<int64_t>(r) * q_stride + ch * 8 : p.q;
      CpAsync16(q_smem + Swz<D>(r, ch), src, valid);
    }
  }
  // K/V tile `tile` into buffer `buf`; rows at positions >= kv_len zero-filled (their scores
  // are masked, and zero V rows keep 0 * garbage from making NaNs).
  auto load_kv = [&](int tile, int buf) {
    const uint32_t k_dst = kv_smem + buf * 2 * kTileBytes;
    const uint32_t v_dst = k_dst + kTileBytes;
    const int k0 = tile * kBlockN;
#pragma unroll
    for (int i = 0; i < kBlockN * kChunks / kThreads; ++i) {
      const int c = tid + i * kThreads;
      const int r = c / kChunks, ch = c % kChunks;
      const int pos = k0 + r;
      const bool valid = pos < kv_len;
      int64_t off = 0;
      if (valid) {
        const int pi = pos / B;
        off = static_cast<int64_t>(pt[pi]) * p.page_stride +
              static_cast<int64_t>(pos - pi * B) * D + ch * 8;
      }
      CpAsync16(k_dst + Swz<D>(r, ch), k_head + off, valid);
      CpAsync16(v_dst + Swz<D>(r, ch), v_head + off, valid);
    }
  };
  load_kv(0, 0);
  CpAsyncCommit();  // group 0: Q and K/V tile 0

  // Lane offsets of the ldmatrix patterns: A fragments (Q: rows 0-15, chunk 0/1), B fragments
  // of K (two n-blocks of 8 tokens, chunk 0/1) and, transposed, of V (tokens 0-15, chunk 0/1).
  const uint32_t a_lane = LaneOffset<D>(lane & 15, lane >> 4);
  const uint32_t k_lane = LaneOffset<D>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  const uint32_t v_lane = LaneOffset<D>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);

  uint32_t qf[Tr::kQInRegs ? kMT : 1][Tr::kQInRegs ? D / 16 : 1][4];
  if constexpr (Tr::kQInRegs) {
    CpAsyncWait<0>();
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        Ldmatrix4(qf[mt][ks], q_smem + StepOffset<D>(a_lane, ks, warp * kMT + mt));
      }
    }
    __syncthreads();  // buffer 1 (the Q staging area) is overwritten from here on
  }

  float o[kMT][D / 8][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
      o[mt][nb][0] = o[mt][nb][1] = o[mt][nb][2] = o[mt][nb][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }
  const int g = lane >> 2, t = lane & 3;
  const int warp_row0 = warp * kMT * 16;  // the warp's first row within the CTA's tile
  const bool warp_active = warp_row0 < n_q;
  const int warp_pos0 = si.start_pos + q0 + warp_row0;  // position of that row
  const int warp_pos_last = warp_pos0 + kMT * 16 - 1;

  for (int j = 0; j < n_tiles; ++j) {
    if (j + 1 < n_tiles) load_kv(j + 1, (j + 1) & 1);
    CpAsyncCommit();
    CpAsyncWait<1>();  // everything but tile j + 1 has landed (for this thread)
    __syncthreads();   // ... and for every thread
    const int k0 = j * kBlockN;
    // Warp-uniform: skip tiles whose keys are all after the warp's last row.
    if (warp_active && k0 <= warp_pos_last) {
      const uint32_t k_s = kv_smem + (j & 1) * 2 * kTileBytes;
      const uint32_t v_s = k_s + kTileBytes;
      float s[kMT][kBlockN / 8][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb) {
          s[mt][nb][0] = s[mt][nb][1] = s[mt][nb][2] = s[mt][nb][3] = 0.f;
        }
      }
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t qa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (Tr::kQInRegs) {
#pragma unroll
            for (int x = 0; x < 4; ++x) qa[mt][x] = qf[mt][ks][x];
          } else {
            Ldmatrix4(qa[mt], q_smem + StepOffset<D>(a_lane, ks, warp * kMT + mt));
          }
        }
#pragma unroll
        for (int pp = 0; pp < kBlockN / 16; ++pp) {
          uint32_t b[4];
          Ldmatrix4(b, k_s + StepOffset<D>(k_lane, ks, pp));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(s[mt][2 * pp], qa[mt], b[0], b[1]);
            MmaBf16(s[mt][2 * pp + 1], qa[mt], b[2], b[3]);
          }
        }
      }
      const bool need_mask = k0 + kBlockN - 1 > warp_pos0;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const int row_pos = warp_pos0 + mt * 16 + g;  // position of this thread's row g
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float v = s[mt][nb][e] * p.scale_log2;
            if (need_mask) {
              const int key = k0 + nb * 8 + 2 * t + (e & 1);
              const int qpos = row_pos + ((e >> 1) << 3);
              if (key > qpos) v = -INFINITY;
            }
            s[mt][nb][e] = v;
          }
        }
        OnlineSoftmax(s[mt], m[mt], l[mt], o[mt]);
      }
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          a[mt][0] = PackBf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          a[mt][1] = PackBf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          a[mt][2] = PackBf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          a[mt][3] = PackBf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int jj = 0; jj < D / 16; ++jj) {
          uint32_t b[4];
          Ldmatrix4Trans(b, v_s + StepOffset<D>(v_lane, jj, kk));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(o[mt][2 * jj], a[mt], b[0], b[1]);
            MmaBf16(o[mt][2 * jj + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // buffer j & 1 is refilled at iteration j + 1
  }

  if (warp_active) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float lr = l[mt][r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const float inv = lr > 0.f ? 1.0f / lr : 0.f;
        const int row = warp_row0 + mt * 16 + g + 8 * r;
        if (row < n_q) {
          bf16* dst = p.out + static_cast<int64_t>(si.q_row + q0 + row) * q_stride +
                      static_cast<int64_t>(h) * D + 2 * t;
#pragma unroll
          for (int nb = 0; nb < D / 8; ++nb) {
            *reinterpret_cast<uint32_t*>(dst + nb * 8) =
                PackBf16(o[mt][nb][2 * r] * inv, o[mt][nb][2 * r + 1] * inv);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill attention variants: the same algorithm as PrefillAttentionKernel, generalized over
// the CTA shape, with a leaner loop:
// - a ring of kStages K/V stages with one barrier per tile (the barrier that publishes tile j
//   also retires stage j - 1, which is refilled with tile j + kStages - 1 right after it);
// - the softmax scale folded into one FFMA per score (max taken on raw scores), exp2 as
//   ex2.approx.ftz;
// - page lookups by shift when block_tokens is a power of two; loader offsets that are
//   compile-time steps from one per-thread base (no per-row registers across the loop);
// - optionally several q heads of one KV group per CTA (kHeads): each K/V tile loaded once
//   into shared memory serves kHeads heads. A work item's 128 rows may be split into
//   kPrefillBlockM / kRowsPerHead sub-tiles (separate CTAs, the later sub-tile first).

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Online softmax like OnlineSoftmax, on raw (unscaled, masked) scores: m is kept in the scaled
// log2 domain and each score costs one FFMA and one ex2.
template <int NB, int DN>
__device__ __forceinline__ void OnlineSoftmaxRaw(float (&s)[NB][4], float scale_log2, float (&m)[2],
                                                 float (&l)[2], float (&o)[DN][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[r], mx * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = FastExp2(m[r] - m_use);
    m[r] = m_new;
    const float neg_m = -m_use;
    float rs = 0.f;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      s[nb][2 * r] = FastExp2(fmaf(s[nb][2 * r], scale_log2, neg_m));
      s[nb][2 * r + 1] = FastExp2(fmaf(s[nb][2 * r + 1], scale_log2, neg_m));
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

// kWarps warps of kMTiles m16 tiles; CTA rows = kHeads heads x kRowsPerHead rows; K/V tiles of
// kBlockN tokens in kStages stages, computed kComputeN keys at a time (S = kComputeN columns
// of registers: 64-token tiles with 32-key steps keep hd 128 with 32 rows per warp in 255
// registers); Q as A fragments in registers (staged in the last stage) or re-read from its own
// shared tile per step.
template <int D_, int kWarps_, int kMTiles_, int kBlockN_, bool kQInRegs_, int kStages_,
          int kRowsPerHead_, int kHeads_, int kMinBlocks_, int kComputeN_ = kBlockN_>
struct PrefillCfg {
  static constexpr int kComputeN = kComputeN_;  // keys per softmax step (divides kBlockN)
  static constexpr int D = D_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kMTiles = kMTiles_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr bool kQInRegs = kQInRegs_;
  static constexpr int kStages = kStages_;
  static constexpr int kRowsPerHead = kRowsPerHead_;
  static constexpr int kHeads = kHeads_;
  static constexpr int kMinBlocks = kMinBlocks_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kWarps * kMTiles * 16;
  static constexpr int kTileBytes = kBlockN * D * 2;
  static constexpr int kStageBytes = 2 * kTileBytes;
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kSmem = (kQInRegs ? 0 : kQBytes) + kStages * kStageBytes;
  static constexpr int kSubTiles = kPrefillBlockM / kRowsPerHead;
  static_assert(kRows == kHeads * kRowsPerHead, "CTA rows");
  static_assert(kRowsPerHead % (kMTiles * 16) == 0, "a warp's rows lie in one head");
  static_assert(kPrefillBlockM % kRowsPerHead == 0, "sub-tiles of a work item");
  static_assert(!kQInRegs || kQBytes <= kStageBytes, "Q staging must fit one stage");
  static_assert(kStages >= 2 && kComputeN % 16 == 0 && kBlockN % kComputeN == 0, "pipeline");
};

template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
    PrefillVariantKernel(const AttnParams p) {
  constexpr int D = C::D;
  constexpr int kMT = C::kMTiles;
  constexpr int kBlockN = C::kBlockN;
  constexpr int kCN = C::kComputeN;
  constexpr int kThreads = C::kThreads;
  constexpr int kStages = C::kStages;
  constexpr int kChunks = D / 8;                // 16-byte chunks per row
  constexpr int kRowStep = kThreads / kChunks;  // rows per pass of the CTA's copies
  constexpr int kStepBytes = kRowStep * D * 2;
  static_assert(kThreads % kChunks == 0 && kRowStep % 8 == 0 && kBlockN % kRowStep == 0 &&
                    C::kRows % kRowStep == 0,
                "copy shapes (a pass keeps each thread's swizzle)");
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = SmemU32(smem);
  const uint32_t kv_smem = smem_base + (C::kQInRegs ? 0 : C::kQBytes);
  const uint32_t q_smem = C::kQInRegs ? kv_smem + (kStages - 1) * C::kStageBytes : smem_base;

  const int h0 = blockIdx.x * C::kHeads;
  const int wi = blockIdx.y / C::kSubTiles;
  const int sub = C::kSubTiles - 1 - static_cast<int>(blockIdx.y % C::kSubTiles);
  const PrefillWorkItem item = p.work[wi];
  const SeqInfo si = p.seqs[item.seq];
  const int q0 = item.q_tile * kPrefillBlockM + sub * C::kRowsPerHead;
  if (q0 >= si.n_new) return;  // an empty sub-tile (whole CTA, before any barrier)
  const int n_q = min(C::kRowsPerHead, si.n_new - q0);  // valid rows per head (>= 1)
  const int group = p.num_heads / p.num_kv_heads;
  const int kvh = h0 / group;
  const int kv_len = si.start_pos + si.n_new;
  const int kv_end = si.start_pos + q0 + n_q;  // keys [0, kv_end) are visible to some row
  const int n_tiles = (kv_end + kBlockN - 1) / kBlockN;
  const int page_off = si.page_off;
  const int q_stride = p.num_heads * D;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int ld_row = tid / kChunks, ld_ch = tid % kChunks;
  const uint32_t ld_off = Swz<D>(ld_row, ld_ch);  // + i * kStepBytes for pass i
  // Element offset of this thread's K chunk in a page (V: + num_kv_heads * B * D). Few
  // registers live across the loop: the rest of the loader's operands come from the kernel
  // parameters (constant bank) at each use.
  const int k_off = kvh * p.block_tokens * D + ld_ch * 8;

  // Q tile: CTA row r is row r % kRowsPerHead of head h0 + r / kRowsPerHead (rows past n_q
  // zero-filled).
  {
    const bf16* q_src = p.q + static_cast<int64_t>(si.q_row + q0) * q_stride +
                        static_cast<int64_t>(h0) * D + ld_ch * 8;
#pragma unroll
    for (int i = 0; i < C::kRows / kRowStep; ++i) {
      const int r = ld_row + i * kRowStep;
      const int hh = r / C::kRowsPerHead, rr = r % C::kRowsPerHead;
      const bool valid = rr < n_q;
      const bf16* src = valid ? q_src + static_cast<int64_t>(rr) * q_stride + hh * D : p.q;
      CpAsync16(q_smem + ld_off + i * kStepBytes, src, valid);
    }
    CpAsyncCommit();
  }
  // K/V tile `tile` into stage `stage`; rows at positions >= kv_len zero-filled.
  auto load_kv = [&](int tile, int stage) {
    const uint32_t k_dst = kv_smem + stage * C::kStageBytes + ld_off;
    const int pos0 = tile * kBlockN + ld_row;
    const int32_t* pt = p.page_table + page_off;
    const int B = p.block_tokens;
    const bf16* k_src = p.cache + k_off;
    const int64_t v_delta = static_cast<int64_t>(p.num_kv_heads) * B * D;
#pragma unroll
    for (int i = 0; i < kBlockN / kRowStep; ++i) {
      const int pos = pos0 + i * kRowStep;
      const bool valid = pos < kv_len;
      int64_t off = 0;
      if (valid) {
        const int pi = p.block_shift >= 0 ? pos >> p.block_shift : pos / B;
        off = static_cast<int64_t>(__ldg(pt + pi)) * p.page_stride +
              static_cast<int64_t>(pos - pi * B) * D;
      }
      CpAsync16(k_dst + i * kStepBytes, k_src + off, valid);
      CpAsync16(k_dst + C::kTileBytes + i * kStepBytes, k_src + (off + v_delta), valid);
    }
  };
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles) load_kv(st, st);
    CpAsyncCommit();
  }

  const uint32_t a_lane = LaneOffset<D>(lane & 15, lane >> 4);
  const uint32_t k_lane = LaneOffset<D>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  const uint32_t v_lane = LaneOffset<D>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);

  uint32_t qf[C::kQInRegs ? kMT : 1][C::kQInRegs ? D / 16 : 1][4];
  if constexpr (C::kQInRegs) {
    CpAsyncWait<kStages - 1>();  // the Q group
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        Ldmatrix4(qf[mt][ks], q_smem + StepOffset<D>(a_lane, ks, warp * kMT + mt));
      }
    }
    // The staging stage is refilled only after the first barrier of the loop.
  }

  float o[kMT][D / 8][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
      o[mt][nb][0] = o[mt][nb][1] = o[mt][nb][2] = o[mt][nb][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }
  const int g = lane >> 2, t = lane & 3;
  const int warp_row0 = warp * kMT * 16;  // the warp's first CTA row
  const int warp_head = warp_row0 / C::kRowsPerHead;
  const int warp_rr0 = warp_row0 % C::kRowsPerHead;  // ... as a row of its head
  const bool warp_active = warp_rr0 < n_q;
  const int warp_pos0 = si.start_pos + q0 + warp_rr0;  // position of that row
  // Keys up to here matter to the warp (-1: none, an inactive warp).
  const int warp_key_last = warp_active ? warp_pos0 + kMT * 16 - 1 : -1;

  for (int j = 0; j < n_tiles; ++j) {
    CpAsyncWait<kStages - 2>();  // tile j has landed (for this thread)
    __syncthreads();             // ... for every thread; and stage j - 1 is free
    if (j + kStages - 1 < n_tiles) load_kv(j + kStages - 1, (j + kStages - 1) % kStages);
    CpAsyncCommit();
    const int k0 = j * kBlockN;
    const uint32_t k_s = kv_smem + (j % kStages) * C::kStageBytes;
    const uint32_t v_s = k_s + C::kTileBytes;
    // Steps are not unrolled, so that the compiler cannot overlap two steps' S registers.
#pragma unroll 1
    for (int c = 0; c < kBlockN / kCN; ++c) {
      const int kc0 = k0 + c * kCN;    // the step's first key
      if (kc0 > warp_key_last) break;  // warp-uniform (causal)
      const uint32_t k_c = k_s + c * kCN * D * 2, v_c = v_s + c * kCN * D * 2;
      float s[kMT][kCN / 8][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nb = 0; nb < kCN / 8; ++nb) {
          s[mt][nb][0] = s[mt][nb][1] = s[mt][nb][2] = s[mt][nb][3] = 0.f;
        }
      }
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t qa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (C::kQInRegs) {
#pragma unroll
            for (int x = 0; x < 4; ++x) qa[mt][x] = qf[mt][ks][x];
          } else {
            Ldmatrix4(qa[mt], q_smem + StepOffset<D>(a_lane, ks, warp * kMT + mt));
          }
        }
#pragma unroll
        for (int pp = 0; pp < kCN / 16; ++pp) {
          uint32_t b[4];
          Ldmatrix4(b, k_c + StepOffset<D>(k_lane, ks, pp));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(s[mt][2 * pp], qa[mt], b[0], b[1]);
            MmaBf16(s[mt][2 * pp + 1], qa[mt], b[2], b[3]);
          }
        }
      }
      // Only steps reaching past the warp's first row hold masked keys (this includes every
      // step with keys >= kv_len, which are zero-filled).
      if (kc0 + kCN - 1 > warp_pos0) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          // key > qpos  <=>  nb * 8 + (e & 1) > row_pos + 8 * (e >> 1) - kc0 - 2t
          const int lim = warp_pos0 + mt * 16 + g - kc0 - 2 * t;
#pragma unroll
          for (int nb = 0; nb < kCN / 8; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              if (nb * 8 + (e & 1) > lim + ((e >> 1) << 3)) s[mt][nb][e] = -INFINITY;
            }
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) OnlineSoftmaxRaw(s[mt], p.scale_log2, m[mt], l[mt], o[mt]);
      uint32_t pa[kMT][kCN / 16][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int kk = 0; kk < kCN / 16; ++kk) {
          pa[mt][kk][0] = PackBf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][kk][1] = PackBf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][kk][2] = PackBf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][kk][3] = PackBf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
      }
#pragma unroll
      for (int kk = 0; kk < kCN / 16; ++kk) {
#pragma unroll
        for (int jj = 0; jj < D / 16; ++jj) {
          uint32_t b[4];
          Ldmatrix4Trans(b, v_c + StepOffset<D>(v_lane, jj, kk));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            MmaBf16(o[mt][2 * jj], pa[mt][kk], b[0], b[1]);
            MmaBf16(o[mt][2 * jj + 1], pa[mt][kk], b[2], b[3]);
          }
        }
      }
    }
  }

  if (warp_active) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float lr = l[mt][r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const float inv = lr > 0.f ? 1.0f / lr : 0.f;
        const int row = warp_rr0 + mt * 16 + g + 8 * r;
        if (row < n_q) {
          bf16* dst = p.out + static_cast<int64_t>(si.q_row + q0 + row) * q_stride +
                      static_cast<int64_t>(h0 + warp_head) * D + 2 * t;
#pragma unroll
          for (int nb = 0; nb < D / 8; ++nb) {
            *reinterpret_cast<uint32_t*>(dst + nb * 8) =
                PackBf16(o[mt][nb][2 * r] * inv, o[mt][nb][2 * r + 1] * inv);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decode attention: split-KV flash-decoding on tensor cores.
//
// CTA = (decode sequence, kv head, split), 4 warps. The CTA's query is the GQA group's q heads
// (<= 16) as the 16 rows of an m16 tile (rows past the group are zero). The split's tokens are
// cut into 16-token tiles dealt round-robin to the warps; each warp runs its own 3-stage
// cp.async pipeline (no block barrier in the loop) and its own online softmax; the warps are
// merged through shared memory and the split writes (acc / l, log2-sum-exp) partials.

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kDecodeTile = 16;
constexpr int kDecodeStages = 3;

template <int D>
constexpr int DecodeWarpSmemBytes() {
  return kDecodeStages * 2 * kDecodeTile * D * 2;
}
template <int D>
constexpr int DecodeSmemBytes() {
  return kDecodeWarps * DecodeWarpSmemBytes<D>() + 16 * D * 2;
}

template <int D>
__global__ void __launch_bounds__(kDecodeThreads) DecodeAttentionKernel(const AttnParams p) {
  constexpr int kChunks = D / 8;
  constexpr int kTileBytes = kDecodeTile * D * 2;
  constexpr int kWarpBytes = DecodeWarpSmemBytes<D>();
  static_assert(kDecodeWarps * 16 * D * 4 + 2 * kDecodeWarps * 16 * 4 <= kDecodeWarps * kWarpBytes,
                "combine area must fit the pipeline area");
  extern __shared__ __align__(128) uint8_t smem[];

  const int dseq = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int num_splits = gridDim.z;
  const SeqInfo si = p.seqs[p.decode_seqs[dseq]];
  const int group = p.num_heads / p.num_kv_heads;
  const int kv_len = si.start_pos + si.n_new;
  const int q_row = si.q_row + si.n_new - 1;
  const int B = p.block_tokens;
  // The split's page range, from the length on the device: splits of at least
  // kDecodeWarps * kDecodeTile tokens; the trailing splits may be empty.
  const int n_pages = (kv_len + B - 1) / B;
  const int min_pages = (kDecodeWarps * kDecodeTile + B - 1) / B;
  const int pages_per_split = max(min_pages, (n_pages + num_splits - 1) / num_splits);
  const int t0 = split * pages_per_split * B;
  const int t1 = min(t0 + pages_per_split * B, kv_len);
  // Partial of head kvh * group + gg: index part + gg * num_splits.
  const int64_t part =
      (static_cast<int64_t>(dseq) * p.num_heads + static_cast<int64_t>(kvh) * group) * num_splits +
      split;
  const int tid = threadIdx.x;
  if (t0 >= t1) {  // block-uniform: an empty split writes neutral partials
    for (int i = tid; i < group * D; i += kDecodeThreads) {
      const int gg = i / D, d = i - gg * D;
      p.partial_acc[(part + static_cast<int64_t>(gg) * num_splits) * D + d] = 0.f;
    }
    if (tid < group) p.partial_lse[part + static_cast<int64_t>(tid) * num_splits] = -INFINITY;
    return;
  }

  const int warp = tid >> 5, lane = tid & 31;
  const uint32_t smem_base = SmemU32(smem);
  const uint32_t q_smem = smem_base + kDecodeWarps * kWarpBytes;
  const uint32_t w_smem = smem_base + warp * kWarpBytes;
  {
    const bf16* q_src =
        p.q + static_cast<int64_t>(q_row) * p.num_heads * D + static_cast<int64_t>(kvh) * group * D;
    for (int c = tid; c < 16 * kChunks; c += kDecodeThreads) {
      const int r = c / kChunks, ch = c % kChunks;
      const bool valid = r < group;
      CpAsync16(q_smem + Swz<D>(r, ch), valid ? q_src + r * D + ch * 8 : p.q, valid);
    }
    CpAsyncCommit();
    CpAsyncWait<0>();
    __syncthreads();
  }
  const uint32_t a_lane = LaneOffset<D>(lane & 15, lane >> 4);
  const uint32_t k_lane = LaneOffset<D>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  const uint32_t v_lane = LaneOffset<D>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) Ldmatrix4(qf[ks], q_smem + StepOffset<D>(a_lane, ks, 0));

  const int32_t* pt = p.page_table + si.page_off;
  const bf16* k_head = p.cache + static_cast<int64_t>(kvh) * B * D;
  const bf16* v_head = p.cache + static_cast<int64_t>(p.num_kv_heads + kvh) * B * D;
  const int n_tiles = (t1 - t0 + kDecodeTile - 1) / kDecodeTile;
  const int my_tiles = n_tiles > warp ? (n_tiles - warp + kDecodeWarps - 1) / kDecodeWarps : 0;
  // This warp's it-th tile into pipeline stage `stage`; tokens >= t1 zero-filled.
  auto load_tile = [&](int it, int stage) {
    const int tok0 = t0 + (warp + it * kDecodeWarps) * kDecodeTile;
    const uint32_t k_dst = w_smem + stage * 2 * kTileBytes;
    const uint32_t v_dst = k_dst + kTileBytes;
#pragma unroll
    for (int i = 0; i < kDecodeTile * kChunks / 32; ++i) {
      const int c = lane + i * 32;
      const int r = c / kChunks, ch = c % kChunks;
      const int pos = tok0 + r;
      const bool valid = pos < t1;
      int64_t off = 0;
      if (valid) {
        const int pi = pos / B;
        off = static_cast<int64_t>(pt[pi]) * p.page_stride +
              static_cast<int64_t>(pos - pi * B) * D + ch * 8;
      }
      CpAsync16(k_dst + Swz<D>(r, ch), k_head + off, valid);
      CpAsync16(v_dst + Swz<D>(r, ch), v_head + off, valid);
    }
  };
#pragma unroll
  for (int st = 0; st < kDecodeStages - 1; ++st) {
    if (st < my_tiles) load_tile(st, st);
    CpAsyncCommit();
  }

  float o[D / 8][4];
#pragma unroll
  for (int nb = 0; nb < D / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};
  const int g = lane >> 2, t = lane & 3;
  for (int it = 0; it < my_tiles; ++it) {
    const int nxt = it + kDecodeStages - 1;
    if (nxt < my_tiles) load_tile(nxt, nxt % kDecodeStages);
    CpAsyncCommit();
    CpAsyncWait<kDecodeStages - 1>();
    __syncwarp();
    const uint32_t k_s = w_smem + (it % kDecodeStages) * 2 * kTileBytes;
    const uint32_t v_s = k_s + kTileBytes;
    const int tok0 = t0 + (warp + it * kDecodeWarps) * kDecodeTile;
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t b[4];
      Ldmatrix4(b, k_s + StepOffset<D>(k_lane, ks, 0));
      MmaBf16(s[0], qf[ks], b[0], b[1]);
      MmaBf16(s[1], qf[ks], b[2], b[3]);
    }
    const bool need_mask = tok0 + kDecodeTile > t1;
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[nb][e] * p.scale_log2;
        if (need_mask && tok0 + nb * 8 + 2 * t + (e & 1) >= t1) v = -INFINITY;
        s[nb][e] = v;
      }
    }
    OnlineSoftmax(s, m, l, o);
    const uint32_t a[4] = {PackBf16(s[0][0], s[0][1]), PackBf16(s[0][2], s[0][3]),
                           PackBf16(s[1][0], s[1][1]), PackBf16(s[1][2], s[1][3])};
#pragma unroll
    for (int jj = 0; jj < D / 16; ++jj) {
      uint32_t b[4];
      Ldmatrix4Trans(b, v_s + StepOffset<D>(v_lane, jj, 0));
      MmaBf16(o[2 * jj], a, b[0], b[1]);
      MmaBf16(o[2 * jj + 1], a, b[2], b[3]);
    }
    __syncwarp();  // this stage is refilled at iteration it + 1
  }
  float lq[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lq[r] = l[r];
    lq[r] += __shfl_xor_sync(0xffffffffu, lq[r], 1);
    lq[r] += __shfl_xor_sync(0xffffffffu, lq[r], 2);
  }

  // Merge the warps through shared memory (reusing the pipeline area).
  __syncthreads();
  float* c_o = reinterpret_cast<float*>(smem);  // [warp][16][D]
  float* c_m = c_o + kDecodeWarps * 16 * D;     // [warp][16]
  float* c_l = c_m + kDecodeWarps * 16;         // [warp][16]
#pragma unroll
  for (int nb = 0; nb < D / 8; ++nb) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      *reinterpret_cast<float2*>(c_o + (warp * 16 + g + 8 * r) * D + nb * 8 + 2 * t) =
          make_float2(o[nb][2 * r], o[nb][2 * r + 1]);
    }
  }
  if (t == 0) {
    c_m[warp * 16 + g] = m[0];
    c_m[warp * 16 + g + 8] = m[1];
    c_l[warp * 16 + g] = lq[0];
    c_l[warp * 16 + g + 8] = lq[1];
  }
  __syncthreads();
  for (int i = tid; i < group * D; i += kDecodeThreads) {
    const int gg = i / D, d = i - gg * D;
    float mt = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) mt = fmaxf(mt, c_m[w * 16 + gg]);
    float lsum = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float mw = c_m[w * 16 + gg];
      if (mw != -INFINITY) {  // a warp without tiles contributes nothing
        const float sc = exp2f(mw - mt);
        lsum += sc * c_l[w * 16 + gg];
        acc += sc * c_o[(w * 16 + gg) * D + d];
      }
    }
    // The split holds at least one key, so warp 0 saw it: mt is finite and lsum >= 1.
    p.partial_acc[(part + static_cast<int64_t>(gg) * num_splits) * D + d] = acc / lsum;
    if (d == 0) p.partial_lse[part + static_cast<int64_t>(gg) * num_splits] = mt + log2f(lsum);
  }
}

constexpr int kCombineThreads = 128;

__global__ void __launch_bounds__(kCombineThreads)
    DecodeCombineKernel(const float* __restrict__ partial_acc,
                        const float* __restrict__ partial_lse, const SeqInfo* __restrict__ seqs,
                        const int32_t* __restrict__ decode_seqs, int num_splits, int num_heads,
                        int head_dim, bf16* __restrict__ out) {
  __shared__ float weight[kMaxDecodeSplits];
  const int dseq = blockIdx.x, h = blockIdx.y;
  const SeqInfo si = seqs[decode_seqs[dseq]];
  const int q_row = si.q_row + si.n_new - 1;
  const int64_t base = (static_cast<int64_t>(dseq) * num_heads + h) * num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, partial_lse[base + s]);
  for (int s = threadIdx.x; s < num_splits; s += blockDim.x) {
    const float lse = partial_lse[base + s];
    weight[s] = lse == -INFINITY ? 0.f : exp2f(lse - mx);
  }
  __syncthreads();
  float sum = 0.f;
  for (int s = 0; s < num_splits; ++s) sum += weight[s];
  const float inv = 1.0f / sum;
  bf16* dst =
      out + static_cast<int64_t>(q_row) * num_heads * head_dim + static_cast<int64_t>(h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      const float w = weight[s];
      if (w != 0.f) acc += w * partial_acc[(base + s) * head_dim + d];
    }
    dst[d] = __float2bfloat16_rn(acc * inv);
  }
}

AttnParams MakeAttnParams(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
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

// The prefill variants (docs/engine-cuda.md). LaunchPrefillAttention uses these two; set them to
// the winner of CudaAttentionBench.DISABLED_PrefillThroughput. hd128: v6 measured fastest on an
// H100 at every length (312 TFLOP/s at 8K tokens vs 237 for v0, 304 for v4; 2026-11-22,
// docs/BENCHMARKS.md) despite its 44-byte spill. hd64 (test shapes only) was not timed.
constexpr int kDefaultPrefillVariantHd64 = 0;
constexpr int kDefaultPrefillVariantHd128 = 6;

struct PrefillVariantDesc {
  const char* name;
  const void* kernel;  // void(const AttnParams)
  int threads;
  int smem;
  int heads_per_cta;
  int rows_per_head;
};

template <class C>
PrefillVariantDesc VariantDesc(const char* name) {
  return {name,        reinterpret_cast<const void*>(&PrefillVariantKernel<C>),
          C::kThreads, C::kSmem,
          C::kHeads,   C::kRowsPerHead};
}

template <int D>
PrefillVariantDesc LegacyDesc(const char* name) {
  return {name,
          reinterpret_cast<const void*>(&PrefillAttentionKernel<D>),
          PrefillThreads<D>(),
          PrefillSmemBytes<D>(),
          1,
          kPrefillBlockM};
}

// PrefillCfg<D, warps, m16 tiles per warp, K/V tile, Q in registers, stages, rows per head,
// heads per CTA, min CTAs per SM>.
bool FindPrefillVariant(int variant, int head_dim, PrefillVariantDesc* d) {
  if (head_dim == 64) {
    switch (variant) {
      case 0:
        *d = LegacyDesc<64>("m128n64 w4x32 q:regs st2 (original)");
        return true;
      case 1:
        *d = VariantDesc<PrefillCfg<64, 4, 2, 64, true, 3, 128, 1, 2>>(
            "m128n64 w4x32 q:regs st3 (lean loop)");
        return true;
      default:
        return false;
    }
  }
  if (head_dim == 128) {
    switch (variant) {
      case 0:
        *d = LegacyDesc<128>("m128n32 w4x32 q:smem st2 (original)");
        return true;
      case 1:  // FlashAttention-2's sm80/sm90 hd128 CTA (kBlockM 128, kBlockN 64, 4 warps),
               // S in two 32-key steps (255 registers without spills)
        *d = VariantDesc<PrefillCfg<128, 4, 2, 64, false, 2, 128, 1, 2, 32>>(
            "m128n64(2x32) w4x32 q:smem st2");
        return true;
      case 2:
        *d = VariantDesc<PrefillCfg<128, 8, 1, 64, true, 3, 128, 1, 1>>("m128n64 w8x16 q:regs st3");
        return true;
      case 3:
        *d = VariantDesc<PrefillCfg<128, 4, 1, 64, true, 2, 64, 1, 2>>("m64n64 w4x16 q:regs st2");
        return true;
      case 4:  // 2 q heads of a KV group per CTA: half the K/V fill traffic per FLOP
        *d = VariantDesc<PrefillCfg<128, 8, 2, 64, false, 2, 128, 2, 1, 32>>(
            "gqa2 m128n64(2x32) w8x32 q:smem st2");
        return true;
      case 5:  // the original shape with the lean loop (isolates the loop changes)
        *d =
            VariantDesc<PrefillCfg<128, 4, 2, 32, false, 3, 128, 1, 2>>("m128n32 w4x32 q:smem st3");
        return true;
      case 6:  // FlashAttention-2's shape with a full 64-key S (spills a few registers)
        *d = VariantDesc<PrefillCfg<128, 4, 2, 64, false, 2, 128, 1, 2>>(
            "m128n64 w4x32 q:smem st2 (spills)");
        return true;
      default:
        return false;
    }
  }
  return false;
}

cudaError_t LaunchPrefillDesc(const PrefillVariantDesc& d, AttnParams p, int num_work,
                              cudaStream_t stream) {
  const int sub_tiles = kPrefillBlockM / d.rows_per_head;
  if ((p.num_heads / p.num_kv_heads) % d.heads_per_cta != 0 ||
      int64_t{num_work} * sub_tiles > 65535) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err =
      cudaFuncSetAttribute(d.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, d.smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.num_heads / d.heads_per_cta, num_work * sub_tiles);
  void* args[] = {&p};
  err =
      cudaLaunchKernel(d.kernel, grid, dim3(d.threads), args, static_cast<size_t>(d.smem), stream);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

template <int D>
cudaError_t LaunchDecodeImpl(const AttnParams& p, dim3 grid, cudaStream_t stream) {
  constexpr int kSmem = DecodeSmemBytes<D>();
  cudaError_t err = cudaFuncSetAttribute(DecodeAttentionKernel<D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  DecodeAttentionKernel<D><<<grid, kDecodeThreads, kSmem, stream>>>(p);
  return cudaGetLastError();
}

bool ValidGqa(int num_heads, int num_kv_heads) {
  return num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0;
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

cudaError_t LaunchPrefillAttention(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
                                   const PrefillWorkItem* work, int num_work, int num_heads,
                                   const KvCacheView& cache, bf16* out, cudaStream_t stream) {
  if (num_work <= 0) return cudaSuccess;
  if (num_work > 65535 || !ValidGqa(num_heads, cache.num_kv_heads) || cache.block_tokens <= 0) {
    return cudaErrorInvalidValue;
  }
  int variant = DefaultPrefillVariant(cache.head_dim);
  if (!PrefillVariantAvailable(variant, cache.head_dim, num_heads, cache.num_kv_heads)) {
    variant = 0;  // e.g. a multi-head variant with an odd GQA ratio
  }
  return LaunchPrefillAttentionVariant(variant, q, seqs, page_table, work, num_work, num_heads,
                                       cache, out, stream);
}

bool PrefillVariantAvailable(int variant, int head_dim, int num_heads, int num_kv_heads) {
  PrefillVariantDesc d;
  return FindPrefillVariant(variant, head_dim, &d) && ValidGqa(num_heads, num_kv_heads) &&
         (num_heads / num_kv_heads) % d.heads_per_cta == 0;
}

int DefaultPrefillVariant(int head_dim) {
  return head_dim == 64 ? kDefaultPrefillVariantHd64 : kDefaultPrefillVariantHd128;
}

cudaError_t GetPrefillVariantInfo(int variant, int head_dim, PrefillVariantInfo* info) {
  PrefillVariantDesc d;
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
  PrefillVariantDesc d;
  if (num_work > 65535 || !ValidGqa(num_heads, cache.num_kv_heads) || cache.block_tokens <= 0 ||
      !FindPrefillVariant(variant, cache.head_dim, &d)) {
    return cudaErrorInvalidValue;
  }
  AttnParams p = MakeAttnParams(q, seqs, page_table, num_heads, cache, out);
  p.work = work;
  return LaunchPrefillDesc(d, p, num_work, stream);
}

cudaError_t LaunchDecodeAttention(const bf16* q, const SeqInfo* seqs, const int32_t* page_table,
                                  const int32_t* decode_seqs, int num_decode, int num_splits,
                                  int num_heads, const KvCacheView& cache, float* partial_acc,
                                  float* partial_lse, bf16* out, cudaStream_t stream) {
  if (num_decode <= 0) return cudaSuccess;
  if (!ValidGqa(num_heads, cache.num_kv_heads) || num_heads / cache.num_kv_heads > kMaxGqaRatio ||
      num_splits < 1 || num_splits > kMaxDecodeSplits || cache.num_kv_heads > 65535 ||
      cache.block_tokens <= 0) {
    return cudaErrorInvalidValue;
  }
  AttnParams p = MakeAttnParams(q, seqs, page_table, num_heads, cache, out);
  p.decode_seqs = decode_seqs;
  p.partial_acc = partial_acc;
  p.partial_lse = partial_lse;
  const dim3 grid(num_decode, cache.num_kv_heads, num_splits);
  cudaError_t err;
  switch (cache.head_dim) {
    case 64:
      err = LaunchDecodeImpl<64>(p, grid, stream);
      break;
    case 128:
      err = LaunchDecodeImpl<128>(p, grid, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  if (err != cudaSuccess) return err;
  DecodeCombineKernel<<<dim3(num_decode, num_heads), kCombineThreads, 0, stream>>>(
      partial_acc, partial_lse, seqs, decode_seqs, num_splits, num_heads, cache.head_dim, out);
  return cudaGetLastError();
}

int DecodeSplits(int bucket, int num_kv_heads, int num_sms) {
  const int64_t ctas = std::max<int64_t>(1, int64_t{bucket} * std::max(1, num_kv_heads));
  const int64_t want = (2 * int64_t{std::max(1, num_sms)} + ctas - 1) / ctas;
  return static_cast<int>(std::clamp<int64_t>(want, 1, kMaxDecodeSplits));
}

cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* out,
                         cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  ArgmaxKernel<<<rows, kArgmaxThreads, 0, stream>>>(logits, vocab, out);
  return cudaGetLastError();
}

}  // namespace kvtier::engine::cuda
