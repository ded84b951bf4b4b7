// kvtier-bench engine: prefill time and decode-step latency of the kvtier engine next to
// Hugging Face transformers on the same GPU and weights, measured in the same run
// (bench/engine_hf.py), with the hardware ceilings (bf16 GEMM rate, memory bandwidth) that
// the engine is judged against. Results: docs/BENCHMARKS.md.
#ifndef KVTIER_BENCH_ENGINE_BENCH_H_
#define KVTIER_BENCH_ENGINE_BENCH_H_

#include <string>

namespace kvtier::bench {

struct EngineBenchOptions {
  // Model directory (e.g. from `kvtier-model init --shape llama3-8b`).
  std::string model;
  // Default: "cuda".
  std::string backend = "cuda";
  // Prompt lengths to time prefill at. Default: "1024,4096,8192,16384".
  std::string prefill = "1024,4096,8192,16384";
  // Decode cases "batch@context". Default: "1@8192,32@8192,128@2048" (128 sequences of 8K
  // tokens would need 128 GiB of Llama-3-8B KV: more than an H100 holds).
  std::string decode = "1@8192,32@8192,128@2048";
  // KV cache memory. Default: "40GiB".
  std::string kv_cache = "40GiB";
  // Prefill chunk (tokens per forward). Default: 16384.
  int max_batch_tokens = 16384;
  // Timed repetitions of each prefill; timed decode steps per case. Defaults: 3, 20.
  int reps = 3;
  int steps = 20;
  // The transformers anchor; empty python skips it. Defaults: "python3", bench/engine_hf.py
  // next to the sources.
  std::string python = "python3";
  std::string hf_script;
  bool json = false;
};

int RunEngineBench(const EngineBenchOptions& options);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_ENGINE_BENCH_H_
