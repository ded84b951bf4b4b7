// Tests of the bf16 CUDA backend (label gpu). Kernel tests run each launcher of engine/cuda/
// (elementwise.cuh, prefill_attention.cuh and every variant of prefill_variants.cuh,
// decode_attention.cuh) on random inputs against a straightforward CPU computation in double,
// with outputs and unused cache memory poisoned with NaN first, so a row never written or a key
// read past a sequence's end shows up. Engine tests compare the CUDA engine with the fp32 CPU
// backend and with itself (prefill vs decode, imported prefixes, CUDA graphs vs eager,
// batching). Every test skips when no CUDA device is present. Errors are printed so that the
// log shows the margins.
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backends.h"
#include "engine/cuda/cuda_util.h"
#include "engine/cuda/decode_attention.cuh"
#include "engine/cuda/elementwise.cuh"
#include "engine/cuda/layout.cuh"
#include "engine/cuda/prefill_attention.cuh"
#include "engine/cuda/prefill_variants.cuh"
#include "engine/engine.h"
#include "engine/model_config.h"
#include "engine/rope.h"
#include "engine/safetensors.h"
#include "engine/testing/model_writer.h"
#include "engine/testing/test_util.h"
#include "engine/weights.h"
#include "gtest/gtest.h"

namespace kvtier::engine {
namespace {

using cuda::bf16;
using ::kvtier::testing::RandomModelDir;
using ::kvtier::testing::RandomTokens;
using ::kvtier::testing::ScopedTempDir;
using ::kvtier::testing::WriteRandomModel;

bool HasCudaDevice() {
  static const bool has = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return has;
}

#define SKIP_WITHOUT_CUDA()                                 \
  do {                                                      \
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

#define ASSERT_CUDA(expr)                                                                \
  do {                                                                                   \
    const cudaError_t kvtier_e_ = (expr);                                                \
    ASSERT_EQ(kvtier_e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(kvtier_e_); \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Host helpers.

std::vector<float> RandomNormal(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> out(n);
  for (float& v : out) {
    do {
      v = dist(rng);
    } while (v == 0.0f);  // never zeros
  }
  return out;
}

std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = FloatToBf16(v[i]);
  return out;
}

std::vector<float> FromBf16(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Bf16ToFloat(v[i]);
  return out;
}

// The values after a round trip through bf16 (what the device sees).
std::vector<float> RoundBf16(const std::vector<float>& v) { return FromBf16(ToBf16(v)); }

// Checks |got[i] - want[i]| <= atol + rtol * |want[i]| (and got finite) for every i; prints the
// largest error and the first violations, naming `what`.
void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double atol,
                 double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double max_abs = 0;
  size_t max_at = 0;
  int64_t bad = 0, nonfinite = 0;
  std::string first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double err = std::abs(g - w);
    if (!std::isfinite(g)) ++nonfinite;
    if (!std::isfinite(g) || err > atol + rtol * std::abs(w)) {
      if (bad < 5) absl::StrAppend(&first, " [", i, "] got ", g, " want ", w, ";");
      ++bad;
    }
    if (std::isfinite(g) && err > max_abs) {
      max_abs = err;
      max_at = i;
    }
  }
  std::printf(
      "  %s: %zu values, max abs err %.3g at %zu (want %.4g), %lld beyond tolerance, "
      "%lld non-finite\n",
      what.c_str(), got.size(), max_abs, max_at, got.empty() ? 0.0 : want[max_at],
      static_cast<long long>(bad), static_cast<long long>(nonfinite));
  EXPECT_EQ(bad, 0) << what << ": first violations:" << first;
}

double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double d = double(got[i]) - want[i];
    num += d * d;
    den += double(want[i]) * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

int ArgmaxHost(const float* v, int n) {
  int best = 0;
  float bv = -INFINITY;
  for (int i = 0; i < n; ++i) {
    const float x = std::isnan(v[i]) ? -INFINITY : v[i];
    if (x > bv) {
      bv = x;
      best = i;
    }
  }
  return best;
}

// Device memory owned by a test; allocation failures are recorded (check ok()).
class Arena {
 public:
  template <typename T>
  T* Alloc(size_t n) {
    absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(std::max<size_t>(1, n) * sizeof(T));
    if (!b.ok()) {
      ADD_FAILURE() << b.status();
      ok_ = false;
      return nullptr;
    }
    bufs_.push_back(std::move(*b));
    return bufs_.back().as<T>();
  }
  // n elements, every byte `byte` (0xFF: NaN for bf16 and fp32).
  template <typename T>
  T* Filled(size_t n, uint8_t byte) {
    T* p = Alloc<T>(n);
    if (p != nullptr && cudaMemset(p, byte, n * sizeof(T)) != cudaSuccess) {
      ADD_FAILURE() << "cudaMemset";
      ok_ = false;
    }
    return p;
  }
  template <typename T>
  T* Put(const std::vector<T>& host) {
    T* p = Alloc<T>(host.size());
    if (p != nullptr && !host.empty() &&
        cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) !=
            cudaSuccess) {
      ADD_FAILURE() << "cudaMemcpy H2D";
      ok_ = false;
    }
    return p;
  }
  bool ok() const { return ok_; }

 private:
  std::vector<DeviceBuffer> bufs_;
  bool ok_ = true;
};

template <typename T>
std::vector<T> Get(const T* dev, size_t n) {
  std::vector<T> out(n);
  const cudaError_t e = cudaMemcpy(out.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost);
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  return out;
}

bf16* AsBf16(uint16_t* p) { return reinterpret_cast<bf16*>(p); }
const bf16* AsBf16(const uint16_t* p) { return reinterpret_cast<const bf16*>(p); }

constexpr uint16_t kBf16NaN = 0xFFFF;

// ---------------------------------------------------------------------------------------------
// Element-wise and row-wise kernels.

TEST(CudaKernelsTest, EmbeddingAndAddRmsNorm) {
  SKIP_WITHOUT_CUDA();
  for (int hidden : {1000, 4096, 16384}) {  // 16384: > 48 KiB of shared memory
    SCOPED_TRACE(absl::StrCat("hidden ", hidden));
    Arena a;
    const int vocab = 50, rows = 5;
    const std::vector<float> table = RoundBf16(RandomNormal(size_t(vocab) * hidden, 1));
    const std::vector<int32_t> tokens = {7, 0, 49, 7, 23};
    const std::vector<float> delta = RoundBf16(RandomNormal(size_t(rows) * hidden, 2, 0.5f));
    const std::vector<float> weight = RandomNormal(hidden, 3, 0.3f);
    const float eps = 1e-5f;
    uint16_t* table_d = a.Put(ToBf16(table));
    int32_t* tokens_d = a.Put(tokens);
    float* resid_d = a.Filled<float>(size_t(rows) * hidden, 0xFF);
    uint16_t* delta_d = a.Put(ToBf16(delta));
    float* weight_d = a.Put(weight);
    uint16_t* out_d = a.Filled<uint16_t>(size_t(rows) * hidden, 0xFF);
    ASSERT_TRUE(a.ok());

    ASSERT_CUDA(cuda::LaunchEmbedding(AsBf16(table_d), tokens_d, rows, hidden, resid_d, 0));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<float> resid = Get(resid_d, size_t(rows) * hidden);
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < hidden; ++i) {
        ASSERT_EQ(resid[size_t(r) * hidden + i], table[size_t(tokens[r]) * hidden + i])
            << "embedding row " << r << " col " << i;
      }
    }

    auto reference = [&](const std::vector<float>& x, int r) {
      double ss = 0;
      for (int i = 0; i < hidden; ++i)
        ss += double(x[size_t(r) * hidden + i]) * x[size_t(r) * hidden + i];
      const double inv = 1.0 / std::sqrt(ss / hidden + eps);
      std::vector<double> out(hidden);
      for (int i = 0; i < hidden; ++i) out[i] = x[size_t(r) * hidden + i] * inv * weight[i];
      return out;
    };

    // 1) No delta: normalizes the residual, leaves it alone.
    ASSERT_CUDA(cuda::LaunchAddRmsNorm(resid_d, nullptr, nullptr, rows, hidden, weight_d, eps,
                                       AsBf16(out_d), /*write_residual=*/false, 0));
    ASSERT_CUDA(cudaDeviceSynchronize());
    {
      const std::vector<float> got = FromBf16(Get(out_d, size_t(rows) * hidden));
      std::vector<double> want;
      for (int r = 0; r < rows; ++r) {
        const std::vector<double> w = reference(resid, r);
        want.insert(want.end(), w.begin(), w.end());
      }
      ExpectClose(got, want, 1e-5, 8e-3, "rmsnorm");
      EXPECT_EQ(Get(resid_d, size_t(rows) * hidden), resid);
    }

    // 2) With delta, writing the residual back (fp32 adds: bit-exact).
    ASSERT_CUDA(cudaMemset(out_d, 0xFF, size_t(rows) * hidden * 2));
    ASSERT_CUDA(cuda::LaunchAddRmsNorm(resid_d, AsBf16(delta_d), nullptr, rows, hidden, weight_d,
                                       eps, AsBf16(out_d), /*write_residual=*/true, 0));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<float> summed = resid;
    for (size_t i = 0; i < summed.size(); ++i) summed[i] = resid[i] + delta[i];
    EXPECT_EQ(Get(resid_d, size_t(rows) * hidden), summed) << "residual write-back";
    {
      const std::vector<float> got = FromBf16(Get(out_d, size_t(rows) * hidden));
      std::vector<double> want;
      for (int r = 0; r < rows; ++r) {
        const std::vector<double> w = reference(summed, r);
        want.insert(want.end(), w.begin(), w.end());
      }
      ExpectClose(got, want, 1e-5, 8e-3, "add+rmsnorm");
    }

    // 3) Gathered rows (the final norm): out row i from residual row rows[i], no write-back.
    const std::vector<int32_t> pick = {4, 1, 1};
    int32_t* pick_d = a.Put(pick);
    ASSERT_TRUE(a.ok());
    ASSERT_CUDA(cudaMemset(out_d, 0xFF, size_t(rows) * hidden * 2));
    ASSERT_CUDA(cuda::LaunchAddRmsNorm(resid_d, AsBf16(delta_d), pick_d, 3, hidden, weight_d, eps,
                                       AsBf16(out_d), /*write_residual=*/false, 0));
    ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_EQ(Get(resid_d, size_t(rows) * hidden), summed) << "gathered norm wrote the residual";
    {
      std::vector<float> summed2 = summed;
      for (size_t i = 0; i < summed2.size(); ++i) summed2[i] = summed[i] + delta[i];
      const std::vector<float> all = FromBf16(Get(out_d, size_t(rows) * hidden));
      const std::vector<float> got(all.begin(), all.begin() + 3 * hidden);
      std::vector<double> want;
      for (int r : pick) {
        const std::vector<double> w = reference(summed2, r);
        want.insert(want.end(), w.begin(), w.end());
      }
      ExpectClose(got, want, 1e-5, 8e-3, "gathered add+rmsnorm");
      for (size_t i = 3 * size_t(hidden); i < all.size(); ++i) {
        ASSERT_TRUE(std::isnan(all[i])) << "row past n written at " << i;
      }
    }
  }
}

TEST(CudaKernelsTest, SiluMul) {
  SKIP_WITHOUT_CUDA();
  Arena a;
  const int rows = 7, inter = 344;
  const std::vector<float> gu = RoundBf16(RandomNormal(size_t(rows) * 2 * inter, 4, 3.0f));
  uint16_t* gu_d = a.Put(ToBf16(gu));
  uint16_t* out_d = a.Filled<uint16_t>(size_t(rows) * inter, 0xFF);
  ASSERT_TRUE(a.ok());
  ASSERT_CUDA(cuda::LaunchSiluMul(AsBf16(gu_d), rows, inter, AsBf16(out_d), 0));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<double> want(size_t(rows) * inter);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < inter; ++i) {
      const double g = gu[size_t(r) * 2 * inter + i], u = gu[size_t(r) * 2 * inter + inter + i];
      want[size_t(r) * inter + i] = g / (1.0 + std::exp(-g)) * u;
    }
  }
  ExpectClose(FromBf16(Get(out_d, want.size())), want, 1e-5, 8e-3, "silu*mul");
}

TEST(CudaKernelsTest, Argmax) {
  SKIP_WITHOUT_CUDA();
  Arena a;
  const int vocab = 151937, rows = 5;
  std::vector<float> logits = RandomNormal(size_t(rows) * vocab, 5, 4.0f);
  std::vector<int32_t> want(rows);
  want[0] = ArgmaxHost(logits.data(), vocab);
  // Row 1: a tie between two maxima: the lower index wins.
  logits[size_t(vocab) + 90000] = 100.0f;
  logits[size_t(vocab) + 300] = 100.0f;
  want[1] = 300;
  // Row 2: NaNs everywhere but a few finite values (NaN counts as -inf).
  for (int i = 0; i < vocab; ++i) logits[size_t(2) * vocab + i] = NAN;
  logits[size_t(2) * vocab + 5] = -3.0f;
  logits[size_t(2) * vocab + vocab - 1] = -2.0f;
  want[2] = vocab - 1;
  // Row 3: all NaN or -inf: index 0.
  for (int i = 0; i < vocab; ++i) logits[size_t(3) * vocab + i] = (i % 2) ? NAN : -INFINITY;
  want[3] = 0;
  // Row 4: +inf beats everything, the last element.
  logits[size_t(4) * vocab + vocab - 1] = INFINITY;
  want[4] = vocab - 1;
  float* logits_d = a.Put(logits);
  int32_t* out_d = a.Filled<int32_t>(rows, 0xFF);
  ASSERT_TRUE(a.ok());
  ASSERT_CUDA(cuda::LaunchArgmax(logits_d, rows, vocab, out_d, 0));
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(Get(out_d, rows), want);
}

// ---------------------------------------------------------------------------------------------
// RoPE + KV write.

TEST(CudaKernelsTest, QkvRopeKvWrite) {
  SKIP_WITHOUT_CUDA();
  for (int D : {64, 128}) {
    for (bool bias : {false, true}) {
      for (bool llama3 : {false, true}) {
        SCOPED_TRACE(absl::StrCat("head_dim ", D, " bias ", bias, " llama3 ", llama3));
        ModelConfig cfg = *PresetConfig(llama3 ? "tiny-llama3" : "tiny");
        cfg.head_dim = D;
        const std::vector<float> inv_freq = RopeInvFreq(cfg);
        const int H = 6, KV = 2, B = 16, num_pages = 12;
        const int width = (H + 2 * KV) * D;
        const std::vector<int32_t> positions = {0, 1, 15, 16, 4097, 100003, 31};
        const std::vector<int32_t> pages = {7, 3, 3, 11, 0, 5, 2};  // page of each row
        const int rows = static_cast<int>(positions.size());
        std::vector<int32_t> slots(rows);
        for (int r = 0; r < rows; ++r) slots[r] = pages[r] * B + positions[r] % B;
        const std::vector<float> qkv = RoundBf16(RandomNormal(size_t(rows) * width, 10 + D));
        const std::vector<float> b = RandomNormal(width, 11, 0.1f);
        const int64_t page_stride = int64_t{2} * KV * B * D;

        Arena a;
        uint16_t* qkv_d = a.Put(ToBf16(qkv));
        float* bias_d = bias ? a.Put(b) : nullptr;
        int32_t* pos_d = a.Put(positions);
        int32_t* slots_d = a.Put(slots);
        float* freq_d = a.Put(inv_freq);
        uint16_t* cache_d = a.Filled<uint16_t>(size_t(num_pages) * page_stride, 0xFF);
        uint16_t* q_d = a.Filled<uint16_t>(size_t(rows) * H * D, 0xFF);
        ASSERT_TRUE(a.ok());
        cuda::KvCacheView view;
        view.base = AsBf16(cache_d);
        view.page_stride = page_stride;
        view.num_kv_heads = KV;
        view.block_tokens = B;
        view.head_dim = D;
        ASSERT_CUDA(cuda::LaunchQkvRopeKv(AsBf16(qkv_d), bias_d, pos_d, slots_d, rows, H, freq_d,
                                          view, AsBf16(q_d), 0));
        ASSERT_CUDA(cudaDeviceSynchronize());

        // Reference: bias, then rotate_half RoPE with the fp32 angle, in double.
        std::vector<double> want_q(size_t(rows) * H * D);
        std::vector<double> want_cache(size_t(num_pages) * page_stride, NAN);
        for (int r = 0; r < rows; ++r) {
          std::vector<double> x(width);
          for (int i = 0; i < width; ++i) {
            x[i] = double(qkv[size_t(r) * width + i]) + (bias ? double(b[i]) : 0.0);
          }
          for (int head = 0; head < H + KV; ++head) {
            std::vector<double> y(D);
            for (int i = 0; i < D / 2; ++i) {
              const double angle = RopeAngle(positions[r], inv_freq[i]);
              const double c = std::cos(angle), s = std::sin(angle);
              const double x1 = x[head * D + i], x2 = x[head * D + D / 2 + i];
              y[i] = x1 * c - x2 * s;
              y[i + D / 2] = x2 * c + x1 * s;
            }
            for (int i = 0; i < D; ++i) {
              if (head < H) {
                want_q[(size_t(r) * H + head) * D + i] = y[i];
              } else {
                want_cache[pages[r] * page_stride + (size_t(head - H) * B + positions[r] % B) * D +
                           i] = y[i];
              }
            }
          }
          for (int kvh = 0; kvh < KV; ++kvh) {
            for (int i = 0; i < D; ++i) {
              want_cache[pages[r] * page_stride + (size_t(KV + kvh) * B + positions[r] % B) * D +
                         i] = x[(H + KV + kvh) * D + i];
            }
          }
        }
        ExpectClose(FromBf16(Get(q_d, want_q.size())), want_q, 1e-4, 5e-3, "q after rope");
        // The cache: written slots match, every other element is still NaN.
        const std::vector<float> cache = FromBf16(Get(cache_d, want_cache.size()));
        std::vector<float> got_written;
        std::vector<double> want_written;
        for (size_t i = 0; i < cache.size(); ++i) {
          if (std::isnan(want_cache[i])) {
            ASSERT_TRUE(std::isnan(cache[i])) << "cache element " << i << " (page "
                                              << i / page_stride << ") written unexpectedly";
          } else {
            got_written.push_back(cache[i]);
            want_written.push_back(want_cache[i]);
          }
        }
        ExpectClose(got_written, want_written, 1e-4, 5e-3, "k/v in cache");
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The prefill variant table and the launchers' argument checks (no device needed: every call
// here is rejected before it reaches the CUDA runtime, or touches none).

TEST(CudaPrefillVariantsTest, AvailabilityAndRejectedLaunches) {
  // Serving's variants (one q head per CTA) serve every GQA ratio; so does variant 0.
  for (int D : {64, 128}) {
    for (auto [h, kv] : {std::pair{32, 8}, {28, 4}, {12, 4}, {7, 7}, {14, 2}, {16, 1}}) {
      SCOPED_TRACE(absl::StrCat("head_dim ", D, " heads ", h, " kv heads ", kv));
      EXPECT_TRUE(cuda::PrefillVariantAvailable(cuda::DefaultPrefillVariant(D), D, h, kv));
      EXPECT_TRUE(cuda::PrefillVariantAvailable(0, D, h, kv));
    }
  }
  // Which ids exist per head_dim (Llama-3-8B's GQA ratio 4).
  std::vector<int> hd64, hd128;
  for (int v = -1; v <= cuda::kNumPrefillVariants; ++v) {
    if (cuda::PrefillVariantAvailable(v, 64, 32, 8)) hd64.push_back(v);
    if (cuda::PrefillVariantAvailable(v, 128, 32, 8)) hd128.push_back(v);
  }
  EXPECT_EQ(hd64, (std::vector<int>{0, 1}));
  EXPECT_EQ(hd128, (std::vector<int>{0, 1, 2, 3, 4, 5, 6}));
  // Variant 4 gives a CTA two q heads of a KV group: an odd GQA ratio cannot use it.
  EXPECT_FALSE(cuda::PrefillVariantAvailable(4, 128, 28, 4));
  // No kernel for head_dim 96; a GQA shape that is not one.
  EXPECT_FALSE(cuda::PrefillVariantAvailable(0, 96, 32, 8));
  EXPECT_FALSE(cuda::PrefillVariantAvailable(0, 128, 30, 8));
  EXPECT_FALSE(cuda::PrefillVariantAvailable(0, 128, 32, 0));

  cuda::KvCacheView view;
  view.num_kv_heads = 4;
  view.block_tokens = 16;
  view.head_dim = 128;
  cuda::PrefillVariantInfo info;
  EXPECT_EQ(cuda::GetPrefillVariantInfo(2, 64, &info), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchPrefillAttentionVariant(4, nullptr, nullptr, nullptr, nullptr, 1, 28, view,
                                                nullptr, 0),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchPrefillAttentionVariant(cuda::kNumPrefillVariants, nullptr, nullptr,
                                                nullptr, nullptr, 1, 32, view, nullptr, 0),
            cudaErrorInvalidValue);
  EXPECT_EQ(
      cuda::LaunchPrefillAttention(nullptr, nullptr, nullptr, nullptr, 70000, 32, view, nullptr, 0),
      cudaErrorInvalidValue);
  view.head_dim = 96;
  EXPECT_EQ(
      cuda::LaunchPrefillAttention(nullptr, nullptr, nullptr, nullptr, 1, 32, view, nullptr, 0),
      cudaErrorInvalidValue);
  // Nothing to do is not an error.
  EXPECT_EQ(
      cuda::LaunchPrefillAttention(nullptr, nullptr, nullptr, nullptr, 0, 32, view, nullptr, 0),
      cudaSuccess);
}

// ---------------------------------------------------------------------------------------------
// Attention kernels over a NaN-poisoned paged cache.

struct AttnCase {
  int head_dim;
  int num_heads;
  int num_kv_heads;
  int block_tokens;
};

void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "head_dim " << c.head_dim << ", heads " << c.num_heads << ", kv heads " << c.num_kv_heads
      << ", block_tokens " << c.block_tokens;
}

std::string AttnCaseName(const ::testing::TestParamInfo<AttnCase>& info) {
  const AttnCase& c = info.param;
  return absl::StrCat("D", c.head_dim, "_H", c.num_heads, "_KV", c.num_kv_heads, "_B",
                      c.block_tokens);
}

// A batch of sequences with random K/V for positions [0, start + n) scattered over shuffled
// pages of a cache whose other slots are NaN, and random Q for the new tokens.
struct AttnFixture {
  struct Seq {
    int start = 0;
    int n_new = 0;
    int q_row = 0;
    std::vector<int32_t> pages;
    std::vector<float> k, v;  // [kv_head][pos][dim]
  };
  AttnCase c;
  std::vector<Seq> seqs;
  int rows = 0;
  int64_t page_stride = 0;
  int num_pages = 0;
  std::vector<uint16_t> cache;  // bf16
  std::vector<float> q;         // [rows][H][D], bf16-rounded
  std::vector<int32_t> page_table;
  std::vector<cuda::SeqInfo> info;

  AttnFixture(const AttnCase& cs, const std::vector<std::pair<int, int>>& shapes,
              const std::vector<int>& row_order, uint64_t seed)
      : c(cs) {
    const int B = c.block_tokens, D = c.head_dim, KV = c.num_kv_heads, H = c.num_heads;
    page_stride = int64_t{2} * KV * B * D;
    int total_pages = 0;
    for (auto [start, n] : shapes) total_pages += (start + n + B - 1) / B;
    num_pages = total_pages + 5;  // a few pages nobody uses
    std::vector<int32_t> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
    cache.assign(size_t(num_pages) * page_stride, kBf16NaN);
    // Rows of the sequences in `row_order` order (not necessarily the batch order).
    std::vector<int> row_of(shapes.size());
    int row = 0;
    for (int s : row_order) {
      row_of[s] = row;
      row += shapes[s].second;
    }
    rows = row;
    int next_page = 0;
    for (size_t s = 0; s < shapes.size(); ++s) {
      Seq sq;
      sq.start = shapes[s].first;
      sq.n_new = shapes[s].second;
      sq.q_row = row_of[s];
      const int len = sq.start + sq.n_new;
      const int np = (len + B - 1) / B;
      sq.pages.assign(perm.begin() + next_page, perm.begin() + next_page + np);
      next_page += np;
      sq.k = RoundBf16(RandomNormal(size_t(KV) * len * D, seed * 100 + 2 * s));
      sq.v = RoundBf16(RandomNormal(size_t(KV) * len * D, seed * 100 + 2 * s + 1));
      for (int kvh = 0; kvh < KV; ++kvh) {
        for (int p = 0; p < len; ++p) {
          const size_t base = size_t(sq.pages[p / B]) * page_stride;
          for (int d = 0; d < D; ++d) {
            const size_t src = (size_t(kvh) * len + p) * D + d;
            cache[base + (size_t(kvh) * B + p % B) * D + d] = FloatToBf16(sq.k[src]);
            cache[base + (size_t(KV + kvh) * B + p % B) * D + d] = FloatToBf16(sq.v[src]);
          }
        }
      }
      info.push_back(
          cuda::SeqInfo{sq.q_row, sq.n_new, sq.start, static_cast<int32_t>(page_table.size())});
      page_table.insert(page_table.end(), sq.pages.begin(), sq.pages.end());
      seqs.push_back(std::move(sq));
    }
    q = RoundBf16(RandomNormal(size_t(rows) * H * D, seed * 7 + 1, 2.0f));
  }

  // Softmax attention of the query of new token i of sequence s, head h, in double.
  std::vector<double> Reference(int s, int i, int h) const {
    const Seq& sq = seqs[s];
    const int D = c.head_dim, G = c.num_heads / c.num_kv_heads, kvh = h / G;
    const int len = sq.start + sq.n_new, qpos = sq.start + i;
    const float* qv = &q[(size_t(sq.q_row + i) * c.num_heads + h) * D];
    std::vector<double> scores(qpos + 1);
    double mx = -INFINITY;
    for (int p = 0; p <= qpos; ++p) {
      const float* kv = &sq.k[(size_t(kvh) * len + p) * D];
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += double(qv[d]) * kv[d];
      scores[p] = dot / std::sqrt(double(D));
      mx = std::max(mx, scores[p]);
    }
    double sum = 0;
    for (double& x : scores) sum += (x = std::exp(x - mx));
    std::vector<double> out(D, 0.0);
    for (int p = 0; p <= qpos; ++p) {
      const float* vv = &sq.v[(size_t(kvh) * len + p) * D];
      for (int d = 0; d < D; ++d) out[d] += scores[p] / sum * vv[d];
    }
    return out;
  }

  cuda::KvCacheView View(uint16_t* cache_d) const {
    cuda::KvCacheView v;
    v.base = AsBf16(cache_d);
    v.page_stride = page_stride;
    v.num_kv_heads = c.num_kv_heads;
    v.block_tokens = c.block_tokens;
    v.head_dim = c.head_dim;
    return v;
  }
};

class CudaAttentionTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaAttentionTest, PrefillMatchesReference) {
  SKIP_WITHOUT_CUDA();
  const AttnCase c = GetParam();
  // (start_pos, new tokens): prompts from scratch, continuations of cached prefixes, lengths
  // not multiples of 16 or 64, one-token sequences.
  const std::vector<std::pair<int, int>> shapes = {{0, 1},   {0, 37},   {100, 200}, {64, 128},
                                                   {5, 300}, {1000, 1}, {17, 129},  {0, 16}};
  const std::vector<int> row_order = {3, 0, 7, 1, 6, 2, 5, 4};
  AttnFixture f(c, shapes, row_order, 42);
  const int H = c.num_heads, D = c.head_dim;
  std::vector<cuda::PrefillWorkItem> work;
  for (size_t s = 0; s < shapes.size(); ++s) {
    for (int qt = 0; qt * cuda::kPrefillBlockM < shapes[s].second; ++qt) {
      work.push_back({static_cast<int32_t>(s), qt});
    }
  }
  std::reverse(work.begin(), work.end());
  std::vector<std::vector<double>> want(shapes.size());  // by sequence: [new token][head][dim]
  for (size_t s = 0; s < shapes.size(); ++s) {
    for (int i = 0; i < f.seqs[s].n_new; ++i) {
      for (int h = 0; h < H; ++h) {
        const std::vector<double> ref = f.Reference(static_cast<int>(s), i, h);
        want[s].insert(want[s].end(), ref.begin(), ref.end());
      }
    }
  }
  Arena a;
  uint16_t* cache_d = a.Put(f.cache);
  uint16_t* q_d = a.Put(ToBf16(f.q));
  int32_t* pt_d = a.Put(f.page_table);
  cuda::SeqInfo* info_d = a.Put(f.info);
  cuda::PrefillWorkItem* work_d = a.Put(work);
  const size_t out_n = size_t(f.rows) * H * D;
  uint16_t* out_d = a.Alloc<uint16_t>(out_n);
  ASSERT_TRUE(a.ok());
  // Every kernel variant (-1: LaunchPrefillAttention, i.e. the default variant).
  std::vector<uint16_t> serving_out;
  for (int variant = -1; variant < cuda::kNumPrefillVariants; ++variant) {
    if (variant >= 0 && !cuda::PrefillVariantAvailable(variant, D, H, c.num_kv_heads)) {
      continue;
    }
    SCOPED_TRACE(absl::StrCat("variant ", variant));
    ASSERT_CUDA(cudaMemset(out_d, 0xFF, out_n * sizeof(uint16_t)));
    if (variant < 0) {
      ASSERT_CUDA(cuda::LaunchPrefillAttention(AsBf16(q_d), info_d, pt_d, work_d,
                                               static_cast<int>(work.size()), H, f.View(cache_d),
                                               AsBf16(out_d), 0));
    } else {
      ASSERT_CUDA(cuda::LaunchPrefillAttentionVariant(variant, AsBf16(q_d), info_d, pt_d, work_d,
                                                      static_cast<int>(work.size()), H,
                                                      f.View(cache_d), AsBf16(out_d), 0));
    }
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<uint16_t> raw = Get(out_d, out_n);
    // The variant DefaultPrefillVariant names is the kernel serving runs: the same bits.
    if (variant < 0) serving_out = raw;
    if (variant == cuda::DefaultPrefillVariant(D)) {
      EXPECT_EQ(raw, serving_out);
    }
    const std::vector<float> out = FromBf16(raw);
    for (size_t s = 0; s < shapes.size(); ++s) {
      const auto& sq = f.seqs[s];
      const float* g = &out[size_t(sq.q_row) * H * D];
      ExpectClose(std::vector<float>(g, g + size_t(sq.n_new) * H * D), want[s], 1e-2, 1e-2,
                  absl::StrCat("prefill variant ", variant, " seq ", s, " (start ", sq.start,
                               ", new ", sq.n_new, ")"));
    }
  }
}

TEST_P(CudaAttentionTest, DecodeMatchesReference) {
  SKIP_WITHOUT_CUDA();
  const AttnCase c = GetParam();
  // One new token each, at total lengths 1, 17, 1000, 8192 and two odd ones.
  const std::vector<std::pair<int, int>> shapes = {{0, 1},    {16, 1},   {999, 1},
                                                   {8191, 1}, {4100, 1}, {63, 1}};
  const std::vector<int> row_order = {2, 5, 0, 4, 1, 3};
  AttnFixture f(c, shapes, row_order, 7);
  const int H = c.num_heads, D = c.head_dim;
  const std::vector<int32_t> decode_seqs = {3, 0, 5, 2, 4, 1};
  const int n = static_cast<int>(decode_seqs.size());
  std::vector<std::vector<double>> want(n);  // by sequence
  for (int s = 0; s < n; ++s) {
    for (int h = 0; h < H; ++h) {
      const std::vector<double> ref = f.Reference(s, 0, h);
      want[s].insert(want[s].end(), ref.begin(), ref.end());
    }
  }
  const int auto_splits = cuda::DecodeSplits(8, c.num_kv_heads, 132);
  for (int splits : {1, 3, auto_splits, cuda::kMaxDecodeSplits}) {
    SCOPED_TRACE(absl::StrCat("splits ", splits));
    Arena a;
    uint16_t* cache_d = a.Put(f.cache);
    uint16_t* q_d = a.Put(ToBf16(f.q));
    int32_t* pt_d = a.Put(f.page_table);
    cuda::SeqInfo* info_d = a.Put(f.info);
    int32_t* dec_d = a.Put(decode_seqs);
    float* acc_d = a.Filled<float>(size_t(n) * H * splits * D, 0xFF);
    float* lse_d = a.Filled<float>(size_t(n) * H * splits, 0xFF);
    uint16_t* out_d = a.Filled<uint16_t>(size_t(f.rows) * H * D, 0xFF);
    ASSERT_TRUE(a.ok());
    ASSERT_CUDA(cuda::LaunchDecodeAttention(AsBf16(q_d), info_d, pt_d, dec_d, n, splits, H,
                                            f.View(cache_d), acc_d, lse_d, AsBf16(out_d), 0));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> out = FromBf16(Get(out_d, size_t(f.rows) * H * D));
    for (int s = 0; s < n; ++s) {
      const float* g = &out[size_t(f.seqs[s].q_row) * H * D];
      ExpectClose(std::vector<float>(g, g + size_t(H) * D), want[s], 1e-2, 1e-2,
                  absl::StrCat("decode splits ", splits, " seq ", s, " (length ",
                               f.seqs[s].start + 1, ")"));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionTest,
                         ::testing::Values(AttnCase{64, 4, 4, 16}, AttnCase{64, 8, 2, 32},
                                           AttnCase{64, 16, 2, 16}, AttnCase{128, 4, 4, 16},
                                           AttnCase{128, 8, 2, 16}, AttnCase{128, 16, 2, 32},
                                           AttnCase{128, 28, 4, 48}),
                         AttnCaseName);

// Prefill attention throughput of every kernel variant at the Llama-3-8B attention shape (32 q
// heads, 8 KV heads, head_dim 128, 16-token pages in shuffled order), one sequence. Prints one
// line per (variant, shape): median of 10 event-timed launches after 3 warm-ups, TFLOP/s
// counting the causal triangle (2 * N^2 * hd * H from scratch; 4 * hd * H * n_new * (start +
// n_new / 2) after a cached prefix), and the difference from variant 0 (max abs, relative L2,
// non-finite values: a fast but wrong variant fails here). Disabled; run with
//   engine_cuda_test --gtest_also_run_disabled_tests --gtest_filter='*PrefillThroughput*'
TEST(CudaAttentionBench, DISABLED_PrefillThroughput) {
  SKIP_WITHOUT_CUDA();
  constexpr int H = 32, KV = 8, D = 128, B = 16;
  int dev = 0;
  ASSERT_CUDA(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  ASSERT_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("device: %s, %d SMs; default variant (hd 128): %d\n", prop.name,
              prop.multiProcessorCount, cuda::DefaultPrefillVariant(D));
  std::vector<int> variants;
  for (int v = 0; v < cuda::kNumPrefillVariants; ++v) {
    if (!cuda::PrefillVariantAvailable(v, D, H, KV)) continue;
    variants.push_back(v);
    cuda::PrefillVariantInfo info;
    ASSERT_CUDA(cuda::GetPrefillVariantInfo(v, D, &info));
    std::printf(
        "variant %d: %-36s threads %3d, smem %6d B, heads/CTA %d, rows/CTA %3d, regs %3d, "
        "local %d B, CTAs/SM %d\n",
        v, info.name, info.threads, info.smem_bytes, info.heads_per_cta, info.rows_per_cta,
        info.regs, info.local_bytes, info.ctas_per_sm);
  }
  struct Shape {
    int start, n_new;
  };
  const std::vector<Shape> shapes = {{0, 4096}, {0, 8192}, {0, 16384}, {4096, 4096}};
  std::vector<std::string> table;
  for (const Shape& sh : shapes) {
    const int len = sh.start + sh.n_new;
    const int pages = (len + B - 1) / B;
    const int64_t page_stride = int64_t{2} * KV * B * D;
    // Random bf16 data (uniform, unit variance, never zero) from a fast generator.
    uint64_t state = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(len * 31 + sh.start);
    auto fill = [&](std::vector<uint16_t>& v, float scale) {
      for (uint16_t& x : v) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        const float u = (static_cast<float>(state >> 40) + 0.5f) * (1.0f / 16777216.0f);
        x = FloatToBf16((2.0f * u - 1.0f) * 1.7320508f * scale);
      }
    };
    std::vector<uint16_t> cache(size_t(pages) * page_stride), q(size_t(sh.n_new) * H * D);
    fill(cache, 1.0f);
    fill(q, 1.0f);
    std::vector<int32_t> pt(pages);
    std::iota(pt.begin(), pt.end(), 0);
    std::shuffle(pt.begin(), pt.end(), std::mt19937_64(len));
    const std::vector<cuda::SeqInfo> info = {cuda::SeqInfo{0, sh.n_new, sh.start, 0}};
    std::vector<cuda::PrefillWorkItem> work;  // longest key range first, as the backend does
    for (int qt = (sh.n_new + cuda::kPrefillBlockM - 1) / cuda::kPrefillBlockM - 1; qt >= 0; --qt) {
      work.push_back({0, qt});
    }
    Arena a;
    uint16_t* cache_d = a.Put(cache);
    uint16_t* q_d = a.Put(q);
    int32_t* pt_d = a.Put(pt);
    cuda::SeqInfo* info_d = a.Put(info);
    cuda::PrefillWorkItem* work_d = a.Put(work);
    const size_t out_n = size_t(sh.n_new) * H * D;
    uint16_t* out_d = a.Alloc<uint16_t>(out_n);
    ASSERT_TRUE(a.ok());
    cuda::KvCacheView view;
    view.base = AsBf16(cache_d);
    view.page_stride = page_stride;
    view.num_kv_heads = KV;
    view.block_tokens = B;
    view.head_dim = D;
    const double flops = 4.0 * D * H * sh.n_new * (sh.start + sh.n_new / 2.0);
    cudaEvent_t ev0, ev1;
    ASSERT_CUDA(cudaEventCreate(&ev0));
    ASSERT_CUDA(cudaEventCreate(&ev1));
    std::vector<float> ref;
    for (int v : variants) {
      auto launch = [&] {
        return cuda::LaunchPrefillAttentionVariant(v, AsBf16(q_d), info_d, pt_d, work_d,
                                                   static_cast<int>(work.size()), H, view,
                                                   AsBf16(out_d), 0);
      };
      ASSERT_CUDA(cudaMemset(out_d, 0xFF, out_n * sizeof(uint16_t)));
      ASSERT_CUDA(launch());
      ASSERT_CUDA(cudaDeviceSynchronize());
      const std::vector<float> out = FromBf16(Get(out_d, out_n));
      double max_abs = 0;
      int64_t nonfinite = 0;
      if (ref.empty()) ref = out;
      for (size_t i = 0; i < out_n; ++i) {
        if (!std::isfinite(out[i])) {
          ++nonfinite;
        } else {
          max_abs = std::max(max_abs, double(std::abs(out[i] - ref[i])));
        }
      }
      const double rel = RelL2(out, ref);
      for (int i = 0; i < 3; ++i) ASSERT_CUDA(launch());
      std::vector<float> ms;
      for (int i = 0; i < 10; ++i) {
        // An untimed launch first keeps the device busy while the timed one is enqueued, so
        // that host launch latency stays out of the measurement.
        ASSERT_CUDA(launch());
        ASSERT_CUDA(cudaEventRecord(ev0, 0));
        ASSERT_CUDA(launch());
        ASSERT_CUDA(cudaEventRecord(ev1, 0));
        ASSERT_CUDA(cudaEventSynchronize(ev1));
        float t = 0;
        ASSERT_CUDA(cudaEventElapsedTime(&t, ev0, ev1));
        ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      const double med = 0.5 * (ms[4] + ms[5]);
      cuda::PrefillVariantInfo vi;
      ASSERT_CUDA(cuda::GetPrefillVariantInfo(v, D, &vi));
      char line[320];
      std::snprintf(line, sizeof(line),
                    "start %5d new %5d | v%d %-36s | %8.3f ms (min %8.3f) | %6.1f TFLOP/s | vs v0: "
                    "max abs %.3g, rel L2 %.3g, non-finite %lld",
                    sh.start, sh.n_new, v, vi.name, med, ms[0], flops / (med * 1e-3) / 1e12,
                    max_abs, rel, static_cast<long long>(nonfinite));
      std::printf("%s\n", line);
      table.push_back(line);
      EXPECT_EQ(nonfinite, 0) << "variant " << v;
      EXPECT_LT(rel, 1e-2) << "variant " << v;
    }
    ASSERT_CUDA(cudaEventDestroy(ev0));
    ASSERT_CUDA(cudaEventDestroy(ev1));
  }
  std::printf("\nsummary (TFLOP/s: causal FLOPs / median time):\n");
  for (const std::string& l : table) std::printf("%s\n", l.c_str());
}

// ---------------------------------------------------------------------------------------------
// The engine.

struct ModelCase {
  std::string name;
  int block_tokens;
};

void PrintTo(const ModelCase& c, std::ostream* os) {
  *os << c.name << ", block_tokens " << c.block_tokens;
}

ModelConfig ConfigFor(const std::string& name) {
  if (name == "tiny_hd128") {
    // head_dim 128, GQA 4, q width (512) != hidden (256).
    ModelConfig c = *PresetConfig("tiny");
    c.head_dim = 128;
    c.num_heads = 4;
    c.num_kv_heads = 1;
    return c;
  }
  std::string preset = name;
  std::replace(preset.begin(), preset.end(), '_', '-');
  return *PresetConfig(preset);
}

// Writes each model once per process.
const std::string& ModelDir(const std::string& name) {
  return RandomModelDir("cuda_backend_" + name, ConfigFor(name), 7, DType::kBF16);
}

struct EngineArgs {
  BackendKind backend = BackendKind::kCuda;
  int block_tokens = 16;
  bool cuda_graphs = true;
  int64_t kv_cache_bytes = int64_t{64} << 20;
  int max_batch_tokens = 2048;
};

std::unique_ptr<Engine> MakeEngine(const std::string& model, const EngineArgs& args) {
  EngineOptions o;
  o.backend = args.backend;
  o.block_tokens = args.block_tokens;
  o.cuda_graphs = args.cuda_graphs;
  o.kv_cache_bytes = args.kv_cache_bytes;
  o.max_batch_tokens = args.max_batch_tokens;
  o.max_batch_seqs = 64;
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(ModelDir(model), o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

// Hands out distinct page ids in a shuffled order.
class PagePool {
 public:
  PagePool(int num_pages, uint64_t seed) : ids_(num_pages) {
    std::iota(ids_.begin(), ids_.end(), 0);
    std::shuffle(ids_.begin(), ids_.end(), std::mt19937_64(seed));
  }
  std::vector<int32_t> Take(int n) {
    EXPECT_LE(next_ + n, ids_.size());
    std::vector<int32_t> out(ids_.begin() + next_, ids_.begin() + next_ + n);
    next_ += n;
    return out;
  }

 private:
  std::vector<int32_t> ids_;
  size_t next_ = 0;
};

int PagesFor(int positions, int block_tokens) {
  return (positions + block_tokens - 1) / block_tokens;
}

// A sequence being generated: its tokens so far and how many of them have K/V in its pages.
struct Seq {
  std::vector<int32_t> tokens;
  int cached = 0;
  std::vector<int32_t> pages;
};

// Runs one step over `seqs` (each computes tokens[cached, end)) and returns the logits.
std::vector<float> Step(Engine& e, std::vector<Seq*> seqs, std::vector<int> ends) {
  std::vector<SeqInput> in(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    in[i].tokens =
        absl::MakeConstSpan(seqs[i]->tokens).subspan(seqs[i]->cached, ends[i] - seqs[i]->cached);
    in[i].start_pos = seqs[i]->cached;
    in[i].pages = seqs[i]->pages;
  }
  std::vector<float> logits(seqs.size() * size_t(e.config().vocab_size));
  const absl::Status st = e.Forward(in, absl::MakeSpan(logits));
  EXPECT_TRUE(st.ok()) << st;
  for (size_t i = 0; i < seqs.size(); ++i) seqs[i]->cached = ends[i];
  return logits;
}

// Prefills the whole of `s.tokens` in chunks of at most `chunk` tokens; returns the logits
// after the last token.
std::vector<float> Prefill(Engine& e, Seq& s, int chunk = 2048) {
  std::vector<float> logits;
  while (s.cached < static_cast<int>(s.tokens.size())) {
    const int end = std::min<int>(s.tokens.size(), s.cached + chunk);
    logits = Step(e, {&s}, {end});
  }
  return logits;
}

// Greedy decoding of `steps` tokens for every sequence together (ForwardGreedy).
std::vector<std::vector<int32_t>> GreedyDecode(Engine& e, std::vector<Seq*> seqs, int steps) {
  std::vector<std::vector<int32_t>> out(seqs.size());
  for (int step = 0; step < steps; ++step) {
    std::vector<SeqInput> in(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      in[i].tokens = absl::MakeConstSpan(seqs[i]->tokens).subspan(seqs[i]->cached);
      in[i].start_pos = seqs[i]->cached;
      in[i].pages = seqs[i]->pages;
    }
    std::vector<int32_t> next(seqs.size(), -1);
    const absl::Status st = e.ForwardGreedy(in, absl::MakeSpan(next));
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) break;
    for (size_t i = 0; i < seqs.size(); ++i) {
      seqs[i]->cached = static_cast<int>(seqs[i]->tokens.size());
      seqs[i]->tokens.push_back(next[i]);
      out[i].push_back(next[i]);
    }
  }
  return out;
}

// K/V of positions [0, n) of a sequence, as floats [layer][K|V][kv_head][pos][dim], from
// ExportPages (fp32 pages on the CPU backend, bf16 on CUDA).
std::vector<float> GatherKv(Engine& e, const std::vector<int32_t>& pages, int n) {
  const KvLayout& l = e.kv_layout();
  const int np = PagesFor(n, l.block_tokens);
  std::vector<int32_t> used(pages.begin(), pages.begin() + np);
  std::vector<uint8_t> bytes(size_t(np) * l.BlockBytes());
  const absl::Status st = e.ExportPages(used, absl::MakeSpan(bytes));
  EXPECT_TRUE(st.ok()) << st;
  std::vector<float> out(size_t(l.num_layers) * 2 * l.num_kv_heads * n * l.head_dim);
  size_t o = 0;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int h = 0; h < l.num_kv_heads; ++h) {
        for (int p = 0; p < n; ++p) {
          const uint8_t* block = bytes.data() + size_t(p / l.block_tokens) * l.BlockBytes();
          for (int d = 0; d < l.head_dim; ++d) {
            const size_t idx = l.PayloadIndex(layer, kv, h, p % l.block_tokens, d);
            if (l.dtype_bytes == 4) {
              float f;
              std::memcpy(&f, block + idx * 4, 4);
              out[o++] = f;
            } else {
              uint16_t b;
              std::memcpy(&b, block + idx * 2, 2);
              out[o++] = Bf16ToFloat(b);
            }
          }
        }
      }
    }
  }
  return out;
}

// Per-layer relative L2 errors of K and V between two GatherKv results; expects each <= tol.
void ExpectKvClose(const std::vector<float>& got, const std::vector<float>& want, const KvLayout& l,
                   int n, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  const size_t per = size_t(l.num_kv_heads) * n * l.head_dim;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      const size_t off = (size_t(layer) * 2 + kv) * per;
      const std::vector<float> g(got.begin() + off, got.begin() + off + per);
      const std::vector<float> w(want.begin() + off, want.begin() + off + per);
      const double rel = RelL2(g, w);
      std::printf("  %s: layer %d %s rel err %.3g\n", what.c_str(), layer, kv ? "V" : "K", rel);
      EXPECT_LE(rel, tol) << what << " layer " << layer << (kv ? " V" : " K");
    }
  }
}

// Logit gap below which two argmaxes may legitimately differ between bf16 computations
// (CUDA vs CUDA) or between bf16 and fp32 (CUDA vs CPU). The random models' logits have a
// standard deviation of about 4 (docs/engine.md), so real bugs show up far above this.
constexpr float kNearTieCuda = 0.05f;
constexpr float kNearTieCpu = 0.15f;

// Whether argmax(got) == argmax(want); a difference must be a near tie of `want`'s logits
// (expected failure otherwise), and is printed.
bool ArgmaxAgrees(const float* got, const float* want, int vocab, float near_tie,
                  const std::string& what) {
  const int a = ArgmaxHost(got, vocab), b = ArgmaxHost(want, vocab);
  if (a == b) return true;
  std::printf("  %s: argmax %d vs reference %d; reference logits %.4f vs %.4f\n", what.c_str(), a,
              b, want[a], want[b]);
  EXPECT_LT(want[b] - want[a], near_tie) << what << ": argmax differs without a near tie";
  return false;
}

// Greedy decoding of up to `steps` tokens of two sequences that must agree within bf16
// tolerance (each ends with one token not yet computed; each on its engine). Every step
// compares the logits (relative L2 <= tol) and the argmaxes; the first argmax difference must
// be a near tie and ends the comparison (the sequences diverge from there).
void ExpectSameGreedy(Engine& ea, Seq& a, Engine& eb, Seq& b, int steps, double tol,
                      const std::string& what) {
  const int vocab = ea.config().vocab_size;
  int step = 0;
  double worst = 0;
  for (; step < steps; ++step) {
    const std::vector<float> la = Step(ea, {&a}, {static_cast<int>(a.tokens.size())});
    const std::vector<float> lb = Step(eb, {&b}, {static_cast<int>(b.tokens.size())});
    const double rel = RelL2(la, lb);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, tol) << what << ": greedy step " << step;
    if (!ArgmaxAgrees(la.data(), lb.data(), vocab, kNearTieCuda,
                      absl::StrCat(what, ", greedy step ", step))) {
      break;
    }
    a.tokens.push_back(ArgmaxHost(lb.data(), vocab));
    b.tokens.push_back(a.tokens.back());
  }
  std::printf("  %s: %d of %d greedy steps identical, worst logits rel err %.3g\n", what.c_str(),
              step, steps, worst);
}

class CudaEngineTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  }
  std::unique_ptr<Engine> Make(BackendKind backend = BackendKind::kCuda, bool graphs = true) {
    EngineArgs args;
    args.backend = backend;
    args.block_tokens = GetParam().block_tokens;
    args.cuda_graphs = graphs;
    return MakeEngine(GetParam().name, args);
  }
  int B() const { return GetParam().block_tokens; }
};

std::string ModelCaseName(const ::testing::TestParamInfo<ModelCase>& info) {
  return absl::StrCat(info.param.name, "_B", info.param.block_tokens);
}

TEST_P(CudaEngineTest, MatchesCpuBackend) {
  std::unique_ptr<Engine> cpu = Make(BackendKind::kCpu);
  std::unique_ptr<Engine> gpu = Make();
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(gpu, nullptr);
  const int vocab = gpu->config().vocab_size;
  PagePool pool(std::min(cpu->num_pages(), gpu->num_pages()), 3);
  const std::vector<int> lens = {300, 45, 1};
  std::vector<Seq> c(lens.size()), g(lens.size());
  for (size_t i = 0; i < lens.size(); ++i) {
    c[i].tokens = RandomTokens(lens[i], 100 + i, vocab);
    c[i].pages = pool.Take(PagesFor(lens[i] + 16, B()));
    g[i] = c[i];
  }
  const std::vector<int> ends(lens.begin(), lens.end());
  const std::vector<float> lc = Step(*cpu, {&c[0], &c[1], &c[2]}, ends);
  const std::vector<float> lg = Step(*gpu, {&g[0], &g[1], &g[2]}, ends);
  for (size_t i = 0; i < lens.size(); ++i) {
    const std::vector<float> a(lg.begin() + i * vocab, lg.begin() + (i + 1) * vocab);
    const std::vector<float> b(lc.begin() + i * vocab, lc.begin() + (i + 1) * vocab);
    const double rel = RelL2(a, b);
    std::printf("  prefill seq %zu (%d tokens): logits rel err %.3g, argmax cuda %d cpu %d\n", i,
                lens[i], rel, ArgmaxHost(a.data(), vocab), ArgmaxHost(b.data(), vocab));
    EXPECT_LE(rel, 3e-2) << "seq " << i;
    ArgmaxAgrees(a.data(), b.data(), vocab, kNearTieCpu, absl::StrCat("prefill seq ", i));
    ExpectKvClose(GatherKv(*gpu, g[i].pages, lens[i]), GatherKv(*cpu, c[i].pages, lens[i]),
                  gpu->kv_layout(), lens[i], 2e-2, absl::StrCat("seq ", i));
  }
  // 16 decode steps, all three together (CUDA: graph replays), teacher-forced with the CPU's
  // greedy token. The argmaxes must agree except on near ties of the CPU logits.
  std::vector<float> prev = lc;
  for (int step = 0; step < 16; ++step) {
    std::vector<int> ends_step;
    for (size_t i = 0; i < lens.size(); ++i) {
      c[i].tokens.push_back(ArgmaxHost(prev.data() + i * vocab, vocab));
      g[i].tokens.push_back(c[i].tokens.back());
      ends_step.push_back(static_cast<int>(c[i].tokens.size()));
    }
    const std::vector<float> dc = Step(*cpu, {&c[0], &c[1], &c[2]}, ends_step);
    const std::vector<float> dg = Step(*gpu, {&g[0], &g[1], &g[2]}, ends_step);
    for (size_t i = 0; i < lens.size(); ++i) {
      const std::vector<float> a(dg.begin() + i * vocab, dg.begin() + (i + 1) * vocab);
      const std::vector<float> b(dc.begin() + i * vocab, dc.begin() + (i + 1) * vocab);
      const double rel = RelL2(a, b);
      EXPECT_LE(rel, 3e-2) << "decode step " << step << " seq " << i;
      ArgmaxAgrees(a.data(), b.data(), vocab, kNearTieCpu,
                   absl::StrCat("decode step ", step, " seq ", i));
      if (step == 15) {
        std::printf("  decode step %d seq %zu: logits rel err %.3g\n", step, i, rel);
      }
    }
    prev = dc;
  }
  const int n0 = static_cast<int>(g[0].tokens.size());
  ExpectKvClose(GatherKv(*gpu, g[0].pages, n0), GatherKv(*cpu, c[0].pages, n0), gpu->kv_layout(),
                n0, 2e-2, "seq 0 after decoding");
}

TEST_P(CudaEngineTest, PrefillThenDecodeMatchesLongPrefill) {
  std::unique_ptr<Engine> e = Make();
  ASSERT_NE(e, nullptr);
  const int vocab = e->config().vocab_size;
  PagePool pool(e->num_pages(), 4);
  const int n = 200, steps = 32;
  Seq full, split;
  full.tokens = RandomTokens(n, 5, vocab);
  full.pages = pool.Take(PagesFor(n + steps, B()));
  split.tokens = full.tokens;
  split.pages = pool.Take(PagesFor(n + steps, B()));
  const std::vector<float> l_full = Prefill(*e, full);
  Step(*e, {&split}, {n - 1});
  const std::vector<float> l_split = Step(*e, {&split}, {n});  // the decode path
  const double rel = RelL2(l_split, l_full);
  std::printf("  logits rel err prefill+decode vs prefill: %.3g\n", rel);
  EXPECT_LE(rel, 2e-2);
  ExpectKvClose(GatherKv(*e, split.pages, n), GatherKv(*e, full.pages, n), e->kv_layout(), n, 2e-2,
                "prefill+decode vs prefill");
  if (!ArgmaxAgrees(l_split.data(), l_full.data(), vocab, kNearTieCuda, "first token")) return;
  full.tokens.push_back(ArgmaxHost(l_full.data(), vocab));
  split.tokens.push_back(full.tokens.back());
  ExpectSameGreedy(*e, split, *e, full, steps, 2e-2, "prefill+decode vs prefill");
}

TEST_P(CudaEngineTest, ImportedPrefixMatchesFullPrefill) {
  std::unique_ptr<Engine> a = Make();
  std::unique_ptr<Engine> b = Make();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const int vocab = a->config().vocab_size;
  const int prefix_pages = std::max(1, 128 / B());
  const int prefix = prefix_pages * B();
  const int n = prefix + 37, steps = 32;
  PagePool pool_a(a->num_pages(), 5), pool_b(b->num_pages(), 6);
  Seq full, cont;
  full.tokens = RandomTokens(n, 7, vocab);
  full.pages = pool_a.Take(PagesFor(n + steps, B()));
  const std::vector<float> l_full = Prefill(*a, full);

  // Move the prefix's blocks to engine b (other page ids), then prefill the rest there.
  const std::vector<int32_t> src(full.pages.begin(), full.pages.begin() + prefix_pages);
  std::vector<uint8_t> blocks(src.size() * a->kv_layout().BlockBytes());
  ASSERT_TRUE(a->ExportPages(src, absl::MakeSpan(blocks)).ok());
  cont.tokens = full.tokens;
  cont.pages = pool_b.Take(PagesFor(n + steps, B()));
  const std::vector<int32_t> dst(cont.pages.begin(), cont.pages.begin() + prefix_pages);
  ASSERT_TRUE(b->ImportPages(dst, blocks).ok());
  std::vector<uint8_t> back(blocks.size());
  ASSERT_TRUE(b->ExportPages(dst, absl::MakeSpan(back)).ok());
  EXPECT_TRUE(back == blocks) << "imported pages differ when exported again";
  cont.cached = prefix;
  const std::vector<float> l_cont = Prefill(*b, cont);

  const double rel = RelL2(l_cont, l_full);
  std::printf("  logits rel err continued-after-import vs full prefill: %.3g\n", rel);
  EXPECT_LE(rel, 2e-2);
  ExpectKvClose(GatherKv(*b, cont.pages, n), GatherKv(*a, full.pages, n), a->kv_layout(), n, 2e-2,
                "continued vs full");
  if (!ArgmaxAgrees(l_cont.data(), l_full.data(), vocab, kNearTieCuda, "first token")) return;
  full.tokens.push_back(ArgmaxHost(l_full.data(), vocab));
  cont.tokens.push_back(full.tokens.back());
  ExpectSameGreedy(*b, cont, *a, full, steps, 2e-2, "continued after import vs full prefill");
}

TEST_P(CudaEngineTest, GraphDecodeMatchesEager) {
  std::unique_ptr<Engine> eager = Make(BackendKind::kCuda, /*graphs=*/false);
  std::unique_ptr<Engine> graph = Make(BackendKind::kCuda, /*graphs=*/true);
  ASSERT_NE(eager, nullptr);
  ASSERT_NE(graph, nullptr);
  const int vocab = eager->config().vocab_size;
  PagePool pool(eager->num_pages(), 8);
  const std::vector<int> lens = {5, 16, 31, 100};
  std::vector<Seq> se(lens.size()), sg(lens.size());
  for (size_t i = 0; i < lens.size(); ++i) {
    se[i].tokens = RandomTokens(lens[i], 200 + i, vocab);
    se[i].pages = pool.Take(PagesFor(lens[i] + 40, B()));
    sg[i] = se[i];
  }
  // The same prefill (not a graph step) in both engines: bit-identical.
  const std::vector<int> ends(lens.begin(), lens.end());
  const std::vector<float> pe = Step(*eager, {&se[0], &se[1], &se[2], &se[3]}, ends);
  const std::vector<float> pg = Step(*graph, {&sg[0], &sg[1], &sg[2], &sg[3]}, ends);
  ASSERT_TRUE(pe == pg) << "prefill differs between two engines";
  for (size_t i = 0; i < lens.size(); ++i) {
    se[i].tokens.push_back(ArgmaxHost(pe.data() + i * vocab, vocab));
    sg[i].tokens.push_back(se[i].tokens.back());
  }
  // Decode steps over batch sizes that are buckets (1, 2, 4): bit-identical logits; the first
  // step of a bucket captures its graph, later steps replay it.
  auto run = [&](const std::vector<int>& which, int steps, bool expect_bits) {
    for (int step = 0; step < steps; ++step) {
      std::vector<Seq*> be, bg;
      std::vector<int> ends_step;
      for (int i : which) {
        be.push_back(&se[i]);
        bg.push_back(&sg[i]);
        ends_step.push_back(static_cast<int>(se[i].tokens.size()));
      }
      const std::vector<float> le = Step(*eager, be, ends_step);
      const std::vector<float> lg = Step(*graph, bg, ends_step);
      const bool same = le == lg;
      if (expect_bits) {
        EXPECT_TRUE(same) << "batch of " << which.size() << ", step " << step
                          << ": graph logits differ from eager (rel " << RelL2(lg, le) << ")";
      } else {
        std::printf("  padded batch of %zu, step %d: logits rel err %.3g%s\n", which.size(), step,
                    RelL2(lg, le), same ? " (bit-identical)" : "");
        EXPECT_LE(RelL2(lg, le), 1e-2);
      }
      for (size_t k = 0; k < which.size(); ++k) {
        const int te = ArgmaxHost(le.data() + k * vocab, vocab);
        ArgmaxAgrees(lg.data() + k * vocab, le.data() + k * vocab, vocab,
                     expect_bits ? 0.0f : kNearTieCuda,
                     absl::StrCat("batch of ", which.size(), ", step ", step, ", seq ", k));
        se[which[k]].tokens.push_back(te);
        sg[which[k]].tokens.push_back(te);
      }
    }
  };
  run({0, 1, 2, 3}, 6, true);
  run({2}, 4, true);
  run({3, 0}, 4, true);
  run({0, 1, 3}, 4, false);  // 3 sequences: the graph pads to 4 rows, eager runs 3
  // ForwardGreedy replays the same graphs: tokens equal the argmax of the logits.
  for (int i = 0; i < 4; ++i) {
    Seq copy_e = se[i], copy_g = sg[i];
    EXPECT_EQ(GreedyDecode(*graph, {&copy_g}, 3), GreedyDecode(*eager, {&copy_e}, 3));
  }
}

TEST_P(CudaEngineTest, BatchedDecodeMatchesSingle) {
  std::unique_ptr<Engine> e = Make();
  ASSERT_NE(e, nullptr);
  const int vocab = e->config().vocab_size;
  PagePool pool(e->num_pages(), 9);
  const std::vector<int> lens = {1, 17, 100, 300, 1000};
  const int steps = 8;
  std::vector<Seq> batched(lens.size()), single(lens.size());
  for (size_t i = 0; i < lens.size(); ++i) {
    batched[i].tokens = RandomTokens(lens[i], 300 + i, vocab);
    batched[i].pages = pool.Take(PagesFor(lens[i] + steps + 1, B()));
    single[i].tokens = batched[i].tokens;
    single[i].pages = pool.Take(PagesFor(lens[i] + steps + 1, B()));
    const std::vector<float> lb = Prefill(*e, batched[i]);
    const std::vector<float> ls = Prefill(*e, single[i]);
    ASSERT_TRUE(lb == ls) << "the same prefill twice differs";
    batched[i].tokens.push_back(ArgmaxHost(lb.data(), vocab));
    single[i].tokens.push_back(batched[i].tokens.back());
  }
  for (int step = 0; step < steps; ++step) {
    std::vector<Seq*> all;
    std::vector<int> ends;
    for (Seq& s : batched) {
      all.push_back(&s);
      ends.push_back(static_cast<int>(s.tokens.size()));
    }
    const std::vector<float> lb = Step(*e, all, ends);
    for (size_t i = 0; i < lens.size(); ++i) {
      const std::vector<float> ls =
          Step(*e, {&single[i]}, {static_cast<int>(single[i].tokens.size())});
      const std::vector<float> row(lb.begin() + i * vocab, lb.begin() + (i + 1) * vocab);
      const double rel = RelL2(row, ls);
      if (step == 0 || rel > 1e-2) {
        std::printf("  step %d seq %zu (length %zu): batched vs alone logits rel err %.3g\n", step,
                    i, single[i].tokens.size(), rel);
      }
      EXPECT_LE(rel, 2e-2) << "step " << step << " seq " << i;
      ArgmaxAgrees(row.data(), ls.data(), vocab, kNearTieCuda,
                   absl::StrCat("step ", step, " seq ", i));
      const int ts = ArgmaxHost(ls.data(), vocab);  // teacher-forced: both continue alike
      batched[i].tokens.push_back(ts);
      single[i].tokens.push_back(ts);
    }
  }
}

TEST_P(CudaEngineTest, MixedPrefillAndDecodeBatch) {
  std::unique_ptr<Engine> e = Make();
  ASSERT_NE(e, nullptr);
  const int vocab = e->config().vocab_size;
  PagePool pool(e->num_pages(), 10);
  // x, y: decoding (one new token each); z: a new prompt; w: continuing a prompt by 3 tokens.
  const std::vector<int> cached = {50, 200, 0, 70};
  const std::vector<int> total = {51, 201, 70, 73};
  std::vector<Seq> mixed(4), alone(4);
  for (int i = 0; i < 4; ++i) {
    mixed[i].tokens = RandomTokens(total[i], 400 + i, vocab);
    mixed[i].pages = pool.Take(PagesFor(total[i], B()));
    alone[i].tokens = mixed[i].tokens;
    alone[i].pages = pool.Take(PagesFor(total[i], B()));
    if (cached[i] > 0) {
      Step(*e, {&mixed[i]}, {cached[i]});
      Step(*e, {&alone[i]}, {cached[i]});
    }
  }
  const std::vector<float> lm = Step(*e, {&mixed[0], &mixed[2], &mixed[1], &mixed[3]},
                                     {total[0], total[2], total[1], total[3]});
  const int order[4] = {0, 2, 1, 3};
  for (int k = 0; k < 4; ++k) {
    const int i = order[k];
    const std::vector<float> la = Step(*e, {&alone[i]}, {total[i]});
    const std::vector<float> row(lm.begin() + k * vocab, lm.begin() + (k + 1) * vocab);
    const double rel = RelL2(row, la);
    std::printf("  seq %d (%d cached, %d new): mixed batch vs alone logits rel err %.3g\n", i,
                cached[i], total[i] - cached[i], rel);
    EXPECT_LE(rel, 2e-2) << "seq " << i;
    ArgmaxAgrees(row.data(), la.data(), vocab, kNearTieCuda, absl::StrCat("mixed seq ", i));
    ExpectKvClose(GatherKv(*e, mixed[i].pages, total[i]), GatherKv(*e, alone[i].pages, total[i]),
                  e->kv_layout(), total[i], 2e-2, absl::StrCat("mixed seq ", i));
  }
}

TEST_P(CudaEngineTest, ForwardGreedyMatchesForwardArgmax) {
  std::unique_ptr<Engine> e = Make();
  ASSERT_NE(e, nullptr);
  const int vocab = e->config().vocab_size;
  PagePool pool(e->num_pages(), 11);
  std::vector<Seq> a(3), b(3);
  for (int i = 0; i < 3; ++i) {
    a[i].tokens = RandomTokens(20 + 30 * i, 500 + i, vocab);
    a[i].pages = pool.Take(PagesFor(a[i].tokens.size() + 4, B()));
    b[i].tokens = a[i].tokens;
    b[i].pages = pool.Take(PagesFor(b[i].tokens.size() + 4, B()));
  }
  for (int round = 0; round < 3; ++round) {  // a prefill, then decode steps (graphs)
    std::vector<SeqInput> ia(3), ib(3);
    for (int i = 0; i < 3; ++i) {
      ia[i].tokens = absl::MakeConstSpan(a[i].tokens).subspan(a[i].cached);
      ia[i].start_pos = a[i].cached;
      ia[i].pages = a[i].pages;
      ib[i].tokens = absl::MakeConstSpan(b[i].tokens).subspan(b[i].cached);
      ib[i].start_pos = b[i].cached;
      ib[i].pages = b[i].pages;
    }
    std::vector<float> logits(3 * size_t(vocab));
    std::vector<int32_t> next(3, -1);
    ASSERT_TRUE(e->Forward(ia, absl::MakeSpan(logits)).ok());
    ASSERT_TRUE(e->ForwardGreedy(ib, absl::MakeSpan(next)).ok());
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(next[i], ArgmaxHost(logits.data() + size_t(i) * vocab, vocab))
          << "round " << round << " seq " << i;
      a[i].cached = b[i].cached = static_cast<int>(a[i].tokens.size());
      a[i].tokens.push_back(next[i]);
      b[i].tokens.push_back(next[i]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaEngineTest,
                         ::testing::Values(ModelCase{"tiny", 16}, ModelCase{"tiny_qwen2", 16},
                                           ModelCase{"tiny_llama3", 64},
                                           ModelCase{"tiny_hd128", 32}),
                         ModelCaseName);

TEST(CudaEngineMiscTest, ExportImportRoundTrip) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Engine> e = MakeEngine("tiny", EngineArgs{});
  ASSERT_NE(e, nullptr);
  const size_t block = e->kv_layout().BlockBytes();
  PagePool pool(e->num_pages(), 12);
  // More pages than one staging half holds, so the double-buffered path runs several chunks.
  const int n = std::min(e->num_pages() - 8, 1500);
  const std::vector<int32_t> pages = pool.Take(n);
  const std::vector<int32_t> untouched = pool.Take(4);
  std::vector<uint8_t> data(size_t(n) * block);
  std::mt19937_64 rng(13);
  for (uint8_t& x : data) x = static_cast<uint8_t>(rng());
  ASSERT_TRUE(e->ImportPages(pages, data).ok());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e->ExportPages(pages, absl::MakeSpan(back)).ok());
  EXPECT_TRUE(back == data);
  // A subset in another order.
  const std::vector<int32_t> some = {pages[7], pages[0], pages[n - 1]};
  std::vector<uint8_t> part(3 * block);
  ASSERT_TRUE(e->ExportPages(some, absl::MakeSpan(part)).ok());
  EXPECT_EQ(0, std::memcmp(part.data(), data.data() + 7 * block, block));
  EXPECT_EQ(0, std::memcmp(part.data() + block, data.data(), block));
  EXPECT_EQ(0, std::memcmp(part.data() + 2 * block, data.data() + size_t(n - 1) * block, block));
  // Pages never written hold zeros (the cache is cleared at creation).
  std::vector<uint8_t> zeros(untouched.size() * block);
  ASSERT_TRUE(e->ExportPages(untouched, absl::MakeSpan(zeros)).ok());
  EXPECT_TRUE(std::all_of(zeros.begin(), zeros.end(), [](uint8_t x) { return x == 0; }));
  EXPECT_EQ(e->kv_layout().dtype_name, "bf16");
  EXPECT_EQ(e->kv_layout().dtype_bytes, 2);
}

// The direct paths: export into and import from pinned memory (AllocateHostBuffer), and import
// of scattered blocks from memory registered with RegisterHostMemory (as a mapped store pool
// is), against the staged path from pageable memory.
TEST(CudaEngineMiscTest, PinnedAndRegisteredMemoryMoveBlocksDirectly) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Engine> e = MakeEngine("tiny", EngineArgs{});
  ASSERT_NE(e, nullptr);
  const size_t block = e->kv_layout().BlockBytes();
  PagePool pool(e->num_pages(), 14);
  const int n = 40;
  const std::vector<int32_t> pages = pool.Take(n), again = pool.Take(n), third = pool.Take(n);
  std::vector<uint8_t> data(size_t(n) * block);
  std::mt19937_64 rng(15);
  for (uint8_t& x : data) x = static_cast<uint8_t>(rng());
  ASSERT_TRUE(e->ImportPages(pages, data).ok());  // pageable: staged

  absl::StatusOr<HostBuffer> pinned = e->AllocateHostBuffer(data.size());
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_TRUE(e->ExportPages(pages, pinned->span()).ok());
  EXPECT_EQ(0, std::memcmp(pinned->data(), data.data(), data.size()));
  ASSERT_TRUE(e->ImportPages(again, pinned->span()).ok());
  std::vector<uint8_t> back(data.size());
  ASSERT_TRUE(e->ExportPages(again, absl::MakeSpan(back)).ok());
  EXPECT_TRUE(back == data);

  // A registered region holding the blocks in reverse order, imported block by block.
  const size_t region_bytes = data.size() + 4096;
  void* region = std::aligned_alloc(4096, region_bytes);
  ASSERT_NE(region, nullptr);
  uint8_t* r = static_cast<uint8_t*>(region);
  std::vector<const uint8_t*> blocks(n);
  for (int i = 0; i < n; ++i) {
    uint8_t* slot = r + size_t(n - 1 - i) * block;
    std::memcpy(slot, data.data() + size_t(i) * block, block);
    blocks[i] = slot;
  }
  ASSERT_TRUE(e->RegisterHostMemory(region, region_bytes).ok());
  ASSERT_TRUE(e->ImportBlocks(third, blocks).ok());  // pages created zeroed
  e->UnregisterHostMemory(region);
  std::free(region);
  std::fill(back.begin(), back.end(), 0);
  ASSERT_TRUE(e->ExportPages(third, absl::MakeSpan(back)).ok());
  EXPECT_TRUE(back == data);
}

// A restarted store's pool is mapped at the address of the dead one's (docs/serving.md, "KvTier
// and the store pools"): registering, unregistering, unmapping, mapping other memory at the same
// address and registering again must make imports read the new memory, not the pages the first
// registration pinned.
TEST(CudaEngineMiscTest, RegisteredMemoryRemappedAtTheSameAddressIsReadAnew) {
  SKIP_WITHOUT_CUDA();
  std::unique_ptr<Engine> e = MakeEngine("tiny", EngineArgs{});
  ASSERT_NE(e, nullptr);
  const size_t block = e->kv_layout().BlockBytes();
  PagePool pool(e->num_pages(), 16);
  const int n = 8;
  const std::vector<int32_t> pages = pool.Take(n);
  const size_t bytes = size_t(n) * block;
  // Two shared-memory segments, as two store incarnations' pools.
  int fd[2];
  for (int i = 0; i < 2; ++i) {
    fd[i] = memfd_create(i == 0 ? "old-pool" : "new-pool", 0);
    ASSERT_GE(fd[i], 0);
    ASSERT_EQ(ftruncate(fd[i], static_cast<off_t>(bytes)), 0);
  }
  void* at = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd[0], 0);
  ASSERT_NE(at, MAP_FAILED);
  auto fill_and_import = [&](uint8_t seed) {
    std::vector<uint8_t> data(bytes);
    std::mt19937_64 rng(seed);
    for (uint8_t& x : data) x = static_cast<uint8_t>(rng());
    std::memcpy(at, data.data(), bytes);
    std::vector<const uint8_t*> blocks(n);
    for (int i = 0; i < n; ++i) blocks[i] = static_cast<const uint8_t*>(at) + size_t(i) * block;
    EXPECT_TRUE(e->ImportBlocks(pages, blocks).ok());
    std::vector<uint8_t> back(bytes);
    EXPECT_TRUE(e->ExportPages(pages, absl::MakeSpan(back)).ok());
    return back == data;
  };
  ASSERT_TRUE(e->RegisterHostMemory(at, bytes).ok());
  EXPECT_TRUE(fill_and_import(1));
  // The old pool goes: unregistered first, then unmapped; the new one comes at the same place.
  e->UnregisterHostMemory(at);
  ASSERT_EQ(munmap(at, bytes), 0);
  void* again = mmap(at, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd[1], 0);
  ASSERT_EQ(again, at);
  ASSERT_TRUE(e->RegisterHostMemory(at, bytes).ok());
  EXPECT_TRUE(fill_and_import(2));  // the new segment's bytes, through the new registration
  e->UnregisterHostMemory(at);
  munmap(at, bytes);
  for (int f : fd) close(f);
}

// Long context (tiny-llama3, 8192 positions): a chunked prefill, whose last chunk computes the
// last token on the prefill kernel over a long cached prefix, against the decode kernel with
// many splits computing the same token.
TEST(CudaEngineMiscTest, LongContextPrefillVsDecode) {
  SKIP_WITHOUT_CUDA();
  EngineArgs args;
  args.block_tokens = 16;
  std::unique_ptr<Engine> e = MakeEngine("tiny_llama3", args);
  ASSERT_NE(e, nullptr);
  const int vocab = e->config().vocab_size;
  PagePool pool(e->num_pages(), 14);
  const int n = 8000, steps = 32;
  Seq full, split;
  full.tokens = RandomTokens(n, 15, vocab);
  full.pages = pool.Take(PagesFor(n + steps, 16));
  split.tokens = full.tokens;
  split.pages = pool.Take(PagesFor(n + steps, 16));
  const std::vector<float> l_full = Prefill(*e, full, 2048);
  split.tokens.pop_back();
  Prefill(*e, split, 1500);
  split.tokens.push_back(full.tokens.back());
  const std::vector<float> l_split = Step(*e, {&split}, {n});
  const double rel = RelL2(l_split, l_full);
  std::printf("  8000 tokens: logits rel err chunked prefill + decode vs chunked prefill: %.3g\n",
              rel);
  EXPECT_LE(rel, 2e-2);
  ExpectKvClose(GatherKv(*e, split.pages, n), GatherKv(*e, full.pages, n), e->kv_layout(), n, 2e-2,
                "8000 tokens, chunks 2048 vs 1500 + decode");
  if (!ArgmaxAgrees(l_split.data(), l_full.data(), vocab, kNearTieCuda, "first token")) return;
  full.tokens.push_back(ArgmaxHost(l_full.data(), vocab));
  split.tokens.push_back(full.tokens.back());
  ExpectSameGreedy(*e, split, *e, full, steps, 2e-2, "8000 tokens");
}

TEST(CudaEngineMiscTest, RejectsUnsupportedShapes) {
  SKIP_WITHOUT_CUDA();
  ModelConfig c = *PresetConfig("tiny");
  c.head_dim = 96;
  const ScopedTempDir temp("cuda_backend_hd96");
  const std::string& dir = temp.path();
  ASSERT_TRUE(WriteRandomModel(c, 7, DType::kBF16, dir).ok());
  EngineOptions o;
  o.backend = BackendKind::kCuda;
  o.kv_cache_bytes = int64_t{4} << 20;
  EXPECT_EQ(Engine::Create(dir, o).status().code(), absl::StatusCode::kUnimplemented);
  // A cache smaller than one block.
  o.kv_cache_bytes = 1024;
  EXPECT_EQ(Engine::Create(ModelDir("tiny"), o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::engine
