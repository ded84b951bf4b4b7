// The fp32 operations of the CPU reference backend (engine/cpu_backend.cc), exposed for
// engine/cpu_backend_test.cc. Internal to engine/.
//
// Every function is a pure function of its arguments with a fixed order of floating-point
// operations, so that a row's result never depends on what else is computed in the same call:
// this is what makes the CPU backend bit-deterministic across batching and prefill chunking.
// Thread-safe (no shared state), except TiledGemm, which may set OpenBLAS's thread count.
#ifndef KVTIER_ENGINE_CPU_OPS_H_
#define KVTIER_ENGINE_CPU_OPS_H_

#include <cstdint>

#include "absl/types/span.h"
#include "engine/engine.h"

namespace kvtier::engine::cpu {

// Rows of every GEMM operand are grouped in tiles of kTileRows rows; a token at position `pos`
// always sits in row `pos % kTileRows` of its tile (see TiledGemm).
inline constexpr int kTileRows = 16;
// Columns (weight rows) of one OpenBLAS call in TiledGemm.
inline constexpr int kGemmCols = 128;

// How many of `num_threads` (0 = all) OpenMP threads to use for `items` independent pieces of
// work totalling `macs` multiply-adds: 1 for small work, where a parallel region costs more
// than it saves.
int ThreadsFor(int num_threads, int64_t items, int64_t macs);

// C = A · W^T for row-major A [num_tiles * kTileRows × k] and W [n × k], C row-major with row
// stride n. Computed as one single-threaded cblas_sgemm per (tile, chunk of kGemmCols
// columns), every call of shape (kTileRows, min(kGemmCols, n - n0), k), run in parallel over
// `num_threads` OpenMP threads (0 = all). So the bits of C[r][j] depend only on A's row r, W,
// n, k and r % kTileRows, never on num_tiles, the other rows or the thread count. (OpenBLAS
// alone does not give this: its result for a row depends on M, the row's place in the call
// and the thread partition; see cpu_backend.cc.)
void TiledGemm(const float* a, int num_tiles, int k, const float* w, int n, float* c,
               int num_threads);

// Hugging Face LlamaRMSNorm in fp32: out[i] = w[i] * (x[i] * (1 / sqrt(mean(x^2) + eps))),
// the mean of squares summed in fp32 in index order. `out` may alias `x`.
void RmsNorm(const float* x, const float* w, int n, float eps, float* out);

// cos/sin (fp32) of the angles RopeAngle(pos, inv_freq[i]) (engine/rope.h), one per frequency.
void RopeCosSin(int pos, absl::Span<const float> inv_freq, float* cos_out, float* sin_out);

// Rotates one head vector of `head_dim` floats in place with the rope.h (rotate_half)
// convention, given head_dim / 2 cos/sin values from RopeCosSin.
void ApplyRope(float* x, int head_dim, const float* cos, const float* sin);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)). `out` may alias either input.
void SiluMul(const float* gate, const float* up, int n, float* out);

// Causal attention of one query head vector `q` (layout.head_dim floats) at position `pos`
// over the keys/values of positions [0, pos] of kv head `kv_head`, read from the KV pages of
// one layer: `kv_layer` holds pages of layout.LayerBytes() each, page p at
// kv_layer + p * LayerBytes()/4, laid out [K|V][kv_head][token][head_dim]; position t is in
// page pages[t / block_tokens]. Scores q·k * scale (fp32 dot products in a fixed order: 8
// interleaved partial sums), softmax with max subtraction, then the probability-weighted sum of V
// in position order. `scores` is scratch of at least pos + 1 floats.
void PagedAttention(const float* q, const float* kv_layer, const KvLayout& layout,
                    absl::Span<const int32_t> pages, int kv_head, int pos, float scale,
                    float* scores, float* out);

}  // namespace kvtier::engine::cpu

#endif  // KVTIER_ENGINE_CPU_OPS_H_
