// Device-side building blocks of the CUDA kernels (engine/cuda/): cp.async copies, ldmatrix
// loads, bf16 mma.sync on tensor cores, and the XOR-swizzled shared-memory tile addressing that
// keeps ldmatrix and row-wise copies free of bank conflicts (docs/engine-cuda.md, "Kernels").
// Device code only: include from .cu files. Stateless; any thread may call them, the
// warp-collective ones (ldmatrix, mma) with all 32 lanes of its warp.
#ifndef KVTIER_ENGINE_CUDA_MMA_CUH_
#define KVTIER_ENGINE_CUDA_MMA_CUH_

#include <cuda_bf16.h>

#include <cstdint>

namespace kvtier::engine::cuda {

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

}  // namespace kvtier::engine::cuda

#endif  // KVTIER_ENGINE_CUDA_MMA_CUH_
