// The prefill attention kernel of the CUDA backend: FlashAttention-2's forward pass, causal, over
// the paged KV cache, as one template over a configuration (PrefillCfg: CTA shape, K/V tile,
// pipeline, softmax arithmetic), and the table of the configurations the project keeps
// (PrefillVariant<head_dim, id>; docs/engine-cuda.md compares them). Serving instantiates only
// the configurations DefaultPrefillVariant names (engine/cuda/prefill_attention.cu); the others
// are instantiated by engine/cuda/prefill_variants.cu, which only tests and benchmarks link.
//
// Device code: include from .cu files only. Kernels are launched, from any host thread, through
// LaunchPrefillKernel (declared here, defined in engine/cuda/prefill_attention.cu).
#ifndef KVTIER_ENGINE_CUDA_PREFILL_KERNEL_CUH_
#define KVTIER_ENGINE_CUDA_PREFILL_KERNEL_CUH_

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "engine/cuda/attention.cuh"
#include "engine/cuda/layout.cuh"
#include "engine/cuda/mma.cuh"

namespace kvtier::engine::cuda {

// ---------------------------------------------------------------------------------------------
// The kernel.
//
// CTA = (kHeads q heads of one KV group, one work item or a kRowsPerHead-row sub-tile of it: a
// work item's kPrefillBlockM rows split into separate CTAs, the later sub-tile first); kWarps
// warps of kMTiles m16 tiles each (one K/V fragment read from shared memory feeds kMTiles MMAs).
// K/V tiles of kBlockN tokens are gathered row by row through the page table (by shift when
// block_tokens is a power of two; loader offsets are compile-time steps from one per-thread
// base) with cp.async into XOR-swizzled shared memory, in a ring of kStages stages. Q is either
// held as A fragments in registers (staged through the last stage before the loop) or kept in
// its own shared tile and re-read per step. Each tile is computed kComputeN keys at a time:
// S = Q K^T and O += P V on mma.sync m16n8k16 (bf16 in, fp32 accumulate); P goes from the S
// accumulators to A fragments in registers; softmax is online, in fp32, in the log2 domain.
// Warps skip the steps after their last row (causal).
//
// Two switches make the first kernel (variant 0) one configuration of this template:
// - PrefillPipeline::kRing issues tile j + kStages - 1 after the one barrier per tile (the
//   barrier that publishes tile j also retires the stage of tile j - 1); kPrefetchFirst issues
//   it before waiting for tile j, with a second barrier per tile guarding the stage refilled.
// - PrefillSoftmax::kFast folds the softmax scale into one FFMA per score (max taken on raw
//   scores) and uses ex2.approx.ftz; kExact scales each score by one rounded multiply before
//   masking and uses exp2f (OnlineSoftmax, as decode does).

enum class PrefillPipeline { kRing, kPrefetchFirst };
enum class PrefillSoftmax { kFast, kExact };

// kWarps warps of kMTiles m16 tiles; CTA rows = kHeads heads x kRowsPerHead rows; K/V tiles of
// kBlockN tokens in kStages stages, computed kComputeN keys at a time (S = kComputeN columns
// of registers: 64-token tiles with 32-key steps keep hd 128 with 32 rows per warp in 255
// registers); Q as A fragments in registers (staged in the last stage) or re-read from its own
// shared tile per step; __launch_bounds__ asks for kMinBlocks CTAs per SM.
template <int D_, int kWarps_, int kMTiles_, int kBlockN_, bool kQInRegs_, int kStages_,
          int kRowsPerHead_, int kHeads_, int kMinBlocks_, int kComputeN_ = kBlockN_,
          PrefillPipeline kPipeline_ = PrefillPipeline::kRing,
          PrefillSoftmax kSoftmax_ = PrefillSoftmax::kFast>
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
  static constexpr PrefillPipeline kPipeline = kPipeline_;
  static constexpr PrefillSoftmax kSoftmax = kSoftmax_;
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

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Online softmax like OnlineSoftmax (engine/cuda/attention.cuh), on raw (unscaled, masked) scores:
// m is kept in the scaled log2 domain and each score costs one FFMA and one ex2.
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

template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
    PrefillAttentionKernel(const AttnParams p) {
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
    // The staging stage is refilled in the loop: after its first barrier (ring), or before it
    // (prefetch first), which then needs a barrier here.
    if constexpr (C::kPipeline == PrefillPipeline::kPrefetchFirst) __syncthreads();
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
    // Tile j + kStages - 1 goes into the stage of tile j - 1.
    if constexpr (C::kPipeline == PrefillPipeline::kRing) {
      CpAsyncWait<kStages - 2>();  // tile j has landed (for this thread)
      __syncthreads();             // ... for every thread; and stage j - 1 is free
      if (j + kStages - 1 < n_tiles) load_kv(j + kStages - 1, (j + kStages - 1) % kStages);
      CpAsyncCommit();
    } else {
      // Stage j - 1 was freed by the barrier that ended iteration j - 1.
      if (j + kStages - 1 < n_tiles) load_kv(j + kStages - 1, (j + kStages - 1) % kStages);
      CpAsyncCommit();
      CpAsyncWait<kStages - 1>();  // everything but the tile just issued has landed
      __syncthreads();
    }
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
      // step with keys >= kv_len, which are zero-filled). Score (nb, e) of m16 tile mt has
      // key > query position  <=>  nb * 8 + (e & 1) > lim + 8 * (e >> 1), where lim is the
      // position of the thread's row g of the tile minus (kc0 + 2t).
      const bool need_mask = kc0 + kCN - 1 > warp_pos0;
      if constexpr (C::kSoftmax == PrefillSoftmax::kExact) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          const int lim = warp_pos0 + mt * 16 + g - kc0 - 2 * t;
#pragma unroll
          for (int nb = 0; nb < kCN / 8; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              float v = s[mt][nb][e] * p.scale_log2;
              if (need_mask && nb * 8 + (e & 1) > lim + ((e >> 1) << 3)) v = -INFINITY;
              s[mt][nb][e] = v;
            }
          }
          OnlineSoftmax(s[mt], m[mt], l[mt], o[mt]);
        }
      } else {
        if (need_mask) {
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
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
        for (int mt = 0; mt < kMT; ++mt) {
          OnlineSoftmaxRaw(s[mt], p.scale_log2, m[mt], l[mt], o[mt]);
        }
      }
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
    if constexpr (C::kPipeline == PrefillPipeline::kPrefetchFirst) {
      __syncthreads();  // stage j % kStages is refilled at iteration j + 1
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
// The configurations, by head_dim and variant id (0 .. kNumPrefillVariants - 1 of
// engine/cuda/prefill_variants.cuh); docs/engine-cuda.md has their shapes and measurements.
// kName names the tile shapes; Cfg is PrefillCfg<D, warps, m16 tiles per warp, K/V tile, Q in
// registers, stages, rows per head, heads per CTA, min CTAs per SM, keys per softmax step,
// pipeline, softmax>.

template <int D, int V>
struct PrefillVariant {
  static constexpr bool kExists = false;
};

template <class C>
struct PrefillVariantOf {
  static constexpr bool kExists = true;
  using Cfg = C;
};

// Variant 0, the first kernel: two stages, prefetch before the wait, exact softmax.
template <>
struct PrefillVariant<64, 0>
    : PrefillVariantOf<PrefillCfg<64, 4, 2, 64, true, 2, 128, 1, 2, 64,
                                  PrefillPipeline::kPrefetchFirst, PrefillSoftmax::kExact>> {
  static constexpr const char* kName = "m128n64 w4x32 q:regs st2 (original)";
};
template <>
struct PrefillVariant<128, 0>
    : PrefillVariantOf<PrefillCfg<128, 4, 2, 32, false, 2, 128, 1, 2, 32,
                                  PrefillPipeline::kPrefetchFirst, PrefillSoftmax::kExact>> {
  static constexpr const char* kName = "m128n32 w4x32 q:smem st2 (original)";
};
// Variants 1 to 6: the ring pipeline and the fast softmax.
template <>
struct PrefillVariant<64, 1> : PrefillVariantOf<PrefillCfg<64, 4, 2, 64, true, 3, 128, 1, 2>> {
  static constexpr const char* kName = "m128n64 w4x32 q:regs st3 (lean loop)";
};
// FlashAttention-2's sm80/sm90 hd128 CTA (kBlockM 128, kBlockN 64, 4 warps), S in two 32-key
// steps (255 registers without spills).
template <>
struct PrefillVariant<128, 1>
    : PrefillVariantOf<PrefillCfg<128, 4, 2, 64, false, 2, 128, 1, 2, 32>> {
  static constexpr const char* kName = "m128n64(2x32) w4x32 q:smem st2";
};
template <>
struct PrefillVariant<128, 2> : PrefillVariantOf<PrefillCfg<128, 8, 1, 64, true, 3, 128, 1, 1>> {
  static constexpr const char* kName = "m128n64 w8x16 q:regs st3";
};
template <>
struct PrefillVariant<128, 3> : PrefillVariantOf<PrefillCfg<128, 4, 1, 64, true, 2, 64, 1, 2>> {
  static constexpr const char* kName = "m64n64 w4x16 q:regs st2";
};
// 2 q heads of a KV group per CTA: half the K/V fill traffic per FLOP.
template <>
struct PrefillVariant<128, 4>
    : PrefillVariantOf<PrefillCfg<128, 8, 2, 64, false, 2, 128, 2, 1, 32>> {
  static constexpr const char* kName = "gqa2 m128n64(2x32) w8x32 q:smem st2";
};
// Variant 0's hd-128 shape with the lean loop (isolates the loop changes).
template <>
struct PrefillVariant<128, 5> : PrefillVariantOf<PrefillCfg<128, 4, 2, 32, false, 3, 128, 1, 2>> {
  static constexpr const char* kName = "m128n32 w4x32 q:smem st3";
};
// FlashAttention-2's shape with a full 64-key S (spills a few registers).
template <>
struct PrefillVariant<128, 6> : PrefillVariantOf<PrefillCfg<128, 4, 2, 64, false, 2, 128, 1, 2>> {
  static constexpr const char* kName = "m128n64 w4x32 q:smem st2 (spills)";
};

// ---------------------------------------------------------------------------------------------
// Launching.

// One instantiated configuration, as the launcher needs it.
struct PrefillKernelDesc {
  const char* name = nullptr;
  const void* kernel = nullptr;  // PrefillAttentionKernel<Cfg>
  int threads = 0;
  int smem = 0;  // dynamic shared memory
  int heads_per_cta = 0;
  int rows_per_head = 0;
};

// Instantiates the kernel of a PrefillVariant in the calling translation unit.
template <class Variant>
PrefillKernelDesc DescribePrefillKernel() {
  using C = typename Variant::Cfg;
  return {Variant::kName, reinterpret_cast<const void*>(&PrefillAttentionKernel<C>),
          C::kThreads,    C::kSmem,
          C::kHeads,      C::kRowsPerHead};
}

// The kernel LaunchPrefillAttention runs for head_dim (the variant DefaultPrefillVariant names);
// false for a head_dim without one. Tests and benchmarks reach serving's kernels through it.
bool DefaultPrefillKernel(int head_dim, PrefillKernelDesc* d);

// LaunchPrefillAttention's contract (engine/cuda/prefill_attention.cuh) for kernel d of
// cache.head_dim; cudaErrorInvalidValue where the GQA ratio is not a multiple of
// d.heads_per_cta or the grid would be too large.
cudaError_t LaunchPrefillKernel(const PrefillKernelDesc& d, const bf16* q, const SeqInfo* seqs,
                                const int32_t* page_table, const PrefillWorkItem* work,
                                int num_work, int num_heads, const KvCacheView& cache, bf16* out,
                                cudaStream_t stream);

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_PREFILL_KERNEL_CUH_
