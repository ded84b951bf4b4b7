#include "bench/engine_bench.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "common/parse_bytes.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace kvtier::bench {
namespace {

using engine::Engine;
using engine::ModelConfig;
using engine::PageAllocator;
using engine::Sequence;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Seconds(int64_t ns) { return static_cast<double>(ns) * 1e-9; }

std::vector<int32_t> RandomTokens(int n, int vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> dist(3, vocab - 1);
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = dist(rng);
  return out;
}

// FLOPs of a causal prefill of n tokens: the projections of every token (lm_head for the last
// only) and attention over the causal triangle.
double PrefillFlops(const ModelConfig& c, int64_t n) {
  const double hd = c.head_dim, h = c.num_heads, kv = c.num_kv_heads, d = c.hidden_size;
  const double per_layer = d * (h * hd + 2 * kv * hd) + h * hd * d + 3.0 * d * c.intermediate_size;
  const double gemm = 2.0 * n * per_layer * c.num_layers + 2.0 * d * c.vocab_size;
  const double attn = 2.0 * double(n) * double(n) * hd * h * c.num_layers;  // QK^T + PV, causal
  return gemm + attn;
}

// Bytes a decode step must read at least: every weight but the embedding table, and the K/V
// of every sequence's context.
double DecodeBytes(const ModelConfig& c, int batch, int context, int dtype_bytes) {
  const double weights =
      double(c.ParamCount() - (c.tie_word_embeddings ? 0 : int64_t(c.vocab_size) * c.hidden_size)) *
      dtype_bytes;
  return weights + double(batch) * context * c.KvBytesPerToken(dtype_bytes);
}

absl::StatusOr<std::vector<int>> ParseInts(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int v;
    if (!absl::SimpleAtoi(p, &v) || v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("not a positive integer: ", p));
    }
    out.push_back(v);
  }
  return out;
}

struct DecodeCase {
  int batch, context;
};

absl::StatusOr<std::vector<DecodeCase>> ParseDecode(const std::string& s) {
  std::vector<DecodeCase> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    std::vector<std::string> bc = absl::StrSplit(p, '@');
    DecodeCase dc;
    if (bc.size() != 2 || !absl::SimpleAtoi(bc[0], &dc.batch) ||
        !absl::SimpleAtoi(bc[1], &dc.context) || dc.batch <= 0 || dc.context <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("decode case must be batch@context: ", p));
    }
    out.push_back(dc);
  }
  return out;
}

absl::StatusOr<double> TimePrefill(Engine& eng, PageAllocator& alloc, int n, int reps,
                                   std::mt19937_64& rng) {
  std::vector<float> logits(eng.config().vocab_size);
  std::vector<double> times;
  for (int r = 0; r < reps + 1; ++r) {  // the first run warms up
    Sequence seq;
    seq.tokens = RandomTokens(n, eng.config().vocab_size, rng);
    const int64_t t0 = MonoNowNs();
    absl::Status st = engine::Prefill(eng, alloc, seq, absl::MakeSpan(logits));
    const int64_t t1 = MonoNowNs();
    engine::ReleasePages(alloc, seq);
    KVTIER_RETURN_IF_ERROR(st);
    if (r > 0) times.push_back(Seconds(t1 - t0));
  }
  return Median(times);
}

// Median seconds of one greedy decode step of `batch` sequences with `context` tokens each.
absl::StatusOr<double> TimeDecode(Engine& eng, PageAllocator& alloc, DecodeCase dc, int steps,
                                  std::mt19937_64& rng) {
  const int B = eng.kv_layout().block_tokens;
  std::vector<Sequence> seqs(dc.batch);
  auto release = [&] {
    for (Sequence& s : seqs) engine::ReleasePages(alloc, s);
  };
  // One prefill, its pages copied to every other sequence (the content does not change the
  // step's cost; every sequence reads its own pages).
  seqs[0].tokens = RandomTokens(dc.context, eng.config().vocab_size, rng);
  std::vector<float> logits(eng.config().vocab_size);
  absl::Status st = engine::Prefill(eng, alloc, seqs[0], absl::MakeSpan(logits));
  if (st.ok()) st = engine::EnsurePages(alloc, B, dc.context + 1, seqs[0]);
  const int full_pages = (dc.context + B - 1) / B;
  std::vector<uint8_t> payload;
  if (st.ok()) {
    payload.resize(size_t(full_pages) * eng.kv_layout().BlockBytes());
    st = eng.ExportPages(absl::MakeConstSpan(seqs[0].pages).subspan(0, full_pages),
                         absl::MakeSpan(payload));
  }
  for (int i = 1; i < dc.batch && st.ok(); ++i) {
    seqs[i].tokens = seqs[0].tokens;
    st = engine::EnsurePages(alloc, B, dc.context + 1, seqs[i]);
    if (st.ok()) {
      st = eng.ImportPages(absl::MakeConstSpan(seqs[i].pages).subspan(0, full_pages), payload);
    }
    seqs[i].num_computed = dc.context;
  }
  if (!st.ok()) {
    release();
    return st;
  }
  std::vector<int32_t> step_tokens = RandomTokens(dc.batch, eng.config().vocab_size, rng);
  std::vector<engine::SeqInput> batch(dc.batch);
  for (int i = 0; i < dc.batch; ++i) {
    batch[i].tokens = absl::MakeConstSpan(&step_tokens[i], 1);
    batch[i].start_pos = dc.context;
    batch[i].pages = seqs[i].pages;
  }
  std::vector<int32_t> next(dc.batch);
  std::vector<double> times;
  for (int s = 0; s < steps + 3 && st.ok(); ++s) {  // 3 warm-up steps (graph capture)
    const int64_t t0 = MonoNowNs();
    st = eng.ForwardGreedy(batch, absl::MakeSpan(next));
    if (s >= 3) times.push_back(Seconds(MonoNowNs() - t0));
  }
  release();
  KVTIER_RETURN_IF_ERROR(st);
  return Median(times);
}

absl::StatusOr<nlohmann::json> RunHf(const EngineBenchOptions& o) {
  SpawnOptions so;
  so.argv = {o.python,  o.hf_script, "--model", o.model,  "--prefill",
             o.prefill, "--decode",  o.decode,  "--reps", std::to_string(o.reps)};
  so.stderr_path = "&1";
  KVTIER_ASSIGN_OR_RETURN(CommandResult r, RunCommand(so, absl::Minutes(20)));
  if (!r.ok()) {
    return absl::InternalError(
        absl::StrCat("transformers anchor failed (", DescribeWaitStatus(r.wait_status),
                     "): ", r.output.substr(r.output.size() > 3000 ? r.output.size() - 3000 : 0)));
  }
  std::vector<std::string> lines = absl::StrSplit(r.output, '\n', absl::SkipWhitespace());
  if (lines.empty()) return absl::InternalError("transformers anchor printed nothing");
  nlohmann::json j = nlohmann::json::parse(lines.back(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return absl::InternalError("transformers anchor: bad JSON: " + lines.back());
  return j;
}

absl::Status Run(const EngineBenchOptions& o) {
  KVTIER_ASSIGN_OR_RETURN(std::vector<int> prefill, ParseInts(o.prefill));
  KVTIER_ASSIGN_OR_RETURN(std::vector<DecodeCase> decode, ParseDecode(o.decode));
  engine::EngineOptions eo;
  KVTIER_ASSIGN_OR_RETURN(eo.backend, engine::ParseBackend(o.backend));
  KVTIER_ASSIGN_OR_RETURN(uint64_t kv_bytes, ParseBytes(o.kv_cache));
  eo.kv_cache_bytes = static_cast<int64_t>(kv_bytes);
  eo.max_batch_tokens = o.max_batch_tokens;
  for (const DecodeCase& dc : decode) eo.max_batch_seqs = std::max(eo.max_batch_seqs, dc.batch);

  nlohmann::json out;
  std::vector<double> ours_prefill, ours_decode;
  ModelConfig cfg;
  int dtype_bytes = 2;
  {
    const int64_t t0 = MonoNowNs();
    KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<Engine> eng, Engine::Create(o.model, eo));
    spdlog::info("engine loaded in {:.1f} s: {} pages of {} bytes", Seconds(MonoNowNs() - t0),
                 eng->num_pages(), eng->kv_layout().BlockBytes());
    cfg = eng->config();
    dtype_bytes = eng->kv_layout().dtype_bytes;
    PageAllocator alloc(eng->num_pages());
    std::mt19937_64 rng(1);
    for (int n : prefill) {
      KVTIER_ASSIGN_OR_RETURN(double t, TimePrefill(*eng, alloc, n, o.reps, rng));
      spdlog::info("kvtier prefill {}: {:.4f} s", n, t);
      ours_prefill.push_back(t);
    }
    for (const DecodeCase& dc : decode) {
      KVTIER_ASSIGN_OR_RETURN(double t, TimeDecode(*eng, alloc, dc, o.steps, rng));
      spdlog::info("kvtier decode {}@{}: {:.3f} ms", dc.batch, dc.context, t * 1e3);
      ours_decode.push_back(t);
    }
  }  // the engine's GPU memory is freed before transformers loads

  nlohmann::json hf = nlohmann::json::object();  // stays empty when transformers is skipped
  if (!o.python.empty()) {
    KVTIER_ASSIGN_OR_RETURN(hf, RunHf(o));
  }
  const double peak = hf.value("gemm_peak_tflops", 0.0);
  const double bw = hf.value("mem_bw_gbps", 0.0);
  out["model"] = o.model;
  out["backend"] = o.backend;
  out["gemm_peak_tflops"] = peak;
  out["mem_bw_gbps"] = bw;

  std::printf("\n%-22s %12s %12s %10s %10s %10s\n", "prefill (batch 1)", "kvtier s", "transformers",
              "speedup", "TFLOP/s", "of peak");
  for (size_t i = 0; i < prefill.size(); ++i) {
    const double ours = ours_prefill[i];
    const double theirs =
        hf.contains("prefill_s") ? hf["prefill_s"].value(std::to_string(prefill[i]), 0.0) : 0.0;
    const double tflops = PrefillFlops(cfg, prefill[i]) / ours / 1e12;
    std::printf("%-22d %12.4f %12.4f %9.2fx %10.1f %9.0f%%\n", prefill[i], ours, theirs,
                theirs > 0 ? theirs / ours : 0.0, tflops, peak > 0 ? 100 * tflops / peak : 0.0);
    out["prefill"].push_back({{"tokens", prefill[i]},
                              {"kvtier_s", ours},
                              {"transformers_s", theirs},
                              {"speedup", theirs > 0 ? theirs / ours : 0.0},
                              {"tflops", tflops},
                              {"frac_gemm_peak", peak > 0 ? tflops / peak : 0.0}});
  }
  std::printf("\n%-22s %12s %12s %10s %10s %10s\n", "decode step", "kvtier ms", "transformers",
              "ratio", "GB/s", "of peak");
  for (size_t i = 0; i < decode.size(); ++i) {
    const DecodeCase& dc = decode[i];
    const std::string key = absl::StrCat(dc.batch, "@", dc.context);
    const double ours = ours_decode[i];
    const double theirs = hf.contains("decode_step_s") ? hf["decode_step_s"].value(key, 0.0) : 0.0;
    const double gbps = DecodeBytes(cfg, dc.batch, dc.context, dtype_bytes) / ours / 1e9;
    std::printf("%-22s %12.3f %12.3f %9.2fx %10.0f %9.0f%%\n",
                absl::StrCat("batch ", dc.batch, " ctx ", dc.context).c_str(), ours * 1e3,
                theirs * 1e3, theirs > 0 ? ours / theirs : 0.0, gbps,
                bw > 0 ? 100 * gbps / bw : 0.0);
    out["decode"].push_back({{"batch", dc.batch},
                             {"context", dc.context},
                             {"kvtier_ms", ours * 1e3},
                             {"transformers_ms", theirs * 1e3},
                             {"ratio", theirs > 0 ? ours / theirs : 0.0},
                             {"gbps", gbps},
                             {"frac_mem_bw", bw > 0 ? gbps / bw : 0.0}});
  }
  std::printf(
      "\nanchors: bf16 GEMM peak %.0f TFLOP/s, memory bandwidth %.0f GB/s (torch, same "
      "run)\nspeedup = transformers time / kvtier time; ratio = kvtier step / "
      "transformers step\n",
      peak, bw);
  if (o.json) std::printf("%s\n", out.dump().c_str());
  return absl::OkStatus();
}

}  // namespace

int RunEngineBench(const EngineBenchOptions& options) {
  absl::Status st = Run(options);
  if (!st.ok()) {
    spdlog::error("engine bench: {}", st.ToString());
    return 1;
  }
  return 0;
}

}  // namespace kvtier::bench
