// Decode attention kernels; see decode_attention.cuh for the contract and docs/engine-cuda.md for
// the design.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/cuda/attention.cuh"
#include "engine/cuda/decode_attention.cuh"
#include "engine/cuda/mma.cuh"

namespace kvtier::engine::cuda {
namespace {

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

template <int D>
cudaError_t LaunchDecodeImpl(const AttnParams& p, dim3 grid, cudaStream_t stream) {
  constexpr int kSmem = DecodeSmemBytes<D>();
  cudaError_t err = cudaFuncSetAttribute(DecodeAttentionKernel<D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  DecodeAttentionKernel<D><<<grid, kDecodeThreads, kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

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

}  // namespace kvtier::engine::cuda
