// Tests of the fp32 CPU backend: its ops against naive double-precision formulas, the whole
// model against a naive double-precision forward pass, and above all bit-determinism across
// batching, prefill chunking, page import and thread counts.
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backends.h"
#include "engine/cpu_ops.h"
#include "engine/engine.h"
#include "engine/rope.h"
#include "engine/sampler.h"
#include "engine/testing/test_util.h"
#include "engine/weights.h"
#include "gtest/gtest.h"

namespace kvtier::engine {
namespace {

using ::kvtier::testing::RandomModelDir;
using ::kvtier::testing::RandomTokens;

std::vector<float> RandomFloats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> out(n);
  for (float& v : out) v = dist(rng);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Ops.

TEST(CpuBackendOps, RmsNormMatchesDouble) {
  const int n = 37;
  const std::vector<float> x = RandomFloats(n, 1, 3.0f);
  const std::vector<float> w = RandomFloats(n, 2);
  std::vector<float> out(n);
  cpu::RmsNorm(x.data(), w.data(), n, 1e-5f, out.data());
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(out[i], w[i] * x[i] * inv, 1e-5) << i;
  // In place gives the same bits.
  std::vector<float> inplace = x;
  cpu::RmsNorm(inplace.data(), w.data(), n, 1e-5f, inplace.data());
  EXPECT_EQ(0, std::memcmp(inplace.data(), out.data(), n * sizeof(float)));
}

TEST(CpuBackendOps, RopeMatchesRotateHalfFormula) {
  ModelConfig cfg = *PresetConfig("tiny");
  cfg.head_dim = 8;
  const std::vector<float> inv_freq = RopeInvFreq(cfg);
  ASSERT_EQ(inv_freq.size(), 4u);
  for (int pos : {0, 1, 7, 1000}) {
    const std::vector<float> x = RandomFloats(8, 3 + pos);
    std::vector<float> y = x;
    float c[4], s[4];
    cpu::RopeCosSin(pos, inv_freq, c, s);
    cpu::ApplyRope(y.data(), 8, c, s);
    for (int i = 0; i < 4; ++i) {
      const double a = RopeAngle(pos, inv_freq[i]);  // the fp32 angle
      EXPECT_EQ(c[i], static_cast<float>(std::cos(a)));
      EXPECT_NEAR(y[i], x[i] * std::cos(a) - x[i + 4] * std::sin(a), 1e-5) << pos << " " << i;
      EXPECT_NEAR(y[i + 4], x[i + 4] * std::cos(a) + x[i] * std::sin(a), 1e-5) << pos << " " << i;
    }
  }
  // Position 0 is the identity.
  const std::vector<float> x = RandomFloats(8, 9);
  std::vector<float> y = x;
  float c[4], s[4];
  cpu::RopeCosSin(0, inv_freq, c, s);
  cpu::ApplyRope(y.data(), 8, c, s);
  EXPECT_EQ(x, y);
}

TEST(CpuBackendOps, SiluMulMatchesDouble) {
  const std::vector<float> g = RandomFloats(50, 4, 4.0f);
  const std::vector<float> u = RandomFloats(50, 5);
  std::vector<float> out(50);
  cpu::SiluMul(g.data(), u.data(), 50, out.data());
  for (int i = 0; i < 50; ++i) {
    const double silu = g[i] / (1.0 + std::exp(-double(g[i])));
    EXPECT_NEAR(out[i], silu * u[i], 1e-5 * (1 + std::abs(silu * u[i]))) << i;
  }
}

TEST(CpuBackendOps, PagedAttentionMatchesDouble) {
  KvLayout layout;
  layout.num_layers = 1;
  layout.num_kv_heads = 2;
  layout.head_dim = 4;
  layout.block_tokens = 3;
  const int num_pages = 5;
  const size_t page_floats = layout.LayerBytes() / sizeof(float);
  const std::vector<float> kv = RandomFloats(page_floats * num_pages, 6);
  // Positions 0..7 live in pages 4, 1, 3 (out of order on purpose).
  const std::vector<int32_t> pages = {4, 1, 3};
  const std::vector<float> q = RandomFloats(4, 7, 2.0f);
  const float scale = 0.5f;
  for (int kv_head = 0; kv_head < 2; ++kv_head) {
    for (int pos : {0, 2, 3, 7}) {
      std::vector<float> scores(pos + 1), out(4);
      cpu::PagedAttention(q.data(), kv.data(), layout, pages, kv_head, pos, scale, scores.data(),
                          out.data());
      auto at = [&](int which, int t, int i) {
        return double(
            kv[pages[t / 3] * page_floats + layout.PayloadIndex(0, which, kv_head, t % 3, i)]);
      };
      std::vector<double> s(pos + 1);
      double mx = -1e300, sum = 0;
      for (int t = 0; t <= pos; ++t) {
        double dot = 0;
        for (int i = 0; i < 4; ++i) dot += q[i] * at(0, t, i);
        s[t] = dot * scale;
        mx = std::max(mx, s[t]);
      }
      for (double& v : s) sum += (v = std::exp(v - mx));
      for (int i = 0; i < 4; ++i) {
        double ref = 0;
        for (int t = 0; t <= pos; ++t) ref += s[t] / sum * at(1, t, i);
        EXPECT_NEAR(out[i], ref, 1e-5) << kv_head << " " << pos << " " << i;
      }
    }
  }
}

TEST(CpuBackendOps, TiledGemmMatchesDouble) {
  const int k = 300, n = 333, tiles = 2;  // n is not a multiple of kGemmCols
  const std::vector<float> a = RandomFloats(size_t(tiles) * cpu::kTileRows * k, 8);
  const std::vector<float> w = RandomFloats(size_t(n) * k, 9);
  std::vector<float> c(size_t(tiles) * cpu::kTileRows * n);
  cpu::TiledGemm(a.data(), tiles, k, w.data(), n, c.data(), 0);
  for (int r = 0; r < tiles * cpu::kTileRows; ++r) {
    for (int j = 0; j < n; ++j) {
      double ref = 0;
      for (int i = 0; i < k; ++i) ref += double(a[size_t(r) * k + i]) * w[size_t(j) * k + i];
      ASSERT_NEAR(c[size_t(r) * n + j], ref, 1e-3) << r << " " << j;
    }
  }
}

// The property the backend's determinism rests on: a row's bits depend on its row within the
// tile only, not on the other rows, the number of tiles or the thread count.
TEST(CpuBackendOps, TiledGemmRowIsIndependentOfTheRestOfTheCall) {
  // Big enough that 5 tiles are split over 2 threads (see ThreadsFor).
  const int k = 512, n = 1000;
  ASSERT_EQ(cpu::ThreadsFor(2, 5 * 8, int64_t{5} * cpu::kTileRows * n * k), 2);
  const std::vector<float> w = RandomFloats(size_t(n) * k, 10);
  const std::vector<float> x = RandomFloats(k, 11);
  for (int slot : {0, 5, 15}) {
    std::vector<float> first;
    for (int tiles : {1, 2, 5}) {
      for (int threads : {1, 2}) {
        for (uint64_t fill_seed : {20, 21}) {
          std::vector<float> a = RandomFloats(size_t(tiles) * cpu::kTileRows * k, fill_seed);
          const int row = (tiles / 2) * cpu::kTileRows + slot;
          std::memcpy(&a[size_t(row) * k], x.data(), k * sizeof(float));
          std::vector<float> c(size_t(tiles) * cpu::kTileRows * n);
          cpu::TiledGemm(a.data(), tiles, k, w.data(), n, c.data(), threads);
          std::vector<float> got(c.begin() + size_t(row) * n, c.begin() + size_t(row + 1) * n);
          if (first.empty()) {
            first = got;
          } else {
            ASSERT_EQ(0, std::memcmp(first.data(), got.data(), n * sizeof(float)))
                << "slot " << slot << " tiles " << tiles << " threads " << threads;
          }
        }
      }
    }
  }
}

TEST(CpuBackendOps, ThreadsForKeepsSmallWorkSerial) {
  EXPECT_EQ(cpu::ThreadsFor(8, 100, 1000), 1);
  EXPECT_EQ(cpu::ThreadsFor(8, 1, int64_t{1} << 40), 1);  // one item
  EXPECT_EQ(cpu::ThreadsFor(8, 100, int64_t{1} << 40), 8);
  EXPECT_EQ(cpu::ThreadsFor(1, 100, int64_t{1} << 40), 1);
}

// ---------------------------------------------------------------------------------------------
// Whole-model tests, over several presets and weight dtypes.

struct ModelCase {
  std::string name;
  std::string preset;
  DType dtype;
};

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

// Each model is written once per process.
const std::string& ModelDir(const ModelCase& c) {
  return RandomModelDir("cpu_backend_" + c.name, *PresetConfig(c.preset), 7, c.dtype);
}

EngineOptions SmallOptions() {
  EngineOptions o;
  o.kv_cache_bytes = int64_t{4} << 20;  // 64 pages of the tiny presets
  return o;
}

std::unique_ptr<Engine> MakeEngine(const ModelCase& c, EngineOptions options = SmallOptions()) {
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(ModelDir(c), options);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

// One sequence: tokens[start, end) on `pages`, logits after the last one.
std::vector<float> RunOne(Engine& e, const std::vector<int32_t>& tokens, int start, int end,
                          const std::vector<int32_t>& pages) {
  SeqInput in;
  in.tokens = absl::MakeConstSpan(tokens).subspan(start, end - start);
  in.start_pos = start;
  in.pages = pages;
  std::vector<float> logits(e.config().vocab_size);
  const absl::Status st = e.Forward(absl::MakeConstSpan(&in, 1), absl::MakeSpan(logits));
  EXPECT_TRUE(st.ok()) << st;
  return logits;
}

std::vector<uint8_t> Export(Engine& e, const std::vector<int32_t>& pages) {
  std::vector<uint8_t> out(pages.size() * e.kv_layout().BlockBytes());
  const absl::Status st = e.ExportPages(pages, absl::MakeSpan(out));
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

std::vector<int32_t> Range(int begin, int end) {
  std::vector<int32_t> out;
  for (int i = begin; i < end; ++i) out.push_back(i);
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Greedy decode of `steps` tokens after tokens[0, n) whose K/V is already in `pages`
// (pages must cover n + steps positions), starting from `first`.
std::vector<int32_t> GreedyDecode(Engine& e, std::vector<int32_t> tokens, int32_t first, int steps,
                                  const std::vector<int32_t>& pages) {
  std::vector<int32_t> out = {first};
  tokens.push_back(first);
  while (static_cast<int>(out.size()) < steps) {
    SeqInput in;
    in.tokens = absl::MakeConstSpan(&tokens.back(), 1);
    in.start_pos = static_cast<int>(tokens.size()) - 1;
    in.pages = pages;
    int32_t next = -1;
    const absl::Status st = e.ForwardGreedy(absl::MakeConstSpan(&in, 1), absl::MakeSpan(&next, 1));
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) break;
    out.push_back(next);
    tokens.push_back(next);
  }
  return out;
}

class CpuBackendModelTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    engine_ = MakeEngine(GetParam());
    ASSERT_NE(engine_, nullptr);
    vocab_ = engine_->config().vocab_size;
  }
  std::vector<int32_t> Tokens(size_t n, uint64_t seed) const {
    return RandomTokens(n, seed, vocab_);
  }

  std::unique_ptr<Engine> engine_;
  int vocab_ = 0;
};

// A naive double-precision forward pass straight from the checkpoint: the backend must agree
// with it to fp32 rounding.
std::vector<double> ReferenceLogits(const ModelWeights& w, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = w.config();
  auto f = [](const TensorView& t) {
    std::vector<float> out(t.NumElements());
    ConvertToFloat(t.dtype, t.data, out.size(), out.data());
    return std::vector<double>(out.begin(), out.end());
  };
  const int h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int inter = c.intermediate_size, n = static_cast<int>(tokens.size());
  auto linear = [](const std::vector<double>& x, const std::vector<double>& wt, int out_dim,
                   int in_dim) {
    std::vector<double> y(out_dim);
    for (int o = 0; o < out_dim; ++o) {
      double s = 0;
      for (int i = 0; i < in_dim; ++i) s += x[i] * wt[size_t(o) * in_dim + i];
      y[o] = s;
    }
    return y;
  };
  auto norm = [&](const std::vector<double>& x, const std::vector<double>& wt) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c.rms_norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = wt[i] * x[i] * inv;
    return y;
  };
  const std::vector<float> inv_freq = RopeInvFreq(c);
  auto rope = [&](double* x, int pos) {
    for (int i = 0; i < d / 2; ++i) {
      const double a = RopeAngle(pos, inv_freq[i]);
      const double x0 = x[i], x1 = x[i + d / 2];
      x[i] = x0 * std::cos(a) - x1 * std::sin(a);
      x[i + d / 2] = x1 * std::cos(a) + x0 * std::sin(a);
    }
  };
  const std::vector<double> embed = f(w.embed());
  std::vector<std::vector<double>> hs(n);
  for (int t = 0; t < n; ++t) {
    hs[t].assign(embed.begin() + size_t(tokens[t]) * h, embed.begin() + size_t(tokens[t] + 1) * h);
  }
  for (const LayerWeights& lw : w.layers()) {
    const auto in_norm = f(*lw.input_norm), post = f(*lw.post_norm), wq = f(*lw.q_proj),
               wk = f(*lw.k_proj), wv = f(*lw.v_proj), wo = f(*lw.o_proj), wg = f(*lw.gate_proj),
               wu = f(*lw.up_proj), wd = f(*lw.down_proj);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const auto x = norm(hs[t], in_norm);
      q[t] = linear(x, wq, nh * d, h);
      k[t] = linear(x, wk, nkv * d, h);
      v[t] = linear(x, wv, nkv * d, h);
      if (lw.q_bias != nullptr) {
        const auto bq = f(*lw.q_bias), bk = f(*lw.k_bias), bv = f(*lw.v_bias);
        for (int i = 0; i < nh * d; ++i) q[t][i] += bq[i];
        for (int i = 0; i < nkv * d; ++i) k[t][i] += bk[i], v[t][i] += bv[i];
      }
      for (int hh = 0; hh < nh; ++hh) rope(&q[t][hh * d], t);
      for (int hh = 0; hh < nkv; ++hh) rope(&k[t][hh * d], t);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> attn(nh * d, 0.0);
      for (int hh = 0; hh < nh; ++hh) {
        const int g = hh / (nh / nkv);
        std::vector<double> s(t + 1);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int i = 0; i < d; ++i) dot += q[t][hh * d + i] * k[j][g * d + i];
          s[j] = dot / std::sqrt(double(d));
          mx = std::max(mx, s[j]);
        }
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int j = 0; j <= t; ++j) {
          for (int i = 0; i < d; ++i) attn[hh * d + i] += s[j] / sum * v[j][g * d + i];
        }
      }
      const auto o = linear(attn, wo, h, nh * d);
      for (int i = 0; i < h; ++i) hs[t][i] += o[i];
      const auto x = norm(hs[t], post);
      const auto gate = linear(x, wg, inter, h), up = linear(x, wu, inter, h);
      std::vector<double> act(inter);
      for (int i = 0; i < inter; ++i) act[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      const auto down = linear(act, wd, h, inter);
      for (int i = 0; i < h; ++i) hs[t][i] += down[i];
    }
  }
  const auto x = norm(hs[n - 1], f(w.final_norm()));
  return linear(x, f(w.lm_head()), c.vocab_size, h);
}

TEST_P(CpuBackendModelTest, MatchesDoublePrecisionReference) {
  const std::vector<int32_t> tokens = Tokens(19, 1);
  const std::vector<float> logits = RunOne(*engine_, tokens, 0, 19, Range(0, 2));
  const std::vector<double> ref = ReferenceLogits(engine_->weights(), tokens);
  double max_abs = 0, max_diff = 0;
  for (int i = 0; i < vocab_; ++i) {
    ASSERT_TRUE(std::isfinite(logits[i]));
    max_abs = std::max(max_abs, std::abs(ref[i]));
    max_diff = std::max(max_diff, std::abs(ref[i] - logits[i]));
  }
  EXPECT_GT(max_abs, 0.1);
  EXPECT_LT(max_diff, 1e-3 * std::max(1.0, max_abs)) << "max |ref| " << max_abs;
  int ref_argmax = 0;
  for (int i = 1; i < vocab_; ++i) {
    if (ref[i] > ref[ref_argmax]) ref_argmax = i;
  }
  EXPECT_EQ(Argmax(logits), ref_argmax);
}

// (a) Prefill then decode, step by step, equals one longer prefill.
TEST_P(CpuBackendModelTest, DecodeStepsEqualLongerPrefill) {
  const int n = 21, steps = 20;
  std::vector<int32_t> all = Tokens(n, 2);
  const std::vector<int32_t> pages = Range(0, 3);
  std::vector<std::vector<float>> step_logits = {RunOne(*engine_, all, 0, n, pages)};
  for (int i = 0; i < steps; ++i) {
    all.push_back(Argmax(step_logits.back()));
    step_logits.push_back(RunOne(*engine_, all, n + i, n + i + 1, pages));
  }
  // Greedy decoding through ForwardGreedy (on fresh pages) picks the same tokens.
  const std::vector<int32_t> prompt(all.begin(), all.begin() + n);
  RunOne(*engine_, prompt, 0, n, Range(3, 6));
  EXPECT_EQ(GreedyDecode(*engine_, prompt, all[n], steps, Range(3, 6)),
            std::vector<int32_t>(all.begin() + n, all.end()));
  // One prefill of all[0, n + i) gives the logits of decode step i, bit for bit.
  for (int i : {0, 1, 7, 16, 20}) {
    const std::vector<float> full = RunOne(*engine_, all, 0, n + i, Range(10, 13));
    EXPECT_TRUE(SameBits(full, step_logits[i])) << i;
  }
  // And the K/V of the decoded sequence equals the one-shot prefill's (the last prefill
  // covered every position the decode steps computed).
  EXPECT_TRUE(Export(*engine_, pages) == Export(*engine_, Range(10, 13)));
}

// (b) Chunked prefill gives the same K/V and logits as one prefill.
TEST_P(CpuBackendModelTest, ChunkedPrefillIsBitIdentical) {
  const int n = 45;  // not a multiple of block_tokens (16)
  const std::vector<int32_t> tokens = Tokens(n, 3);
  const std::vector<float> full = RunOne(*engine_, tokens, 0, n, Range(0, 3));
  const std::vector<uint8_t> full_kv = Export(*engine_, Range(0, 3));
  int base = 3;
  for (int p : {16, 32, 21, 1, 44}) {
    const std::vector<int32_t> pages = Range(base, base + 3);
    base += 3;
    RunOne(*engine_, tokens, 0, p, pages);
    const std::vector<float> chunked = RunOne(*engine_, tokens, p, n, pages);
    EXPECT_TRUE(SameBits(full, chunked)) << "split at " << p;
    EXPECT_TRUE(full_kv == Export(*engine_, pages)) << "split at " << p;
  }
  // Many small uneven chunks.
  const std::vector<int32_t> pages = Range(base, base + 3);
  std::vector<float> last;
  for (int start = 0, len = 1; start < n; start += len, len = len % 6 + 2) {
    last = RunOne(*engine_, tokens, start, std::min(n, start + len), pages);
  }
  EXPECT_TRUE(SameBits(full, last));
  EXPECT_TRUE(full_kv == Export(*engine_, pages));
}

// (c) Import of exported pages, then the rest of the prompt, on another engine instance.
TEST_P(CpuBackendModelTest, ImportedPrefixIsBitIdentical) {
  const int n = 53, p = 32;
  const std::vector<int32_t> tokens = Tokens(n, 4);
  const std::vector<int32_t> pages_a = {0, 1, 2, 3, 4, 5};  // covers n + 32 positions
  const std::vector<float> full = RunOne(*engine_, tokens, 0, n, pages_a);
  const std::vector<uint8_t> kv_a = Export(*engine_, {0, 1, 2, 3});
  const std::vector<uint8_t> prefix = Export(*engine_, {0, 1});

  std::unique_ptr<Engine> other = MakeEngine(GetParam());
  ASSERT_NE(other, nullptr);
  const std::vector<int32_t> pages_b = {17, 9, 40, 3, 22, 5};
  ASSERT_TRUE(other->ImportPages({17, 9}, prefix).ok());
  const std::vector<float> resumed = RunOne(*other, tokens, p, n, pages_b);
  EXPECT_TRUE(SameBits(full, resumed));
  EXPECT_TRUE(kv_a == Export(*other, {17, 9, 40, 3}));

  const std::vector<int32_t> cont_a = GreedyDecode(*engine_, tokens, Argmax(full), 32, pages_a);
  const std::vector<int32_t> cont_b = GreedyDecode(*other, tokens, Argmax(resumed), 32, pages_b);
  EXPECT_EQ(cont_a, cont_b);
  EXPECT_TRUE(Export(*engine_, pages_a) == Export(*other, pages_b));
}

// (d) A batch of sequences of different lengths and starts equals each sequence alone.
TEST_P(CpuBackendModelTest, BatchEqualsEachSequenceAlone) {
  struct Seq {
    std::vector<int32_t> tokens;
    int start, end;
    std::vector<int32_t> pages_batch, pages_alone;
  };
  std::vector<Seq> seqs = {
      {Tokens(1, 10), 0, 1, {0}, {20}},
      {Tokens(7, 11), 0, 7, {1}, {21}},
      {Tokens(16, 12), 0, 16, {2}, {22}},
      {Tokens(40, 13), 0, 40, {3, 4, 5}, {23, 24, 25}},
      {Tokens(30, 14), 16, 30, {6, 7}, {26, 27}},  // a prefix already computed
      {Tokens(20, 15), 19, 20, {8, 9}, {28, 29}},  // a decode step
      {Tokens(36, 16), 35, 36, {10, 11, 12}, {30, 31, 32}},
  };
  // Compute the prefixes first, on both page sets.
  for (Seq& s : seqs) {
    if (s.start > 0) {
      RunOne(*engine_, s.tokens, 0, s.start, s.pages_batch);
      RunOne(*engine_, s.tokens, 0, s.start, s.pages_alone);
    }
  }
  std::vector<SeqInput> batch;
  for (const Seq& s : seqs) {
    SeqInput in;
    in.tokens = absl::MakeConstSpan(s.tokens).subspan(s.start, s.end - s.start);
    in.start_pos = s.start;
    in.pages = s.pages_batch;
    batch.push_back(in);
  }
  std::vector<float> logits(seqs.size() * vocab_);
  ASSERT_TRUE(engine_->Forward(batch, absl::MakeSpan(logits)).ok());
  std::vector<int32_t> greedy(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Seq& s = seqs[i];
    const std::vector<float> alone = RunOne(*engine_, s.tokens, s.start, s.end, s.pages_alone);
    EXPECT_EQ(0, std::memcmp(alone.data(), &logits[i * vocab_], vocab_ * sizeof(float))) << i;
    EXPECT_TRUE(Export(*engine_, s.pages_batch) == Export(*engine_, s.pages_alone)) << i;
    greedy[i] = Argmax(alone);
  }
  // ForwardGreedy over the same batch (recomputing the same K/V) gives the argmaxes.
  std::vector<int32_t> next(seqs.size());
  ASSERT_TRUE(engine_->ForwardGreedy(batch, absl::MakeSpan(next)).ok());
  EXPECT_EQ(next, greedy);
}

// The thread count changes nothing either. 400 tokens: long enough that the GEMMs and the
// attention run on several threads.
TEST_P(CpuBackendModelTest, ThreadCountDoesNotChangeBits) {
  const int n = 400;
  const std::vector<int32_t> tokens = Tokens(n, 5);
  const std::vector<int32_t> pages = Range(0, 25);
  const std::vector<float> multi = RunOne(*engine_, tokens, 0, n, pages);
  const std::vector<uint8_t> multi_kv = Export(*engine_, pages);
  EngineOptions opts = SmallOptions();
  opts.num_threads = 1;
  std::unique_ptr<Engine> single = MakeEngine(GetParam(), opts);
  ASSERT_NE(single, nullptr);
  RunOne(*single, tokens, 0, 150, pages);
  const std::vector<float> one = RunOne(*single, tokens, 150, n, pages);
  EXPECT_TRUE(SameBits(multi, one));
  EXPECT_TRUE(multi_kv == Export(*single, pages));
}

// (e) Presets: Llama, Qwen2 (QKV bias, tied embeddings), Llama 3 (rope scaling), bf16 weights.
INSTANTIATE_TEST_SUITE_P(CpuBackend, CpuBackendModelTest,
                         ::testing::Values(ModelCase{"tiny_f32", "tiny", DType::kF32},
                                           ModelCase{"tiny_bf16", "tiny", DType::kBF16},
                                           ModelCase{"qwen2_bf16", "tiny-qwen2", DType::kBF16},
                                           ModelCase{"llama3_f32", "tiny-llama3", DType::kF32}),
                         [](const ::testing::TestParamInfo<ModelCase>& info) {
                           return info.param.name;
                         });

// ---------------------------------------------------------------------------------------------
// (f) Argument validation.

class CpuBackendValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EngineOptions opts = SmallOptions();
    opts.max_batch_tokens = 64;
    opts.max_batch_seqs = 4;
    engine_ = MakeEngine(kCase, opts);
    ASSERT_NE(engine_, nullptr);
    // Some state to protect.
    tokens_ = RandomTokens(40, 6, engine_->config().vocab_size);
    RunOne(*engine_, tokens_, 0, 40, Range(0, 3));
    before_ = Export(*engine_, Range(0, engine_->num_pages()));
  }
  // `batch` must fail with InvalidArgument and leave every page as it was.
  void ExpectRejected(const std::vector<SeqInput>& batch, size_t logits_size = 0) {
    const int vocab = engine_->config().vocab_size;
    std::vector<float> logits(logits_size > 0 ? logits_size : batch.size() * vocab);
    EXPECT_EQ(engine_->Forward(batch, absl::MakeSpan(logits)).code(),
              absl::StatusCode::kInvalidArgument);
    std::vector<int32_t> next(std::max<size_t>(batch.size(), 1));
    if (logits_size == 0) {
      EXPECT_EQ(engine_->ForwardGreedy(batch, absl::MakeSpan(next)).code(),
                absl::StatusCode::kInvalidArgument);
    }
    EXPECT_TRUE(before_ == Export(*engine_, Range(0, engine_->num_pages())));
  }
  SeqInput Input(int start, int end, const std::vector<int32_t>& pages) const {
    SeqInput in;
    in.tokens = absl::MakeConstSpan(tokens_).subspan(start, end - start);
    in.start_pos = start;
    in.pages = pages;
    return in;
  }

  static inline const ModelCase kCase{"tiny_f32", "tiny", DType::kF32};
  std::unique_ptr<Engine> engine_;
  std::vector<int32_t> tokens_;
  std::vector<uint8_t> before_;
};

TEST_F(CpuBackendValidationTest, BadPageIds) {
  const std::vector<int32_t> negative = {5, -1, 6};
  const std::vector<int32_t> too_big = {5, engine_->num_pages()};
  const std::vector<int32_t> ok = {5, 6, 7};
  ExpectRejected({Input(0, 30, negative)});
  ExpectRejected({Input(0, 30, too_big)});
  // One bad sequence spoils the batch: the good one is not computed either.
  ExpectRejected({Input(0, 30, ok), Input(0, 20, too_big)});
}

TEST_F(CpuBackendValidationTest, TooManyTokensOrSequences) {
  const std::vector<int32_t> pages = {5, 6, 7};
  ExpectRejected({Input(0, 40, pages), Input(0, 30, {8, 9})});  // 70 > max_batch_tokens 64
  const std::vector<int32_t> p1 = {10}, p2 = {11}, p3 = {12}, p4 = {13}, p5 = {14};
  ExpectRejected({Input(0, 1, p1), Input(0, 1, p2), Input(0, 1, p3), Input(0, 1, p4),
                  Input(0, 1, p5)});  // 5 > max_batch_seqs 4
  ExpectRejected({});
  ExpectRejected({Input(3, 3, pages)});  // no tokens
}

TEST_F(CpuBackendValidationTest, TokenOutOfVocabulary) {
  std::vector<int32_t> bad = tokens_;
  bad[7] = engine_->config().vocab_size;
  const std::vector<int32_t> pages = {5, 6, 7};
  SeqInput in = Input(0, 20, pages);
  in.tokens = absl::MakeConstSpan(bad).subspan(0, 20);
  ExpectRejected({in});
  bad[7] = -3;
  ExpectRejected({in});
}

TEST_F(CpuBackendValidationTest, PageTableTooShortOrPositionsTooFar) {
  const std::vector<int32_t> two = {5, 6};
  ExpectRejected({Input(0, 33, two)});  // 33 positions need 3 pages of 16
  std::vector<int32_t> many(engine_->config().max_position_embeddings / 16 + 1, 5);
  SeqInput far = Input(0, 1, many);
  far.start_pos = engine_->config().max_position_embeddings;
  ExpectRejected({far});
  SeqInput negative = Input(0, 1, two);
  negative.start_pos = -1;
  ExpectRejected({negative});
}

TEST_F(CpuBackendValidationTest, LogitsBufferTooSmall) {
  const std::vector<int32_t> pages = {5, 6};
  ExpectRejected({Input(0, 20, pages)}, engine_->config().vocab_size - 1);
}

TEST_F(CpuBackendValidationTest, ExportImportArguments) {
  std::vector<uint8_t> buf(engine_->kv_layout().BlockBytes());
  EXPECT_EQ(engine_->ExportPages({engine_->num_pages()}, absl::MakeSpan(buf)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->ExportPages({0, 1}, absl::MakeSpan(buf)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->ImportPages({-1}, buf).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(before_ == Export(*engine_, Range(0, engine_->num_pages())));
  // A round trip through another page.
  ASSERT_TRUE(engine_->ExportPages({1}, absl::MakeSpan(buf)).ok());
  ASSERT_TRUE(engine_->ImportPages({50}, buf).ok());
  EXPECT_TRUE(Export(*engine_, {1}) == Export(*engine_, {50}));
}

TEST_F(CpuBackendValidationTest, ImportBlocksReadsEachBlockFromItsOwnPointer) {
  const size_t block = engine_->kv_layout().BlockBytes();
  // Two blocks in separate, differently aligned buffers, imported in reverse page order.
  std::vector<uint8_t> a(block), b(block + 3);
  ASSERT_TRUE(engine_->ExportPages({1}, absl::MakeSpan(a)).ok());
  ASSERT_TRUE(engine_->ExportPages({2}, absl::MakeSpan(b.data() + 3, block)).ok());
  const std::vector<const uint8_t*> blocks = {a.data(), b.data() + 3};
  ASSERT_TRUE(engine_->ImportBlocks({60, 59}, blocks).ok());
  EXPECT_TRUE(Export(*engine_, {1}) == Export(*engine_, {60}));
  EXPECT_TRUE(Export(*engine_, {2}) == Export(*engine_, {59}));

  const std::vector<uint8_t> pages_before = Export(*engine_, Range(0, engine_->num_pages()));
  EXPECT_EQ(engine_->ImportBlocks({3}, blocks).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<const uint8_t*> with_null = {a.data(), nullptr};
  EXPECT_EQ(engine_->ImportBlocks({3, 4}, with_null).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->ImportBlocks({3, engine_->num_pages()}, blocks).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(pages_before == Export(*engine_, Range(0, engine_->num_pages())));
  // Registering host memory is a no-op on the CPU backend, and pinned-or-not changes nothing.
  EXPECT_TRUE(engine_->RegisterHostMemory(a.data(), a.size()).ok());
  engine_->UnregisterHostMemory(a.data());
}

TEST_F(CpuBackendValidationTest, CacheSmallerThanOneBlock) {
  EngineOptions opts;
  opts.kv_cache_bytes = static_cast<int64_t>(engine_->kv_layout().BlockBytes()) - 1;
  EXPECT_EQ(Engine::Create(ModelDir(kCase), opts).status().code(),
            absl::StatusCode::kInvalidArgument);
  opts.kv_cache_bytes = static_cast<int64_t>(engine_->kv_layout().BlockBytes()) * 3 + 5;
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(ModelDir(kCase), opts);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ((*e)->num_pages(), 3);
  EXPECT_EQ((*e)->kv_layout().dtype_name, "fp32");
  EXPECT_EQ((*e)->kv_layout().BlockBytes(), size_t{4} * 2 * 2 * 16 * 64 * 4);
}

}  // namespace
}  // namespace kvtier::engine
