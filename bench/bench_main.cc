// kvtier-bench: benchmark programs of kvtier.
//
//   kvtier-bench store [--transport shm|tcp] [--block-bytes 2MiB] [--batch 16] [--clients 1]
//                      [--seconds 3 | --iterations N] [--store HOST:PORT] [--lanes 1] [--json]
//                      [--spill | --netns [--store-nodes 1|2|3]]
//       Put/Get bandwidth and Lookup latency of kvtier-store, next to the anchors measured in
//       the same run (memcpy, ucx_perftest, redis-benchmark); see bench/store_bench.h. --spill:
//       control-call latency while every put evicts (bench/spill_bench.h). --netns: stores and
//       clients on network-namespace hosts, beside iperf3 and redis over the same veth link.
//   kvtier-bench engine --model DIR [--prefill 1024,4096,...] [--decode 1@8192,32@8192,...]
//                       [--kv-cache 40GiB] [--python python3] [--hf-script F] [--json]
//       Prefill time and decode-step latency of the engine next to Hugging Face transformers
//       on the same GPU and weights; see bench/engine_bench.h.
//   kvtier-bench serve --url http://HOST:PORT [--conversations 8] [--turns 5]
//                      [--system-prompt-tokens 200] [--user-tokens 40] [--max-tokens 32]
//                      [--concurrency 4] [--model NAME] [--seed 1] [--json]
//       Multi-turn chat replayed against a running router (OpenAI API, streaming): TTFT, time
//       per output token, throughput and cache hit rate with the tier off and on in one run;
//       see bench/serve_bench.h.
//   kvtier-bench soak [--seconds 600] [--quiet-seconds 40] [--conversations 48] [--turns 4]
//                     [--concurrency 4] [--seed 1] [--fault-interval 6]
//                     [--faults store-kill,store-stop,worker-kill,conn-kill]
//                     [--stop-max-seconds 5] [--drop-rate 0.05]
//                     [--rss-cap 1GiB] [--run-dir DIR] [--json]
//       A local cluster under a multi-turn workload while a fault injector kills, restarts and
//       stops its processes; fails on a wrong response, an unexplained error, a crash, a leaked
//       lease or reservation, a lost block or RSS growth; see bench/soak_bench.h.
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "bench/engine_bench.h"
#include "bench/serve_bench.h"
#include "bench/soak_bench.h"
#include "bench/store_bench.h"
#include "common/parse_bytes.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

// CLI11 validator for sizes such as "2MiB".
struct BytesValidator : public CLI::Validator {
  BytesValidator() : CLI::Validator("BYTES") {
    func_ = [](std::string& s) -> std::string {
      auto b = kvtier::ParseBytes(s);
      if (!b.ok()) return std::string(b.status().message());
      s = std::to_string(*b);
      return "";
    };
  }
};

}  // namespace

int main(int argc, char** argv) {
  // Logs (ours, the client library's) go to stderr: stdout carries results only.
  spdlog::set_default_logger(spdlog::stderr_color_mt("kvtier-bench"));
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");

  CLI::App app{"kvtier-bench: kvtier benchmarks"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error")->capture_default_str();

  // --progress-s of the long runs (bench/bench_util.h Progress).
  auto add_progress = [](CLI::App* sub, double* seconds) {
    sub->add_option("--progress-s", *seconds, "seconds between progress lines on stderr (0: none)")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
  };

  kvtier::bench::StoreBenchOptions so;
  uint64_t block_bytes = so.block_bytes;
  CLI::App* store = app.add_subcommand(
      "store",
      "kvtier-store Put/Get bandwidth and Lookup latency against memcpy, ucx_perftest "
      "and Redis anchors");
  store->add_option("--transport", so.transport, "UCX data plane: shm or tcp")
      ->check(CLI::IsMember({"shm", "tcp"}))
      ->capture_default_str();
  store->add_option("--block-bytes", block_bytes, "bytes per block, e.g. 2MiB")
      ->transform(BytesValidator())
      ->default_str("2MiB");
  store->add_option("--batch", so.batch, "blocks per Put/Get call")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  store->add_option("--clients", so.clients, "client processes")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  auto* seconds = store->add_option("--seconds", so.seconds, "seconds per timed phase (put, get)")
                      ->check(CLI::Range(0.1, 600.0))
                      ->capture_default_str();
  store->add_option("--iterations", so.iterations, "batches per client per timed phase")
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}))
      ->excludes(seconds);
  store->add_option("--store", so.store, "use a running store HOST:PORT instead of starting one");
  store->add_flag("--json", so.json, "print one JSON object as the last stdout line");
  store->add_flag("--skip-anchors", so.skip_anchors, "do not run ucx_perftest and redis");
  add_progress(store, &so.progress_s);
  auto* spill =
      store->add_flag("--spill", so.spill,
                      "instead: Reserve/Lookup latency while every put evicts, spill on vs off");
  store
      ->add_flag("--netns", so.netns,
                 "instead: stores and clients on network-namespace hosts over veth (UCX TCP), "
                 "beside iperf3 and redis over the same link (root)")
      ->excludes(spill);
  store->add_option("--store-nodes", so.store_nodes, "store nodes, each on its own host (--netns)")
      ->check(CLI::Range(1, 3))
      ->capture_default_str();
  store->add_option("--lanes", so.lanes, "UCX endpoints per client and store node")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();

  kvtier::bench::EngineBenchOptions eb;
  eb.hf_script = std::string(KVTIER_SOURCE_DIR) + "/bench/engine_hf.py";
  CLI::App* engine = app.add_subcommand(
      "engine", "engine prefill and decode against Hugging Face transformers on the same GPU");
  engine->add_option("--model", eb.model, "model directory")->required();
  engine->add_option("--backend", eb.backend, "cuda | cpu")->capture_default_str();
  engine->add_option("--prefill", eb.prefill, "prompt lengths")->capture_default_str();
  engine->add_option("--decode", eb.decode, "batch@context cases")->capture_default_str();
  engine->add_option("--kv-cache", eb.kv_cache, "KV cache memory")->capture_default_str();
  engine->add_option("--max-batch-tokens", eb.max_batch_tokens, "prefill chunk")
      ->capture_default_str();
  engine->add_option("--reps", eb.reps, "timed prefills per length")->capture_default_str();
  engine->add_option("--steps", eb.steps, "timed decode steps per case")->capture_default_str();
  engine->add_option("--python", eb.python, "python with torch + transformers; empty skips")
      ->capture_default_str();
  engine->add_option("--hf-script", eb.hf_script, "the transformers anchor script")
      ->capture_default_str();
  engine->add_flag("--json", eb.json, "print one JSON object as the last stdout line");

  kvtier::bench::ServeBenchOptions sb;
  CLI::App* serve = app.add_subcommand(
      "serve",
      "multi-turn chat against a running router: TTFT, TPOT, throughput, cache hit rate, "
      "tier off vs on");
  serve->add_option("--url", sb.url, "the router, http(s)://HOST:PORT")->required();
  serve->add_option("--ca-file", sb.ca_file,
                    "PEM CA of an HTTPS router (kvtier up: RUN/tls/ca.pem)");
  serve->add_option("--api-key-file", sb.api_key_file,
                    "file with the API key (kvtier up: RUN/api_key)");
  serve->add_option("--model", sb.model, "served model id; default: GET /v1/models");
  serve->add_option("--conversations", sb.conversations, "conversations per phase")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  serve->add_option("--turns", sb.turns, "turns per conversation")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  serve
      ->add_option("--system-prompt-tokens", sb.system_prompt_tokens,
                   "approximate length of the shared system prompt (words)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  serve->add_option("--user-tokens", sb.user_tokens, "approximate words per user turn")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  serve->add_option("--max-tokens", sb.max_tokens, "max_tokens per reply")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  serve->add_option("--concurrency", sb.concurrency, "conversations in flight at once")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  serve->add_option("--seed", sb.seed, "seed of the user texts")->capture_default_str();
  serve->add_option("--timeout", sb.timeout_s, "deadline of one request, seconds")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  add_progress(serve, &sb.progress_s);
  serve->add_flag("--json", sb.json, "print one JSON object as the last stdout line");

  kvtier::bench::SoakBenchOptions sk;
  uint64_t rss_cap = sk.rss_cap_bytes;
  CLI::App* soak = app.add_subcommand(
      "soak",
      "a local cluster under a multi-turn workload and injected faults: checks answers, leases, "
      "blocks, RSS");
  soak->add_option("--seconds", sk.seconds, "length of the workload")
      ->check(CLI::Range(10.0, 86400.0))
      ->capture_default_str();
  soak->add_option("--quiet-seconds", sk.quiet_seconds, "faults stop this long before the end")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  soak->add_option("--conversations", sk.conversations, "distinct conversations")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  soak->add_option("--turns", sk.turns, "turns per conversation")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  soak->add_option("--concurrency", sk.concurrency, "clients in flight at once")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  soak->add_option("--seed", sk.seed, "seed of the conversations and the fault schedule")
      ->capture_default_str();
  soak->add_option("--fault-interval", sk.fault_interval_s, "mean seconds between faults")
      ->check(CLI::Range(1.0, 3600.0))
      ->capture_default_str();
  soak->add_option("--faults", sk.faults,
                   "fault kinds: store-kill, store-stop, worker-kill, conn-kill")
      ->delimiter(',')
      ->capture_default_str();
  soak->add_option("--stop-max-seconds", sk.stop_max_s, "longest SIGSTOP of the store")
      ->check(CLI::Range(1.0, 600.0))
      ->capture_default_str();
  soak->add_option("--drop-rate", sk.drop_rate,
                   "fraction of streamed requests closed by the client mid-stream")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  soak->add_option("--rss-cap", rss_cap, "RSS cap of every process, e.g. 1GiB")
      ->transform(BytesValidator())
      ->default_str("1GiB");
  soak->add_option("--run-dir", sk.run_dir,
                   "run directory (default: a fresh one in $TMPDIR, removed when the soak passes)");
  add_progress(soak, &sk.progress_s);
  soak->add_flag("--json", sk.json, "print one JSON object as the last stdout line");

  // Hidden: one client process of `store --clients N`.
  kvtier::bench::StoreWorkerOptions wo;
  CLI::App* worker = app.add_subcommand("store-worker", "")->group("");
  worker->add_option("--store", wo.store)->required();
  worker->add_option("--ns", wo.ns_hex)->required();
  worker->add_option("--client-id", wo.client_id)->required();
  worker->add_option("--block-bytes", wo.block_bytes)->required();
  worker->add_option("--batch", wo.batch)->required();
  worker->add_option("--get-batches", wo.get_batches)->required();
  worker->add_option("--lanes", wo.lanes);
  worker->add_flag("--map-pool,!--no-map-pool", wo.map_pool);

  CLI11_PARSE(app, argc, argv);
  auto level = spdlog::level::from_str(log_level);
  if (level == spdlog::level::off && log_level != "off") {
    std::fprintf(stderr, "kvtier-bench: unknown log level '%s'\n", log_level.c_str());
    return 2;
  }
  spdlog::set_level(level);

  if (*store) {
    so.block_bytes = block_bytes;
    return kvtier::bench::RunStoreBench(so);
  }
  if (*engine) return kvtier::bench::RunEngineBench(eb);
  if (*serve) return kvtier::bench::RunServeBench(sb);
  if (*soak) {
    sk.rss_cap_bytes = rss_cap;
    return kvtier::bench::RunSoakBench(sk);
  }
  if (*worker) return kvtier::bench::RunStoreWorker(wo);
  return 2;
}
