// The fp32 CPU reference backend.
//
// Determinism. The backend guarantees that a token's K/V and logits are bit-identical however
// the work is cut: alone or in a batch with other sequences, in one prefill or in chunks, after
// computing or after importing the earlier pages, with any num_threads. Attention, norms, RoPE
// and elementwise work are per row with a fixed operation order, so only the GEMMs need care.
//
// OpenBLAS (0.3.21, Haswell kernels on the AMD EPYC development machine) is NOT per-row
// deterministic: calling cblas_sgemm on X[M × K] · W^T and comparing each row with the same
// row computed alone (M = 1), rows differ in their last bits from M = 4 on (single-threaded;
// with 2 threads from M = 2 or M = 13 depending on the shape), and for a fixed M the same row
// gives different bits at different places in the call (M = 5, 12, 16, 17, 24, 32, 64 with one
// thread; M = 1..4 and 8 happened to be stable). The kernels treat full and partial register
// tiles differently and the thread partition depends on the shape; other CPUs select other
// kernels (AVX-512 ones with small-matrix paths), so no choice of M can be trusted to be
// position-independent everywhere.
//
// What we do instead (TiledGemm): every GEMM operand is laid out in tiles of kTileRows = 16
// rows, and a token at position `pos` always occupies row `pos % 16` of some tile (empty rows
// are zero). Each OpenBLAS call is single-threaded and has the same shape (16 rows, a fixed
// chunk of 128 weight rows, K), so a token's row goes through the exact same instruction
// sequence with the same inputs whatever else shares its tile; GEMM never mixes rows. OpenMP
// spreads the (tile, column chunk) calls over threads, which changes nothing numerically.
// Decode batches pack sequences at different positions into the same tile, so the padding
// costs at most 16x on a decode step of sequences all at the same position modulo 16, and
// nothing on prefill beyond one partial tile per chunk end. Measured here, single-threaded
// M = 16 calls run at 33-48 GFLOPS, OpenBLAS's own 2 threads at M = 16 at 27-37; big-M GEMMs
// reach 65-70, so prefill pays for determinism with about 1.5x in the GEMMs (A and B are
// repacked for every 16-row call). A hand-written GEMM on pre-packed weights with a fixed
// per-element summation order would remove both costs, if the CPU backend ever needs speed.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backends.h"
#include "engine/cpu_ops.h"
#include "engine/rope.h"
#include "engine/sampler.h"

namespace kvtier::engine {
namespace cpu {

int ThreadsFor(int num_threads, int64_t items, int64_t macs) {
  // About a millisecond of work per thread. A parallel region's wake-up and barrier cost
  // microseconds on an idle machine, but on a loaded one (tests run in parallel, two cores) a
  // preempted worker stalls the barrier for a scheduler time slice (milliseconds): measured,
  // tiny-model decode steps ran 10x slower with 2 threads than with 1 under load. So only
  // big GEMMs and long attention (long prefills, big models) go parallel.
  constexpr int64_t kMacsPerThread = int64_t{1} << 24;
  const int64_t max_threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  return static_cast<int>(
      std::max<int64_t>(1, std::min({max_threads, items, macs / kMacsPerThread})));
}

void TiledGemm(const float* a, int num_tiles, int k, const float* w, int n, float* c,
               int num_threads) {
  // Our OpenMP threads each run single-threaded OpenBLAS calls; a multi-threaded OpenBLAS
  // would also change the numbers (its partition depends on the shape).
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
  const int chunks = (n + kGemmCols - 1) / kGemmCols;
  const int items = num_tiles * chunks;
  const int64_t macs = int64_t{num_tiles} * kTileRows * n * k;
  const int threads = ThreadsFor(num_threads, items, macs);
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (int item = 0; item < items; ++item) {
    const int tile = item / chunks;
    const int n0 = (item % chunks) * kGemmCols;
    const int nc = std::min(kGemmCols, n - n0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kTileRows, nc, k, 1.0f,
                a + size_t(tile) * kTileRows * k, k, w + size_t(n0) * k, k, 0.0f,
                c + size_t(tile) * kTileRows * n + n0, n);
  }
}

void RmsNorm(const float* x, const float* w, int n, float eps, float* out) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  for (int i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

void RopeCosSin(int pos, absl::Span<const float> inv_freq, float* cos_out, float* sin_out) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    // The fp32 angle, then its cos/sin rounded to fp32 (rope.h).
    const double angle = RopeAngle(pos, inv_freq[i]);
    cos_out[i] = static_cast<float>(std::cos(angle));
    sin_out[i] = static_cast<float>(std::sin(angle));
  }
}

void ApplyRope(float* x, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float a = x[i];
    const float b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

void SiluMul(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

namespace {

// a·b with 8 interleaved partial sums added up in a fixed order at the end: the compiler can
// vectorize it without reassociating anything, and every call computes the same bits.
float Dot(const float* a, const float* b, int n) {
  float acc[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) + tail;
}

// out[i] += p * v[i], in blocks of 8 like Dot so that -O2 vectorizes it (each element's
// operations are unchanged, so are the bits). As a scalar loop its speed depended on where the
// heap put `out` relative to the pages: at a multiple of 4 KiB apart every load stalled on the
// previous store (4K aliasing), and decode ran 1.3x slower in one build than in another.
void Axpy(float p, const float* __restrict v, float* __restrict out, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) out[i + j] += p * v[i + j];
  }
  for (; i < n; ++i) out[i] += p * v[i];
}

}  // namespace

void PagedAttention(const float* q, const float* kv_layer, const KvLayout& layout,
                    absl::Span<const int32_t> pages, int kv_head, int pos, float scale,
                    float* scores, float* out) {
  const int d = layout.head_dim;
  const int b = layout.block_tokens;
  const size_t page_floats = layout.LayerBytes() / sizeof(float);
  const size_t k_off = layout.PayloadIndex(0, 0, kv_head, 0, 0);
  const size_t v_off = layout.PayloadIndex(0, 1, kv_head, 0, 0);
  float max_score = -std::numeric_limits<float>::infinity();
  for (int t = 0; t <= pos; ++t) {
    const float* k = kv_layer + pages[t / b] * page_floats + k_off + size_t(t % b) * d;
    scores[t] = Dot(q, k, d) * scale;
    max_score = std::max(max_score, scores[t]);
  }
  float sum = 0.0f;
  for (int t = 0; t <= pos; ++t) {
    scores[t] = std::exp(scores[t] - max_score);
    sum += scores[t];
  }
  std::fill(out, out + d, 0.0f);
  for (int t = 0; t <= pos; ++t) {
    const float p = scores[t] / sum;
    const float* v = kv_layer + pages[t / b] * page_floats + v_off + size_t(t % b) * d;
    Axpy(p, v, out, d);
  }
}

}  // namespace cpu

namespace {

using cpu::kTileRows;

// A std::vector<float> whose data is 64-byte aligned, so that the address alignment of every
// GEMM operand is the same from call to call.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{64}));
  }
  void deallocate(T* p, size_t) { ::operator delete (p, std::align_val_t{64}); }
  bool operator==(const AlignedAllocator&) const { return true; }
  bool operator!=(const AlignedAllocator&) const { return false; }
};
using Buffer = std::vector<float, AlignedAllocator<float>>;

// Converts `views` (concatenated, in order) to one fp32 buffer.
Buffer ToFloat(std::initializer_list<const TensorView*> views) {
  size_t total = 0;
  for (const TensorView* v : views) total += static_cast<size_t>(v->NumElements());
  Buffer out(total);
  size_t offset = 0;
  for (const TensorView* v : views) {
    const size_t n = static_cast<size_t>(v->NumElements());
    // Big tensors (embeddings, lm_head) are converted by all threads.
    constexpr size_t kChunk = size_t{1} << 20;
    const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
    const size_t elem = DTypeBytes(v->dtype);
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const size_t begin = size_t(c) * kChunk;
      const size_t count = std::min(kChunk, n - begin);
      ConvertToFloat(v->dtype, v->data + begin * elem, count, out.data() + offset + begin);
    }
    offset += n;
  }
  return out;
}

class CpuEngine final : public Engine {
 public:
  CpuEngine(ModelWeights weights, const EngineOptions& options, KvLayout layout, int num_pages)
      : Engine(std::move(weights), options, std::move(layout), num_pages) {
    num_threads_ = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
    LoadWeights();
    const size_t page_floats = kv_layout().LayerBytes() / sizeof(float);
    kv_.resize(config().num_layers);
    for (auto& layer : kv_) layer.assign(page_floats * static_cast<size_t>(num_pages), 0.0f);
    inv_freq_ = RopeInvFreq(config());
  }

 protected:
  absl::Status DoForward(absl::Span<const SeqInput> batch, float* logits,
                         TokenId* next_tokens) override;
  absl::Status DoExportPages(absl::Span<const int32_t> pages, uint8_t* dst) override;
  absl::Status DoImportBlocks(absl::Span<const int32_t> pages,
                              const uint8_t* const* blocks) override;

 private:
  struct Layer {
    Buffer input_norm;
    Buffer post_norm;
    Buffer qkv;       // [q_dim + 2 * kv_dim, hidden]: q_proj, k_proj, v_proj stacked
    Buffer qkv_bias;  // [q_dim + 2 * kv_dim], empty without attention_bias
    Buffer o;         // [hidden, q_dim]
    Buffer gate_up;   // [2 * inter, hidden]: gate_proj, up_proj stacked
    Buffer down;      // [hidden, inter]
  };

  // Where one new token of the batch sits.
  struct Row {
    int seq;
    int pos;
    int row;  // in the tiled activation matrices
  };

  void LoadWeights();
  // Assigns each (seq, pos) of `rows` (row field ignored) its row in a tiled matrix: row
  // pos % kTileRows of the first tile whose row is still free. Returns the number of tiles.
  static int AssignTiles(std::vector<Row>& rows);
  void RunLayer(int layer, int num_tiles, absl::Span<const SeqInput> batch);

  int num_threads_ = 1;
  Buffer embed_;
  Buffer final_norm_;
  Buffer lm_head_;  // empty when tied to embed_
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;
  std::vector<std::vector<float>> kv_;  // per layer: num_pages pages of LayerBytes()

  // Per-Forward scratch, kept to reuse the memory.
  std::vector<Row> rows_;
  int64_t attention_work_ = 0;  // sum over rows_ of (pos + 1): key positions attended
  Buffer x_;                    // residual stream [rows, hidden]
  Buffer xn_;                   // normed input of a GEMM [rows, hidden]
  Buffer qkv_;                  // [rows, q_dim + 2 * kv_dim]
  Buffer attn_;                 // [rows, q_dim]
  Buffer proj_;                 // GEMM output added to the residual [rows, hidden]
  Buffer gu_;                   // [rows, 2 * inter]
  Buffer act_;                  // [rows, inter]
  Buffer final_;                // last rows, normed [rows, hidden]
  Buffer logits_;               // one tile of logits [kTileRows, vocab]
};

void CpuEngine::LoadWeights() {
  const ModelWeights& w = weights();
  embed_ = ToFloat({&w.embed()});
  final_norm_ = ToFloat({&w.final_norm()});
  if (&w.lm_head() != &w.embed()) lm_head_ = ToFloat({&w.lm_head()});
  layers_.reserve(w.layers().size());
  for (const LayerWeights& lw : w.layers()) {
    Layer l;
    l.input_norm = ToFloat({lw.input_norm});
    l.post_norm = ToFloat({lw.post_norm});
    l.qkv = ToFloat({lw.q_proj, lw.k_proj, lw.v_proj});
    if (lw.q_bias != nullptr) l.qkv_bias = ToFloat({lw.q_bias, lw.k_bias, lw.v_bias});
    l.o = ToFloat({lw.o_proj});
    l.gate_up = ToFloat({lw.gate_proj, lw.up_proj});
    l.down = ToFloat({lw.down_proj});
    layers_.push_back(std::move(l));
  }
}

int CpuEngine::AssignTiles(std::vector<Row>& rows) {
  int used[kTileRows] = {};
  int num_tiles = 0;
  for (Row& r : rows) {
    const int slot = r.pos % kTileRows;
    r.row = used[slot]++ * kTileRows + slot;
    num_tiles = std::max(num_tiles, used[slot]);
  }
  return num_tiles;
}

void CpuEngine::RunLayer(int layer, int num_tiles, absl::Span<const SeqInput> batch) {
  const ModelConfig& cfg = config();
  const KvLayout& kvl = kv_layout();
  const Layer& lw = layers_[layer];
  const int hidden = cfg.hidden_size;
  const int d = cfg.head_dim;
  const int q_dim = cfg.num_heads * d;
  const int kv_dim = cfg.num_kv_heads * d;
  const int qkv_dim = q_dim + 2 * kv_dim;
  const int inter = cfg.intermediate_size;
  const int num_rows = static_cast<int>(rows_.size());
  const int group = cfg.num_heads / cfg.num_kv_heads;
  const size_t page_floats = kvl.LayerBytes() / sizeof(float);
  float* kv = kv_[layer].data();

  // Elementwise work per row is cheap: parallel only for long prefills.
  const int row_threads = cpu::ThreadsFor(num_threads_, num_rows, int64_t{num_rows} * hidden * 8);
  const int mlp_threads = cpu::ThreadsFor(num_threads_, num_rows, int64_t{num_rows} * inter * 8);

  // Attention block.
#pragma omp parallel for num_threads(row_threads) schedule(static)
  for (int i = 0; i < num_rows; ++i) {
    const size_t r = rows_[i].row;
    cpu::RmsNorm(&x_[r * hidden], lw.input_norm.data(), hidden, cfg.rms_norm_eps, &xn_[r * hidden]);
  }
  cpu::TiledGemm(xn_.data(), num_tiles, hidden, lw.qkv.data(), qkv_dim, qkv_.data(), num_threads_);
#pragma omp parallel num_threads(row_threads)
  {
    std::vector<float> cos(d / 2), sin(d / 2);
#pragma omp for schedule(static)
    for (int i = 0; i < num_rows; ++i) {
      const Row& row = rows_[i];
      float* qkv = &qkv_[size_t(row.row) * qkv_dim];
      if (!lw.qkv_bias.empty()) {
        for (int j = 0; j < qkv_dim; ++j) qkv[j] += lw.qkv_bias[j];
      }
      cpu::RopeCosSin(row.pos, inv_freq_, cos.data(), sin.data());
      for (int h = 0; h < cfg.num_heads + cfg.num_kv_heads; ++h) {
        cpu::ApplyRope(qkv + h * d, d, cos.data(), sin.data());
      }
      // K and V of this token into its page slot.
      const int page = batch[row.seq].pages[row.pos / kvl.block_tokens];
      const int slot = row.pos % kvl.block_tokens;
      float* page_base = kv + size_t(page) * page_floats;
      for (int h = 0; h < cfg.num_kv_heads; ++h) {
        std::memcpy(page_base + kvl.PayloadIndex(0, 0, h, slot, 0), qkv + q_dim + h * d,
                    d * sizeof(float));
        std::memcpy(page_base + kvl.PayloadIndex(0, 1, h, slot, 0), qkv + q_dim + kv_dim + h * d,
                    d * sizeof(float));
      }
    }
  }
  // Every new K/V is in the pages now: attention, per (token, q head).
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int items = num_rows * cfg.num_heads;
  const int attn_threads =
      cpu::ThreadsFor(num_threads_, items, attention_work_ * cfg.num_heads * d * 2);
#pragma omp parallel num_threads(attn_threads)
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 4)
    for (int item = 0; item < items; ++item) {
      const Row& row = rows_[item / cfg.num_heads];
      const int h = item % cfg.num_heads;
      scores.resize(std::max<size_t>(scores.size(), row.pos + 1));
      cpu::PagedAttention(&qkv_[size_t(row.row) * qkv_dim + h * d], kv, kvl, batch[row.seq].pages,
                          h / group, row.pos, scale, scores.data(),
                          &attn_[size_t(row.row) * q_dim + h * d]);
    }
  }
  cpu::TiledGemm(attn_.data(), num_tiles, q_dim, lw.o.data(), hidden, proj_.data(), num_threads_);

  // MLP block.
#pragma omp parallel for num_threads(row_threads) schedule(static)
  for (int i = 0; i < num_rows; ++i) {
    const size_t r = rows_[i].row;
    for (int j = 0; j < hidden; ++j) x_[r * hidden + j] += proj_[r * hidden + j];
    cpu::RmsNorm(&x_[r * hidden], lw.post_norm.data(), hidden, cfg.rms_norm_eps, &xn_[r * hidden]);
  }
  cpu::TiledGemm(xn_.data(), num_tiles, hidden, lw.gate_up.data(), 2 * inter, gu_.data(),
                 num_threads_);
#pragma omp parallel for num_threads(mlp_threads) schedule(static)
  for (int i = 0; i < num_rows; ++i) {
    const size_t r = rows_[i].row;
    cpu::SiluMul(&gu_[r * 2 * inter], &gu_[r * 2 * inter + inter], inter, &act_[r * inter]);
  }
  cpu::TiledGemm(act_.data(), num_tiles, inter, lw.down.data(), hidden, proj_.data(), num_threads_);
#pragma omp parallel for num_threads(row_threads) schedule(static)
  for (int i = 0; i < num_rows; ++i) {
    const size_t r = rows_[i].row;
    for (int j = 0; j < hidden; ++j) x_[r * hidden + j] += proj_[r * hidden + j];
  }
}

absl::Status CpuEngine::DoForward(absl::Span<const SeqInput> batch, float* logits,
                                  TokenId* next_tokens) {
  const ModelConfig& cfg = config();
  const int hidden = cfg.hidden_size;
  const int d = cfg.head_dim;
  const int q_dim = cfg.num_heads * d;
  const int kv_dim = cfg.num_kv_heads * d;
  const int inter = cfg.intermediate_size;
  const int vocab = cfg.vocab_size;

  rows_.clear();
  for (size_t s = 0; s < batch.size(); ++s) {
    for (size_t j = 0; j < batch[s].tokens.size(); ++j) {
      rows_.push_back(Row{static_cast<int>(s), batch[s].start_pos + static_cast<int>(j), 0});
    }
  }
  const int num_tiles = AssignTiles(rows_);
  attention_work_ = 0;
  for (const Row& r : rows_) attention_work_ += r.pos + 1;
  const size_t n = size_t(num_tiles) * kTileRows;
  // Rows of no token stay zero: they go through the GEMMs and are never read.
  x_.assign(n * hidden, 0.0f);
  xn_.assign(n * hidden, 0.0f);
  qkv_.assign(n * (q_dim + 2 * kv_dim), 0.0f);
  attn_.assign(n * q_dim, 0.0f);
  proj_.assign(n * hidden, 0.0f);
  gu_.assign(n * 2 * inter, 0.0f);
  act_.assign(n * inter, 0.0f);

  {
    size_t i = 0;
    for (const SeqInput& s : batch) {
      for (TokenId token : s.tokens) {
        std::memcpy(&x_[size_t(rows_[i++].row) * hidden], &embed_[size_t(token) * hidden],
                    hidden * sizeof(float));
      }
    }
  }
  for (int layer = 0; layer < cfg.num_layers; ++layer) RunLayer(layer, num_tiles, batch);

  // Final norm and lm_head for each sequence's last token only, in a tiled matrix of its own.
  std::vector<Row> last;
  last.reserve(batch.size());
  {
    size_t end = 0;
    for (const SeqInput& s : batch) {
      end += s.tokens.size();
      last.push_back(rows_[end - 1]);
    }
  }
  std::vector<int> src_rows(last.size());
  for (size_t i = 0; i < last.size(); ++i) src_rows[i] = last[i].row;
  const int last_tiles = AssignTiles(last);
  final_.assign(size_t(last_tiles) * kTileRows * hidden, 0.0f);
  for (size_t i = 0; i < last.size(); ++i) {
    cpu::RmsNorm(&x_[size_t(src_rows[i]) * hidden], final_norm_.data(), hidden, cfg.rms_norm_eps,
                 &final_[size_t(last[i].row) * hidden]);
  }
  // One tile at a time (the same calls as one TiledGemm over all tiles), so that only
  // kTileRows rows of logits are ever held: vocab_size can be 150k.
  const Buffer& head = lm_head_.empty() ? embed_ : lm_head_;
  logits_.resize(size_t(kTileRows) * vocab);
  for (int tile = 0; tile < last_tiles; ++tile) {
    cpu::TiledGemm(&final_[size_t(tile) * kTileRows * hidden], 1, hidden, head.data(), vocab,
                   logits_.data(), num_threads_);
    for (size_t i = 0; i < last.size(); ++i) {
      if (last[i].row / kTileRows != tile) continue;
      const float* row = &logits_[size_t(last[i].row % kTileRows) * vocab];
      if (logits != nullptr) std::memcpy(logits + i * vocab, row, vocab * sizeof(float));
      if (next_tokens != nullptr) next_tokens[i] = Argmax(absl::MakeConstSpan(row, vocab));
    }
  }
  return absl::OkStatus();
}

absl::Status CpuEngine::DoExportPages(absl::Span<const int32_t> pages, uint8_t* dst) {
  const KvLayout& kvl = kv_layout();
  const size_t layer_bytes = kvl.LayerBytes();
  for (size_t i = 0; i < pages.size(); ++i) {
    for (int l = 0; l < kvl.num_layers; ++l) {
      std::memcpy(dst + i * kvl.BlockBytes() + l * layer_bytes,
                  reinterpret_cast<const uint8_t*>(kv_[l].data()) + pages[i] * layer_bytes,
                  layer_bytes);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuEngine::DoImportBlocks(absl::Span<const int32_t> pages,
                                       const uint8_t* const* blocks) {
  const KvLayout& kvl = kv_layout();
  const size_t layer_bytes = kvl.LayerBytes();
  for (size_t i = 0; i < pages.size(); ++i) {
    for (int l = 0; l < kvl.num_layers; ++l) {
      std::memcpy(reinterpret_cast<uint8_t*>(kv_[l].data()) + pages[i] * layer_bytes,
                  blocks[i] + l * layer_bytes, layer_bytes);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> CreateCpuEngine(ModelWeights weights,
                                                        const EngineOptions& options) {
  KvLayout layout = MakeKvLayout(weights.config(), options.block_tokens, "fp32");
  const int64_t num_pages = options.kv_cache_bytes / static_cast<int64_t>(layout.BlockBytes());
  if (num_pages < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu engine: kv_cache_bytes ", options.kv_cache_bytes,
                     " is less than one block of ", layout.BlockBytes(), " bytes"));
  }
  if (num_pages > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu engine: ", num_pages, " pages is more than page ids can name"));
  }
  return std::unique_ptr<Engine>(
      new CpuEngine(std::move(weights), options, std::move(layout), static_cast<int>(num_pages)));
}

}  // namespace kvtier::engine
