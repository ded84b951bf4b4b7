#include "worker/worker_metrics.h"

namespace kvtier::worker {
namespace {

constexpr char kPrefix[] = "kvtier_worker_";

// Label values, in the order of the enums of worker/worker_metrics.h.
constexpr const char* kPathNames[] = {"first_tier", "mapped", "ucx"};
constexpr const char* kReasonNames[] = {"store_error", "checksum", "import"};
constexpr const char* kSourceNames[] = {"computed", "first_tier", "store"};
constexpr const char* kFinishNames[] = {"stop", "length", "cancelled", "error"};

// Registers the families of docs/observability.md, "Worker families", each with `role`.
class Families {
 public:
  Families(MetricsRegistry* r, const std::string& role) : r_(r), role_(role) {}

  MetricLabels Labels(const char* key = nullptr, const char* value = nullptr) const {
    MetricLabels l{{"role", role_}};
    if (key != nullptr) l.emplace_back(key, value);
    return l;
  }
  Counter* C(const char* name, const char* help, MetricLabels labels) const {
    return r_->AddCounter(kPrefix + std::string(name), help, labels);
  }
  Counter* C(const char* name, const char* help) const { return C(name, help, Labels()); }
  Gauge* G(const char* name, const char* help) const {
    return r_->AddGauge(kPrefix + std::string(name), help, Labels());
  }
  Histogram* H(const char* name, const char* help, MetricLabels labels) const {
    return r_->AddHistogram(kPrefix + std::string(name), help, LatencyBucketsSeconds(), labels);
  }
  Histogram* H(const char* name, const char* help) const { return H(name, help, Labels()); }
  // One counter of family `name` per value of label `key`.
  template <size_t N>
  void Each(const char* name, const char* help, const char* key, const char* const (&values)[N],
            Counter* (&out)[N]) const {
    for (size_t i = 0; i < N; ++i) out[i] = C(name, help, Labels(key, values[i]));
  }

 private:
  MetricsRegistry* r_;
  const std::string& role_;
};

}  // namespace

WorkerMetrics::WorkerMetrics(absl::string_view role) : role_(role) {
  const Families f(&registry_, role_);
  const char* ttft_help =
      "Decode: request received to first token sampled; cache=hit when any prompt token came "
      "from a cache";
  // In the order of docs/observability.md.
  ttft_hit_ = f.H("time_to_first_token_seconds", ttft_help, f.Labels("cache", "hit"));
  ttft_miss_ = f.H("time_to_first_token_seconds", ttft_help, f.Labels("cache", "miss"));
  inter_token_latency =
      f.H("inter_token_latency_seconds", "Decode: between consecutive tokens of one completion");
  e2e_request_latency = f.H("e2e_request_latency_seconds", "Request received to finished");
  request_queue_time =
      f.H("request_queue_time_seconds",
          "Request received to admitted (decode: pages reserved; prefill: holding the engine)");
  request_prefill_time =
      f.H("request_prefill_time_seconds",
          "Admitted to the first token (decode) or to the blocks stored (prefill)");
  num_requests_running = f.G("num_requests_running", "Requests admitted and not finished");
  num_requests_waiting = f.G("num_requests_waiting", "Requests queued");
  kv_cache_usage_perc =
      f.G("kv_cache_usage_perc", "KV pages in use (not free, not evictable) / all pages, 0..1");
  f.Each("prompt_tokens_total",
         "Prompt tokens by where their K/V came from (computed, the worker's own pages, the store)",
         "source", kSourceNames, prompt_tokens_);
  generation_tokens = f.C("generation_tokens_total", "Tokens sampled");
  f.Each("requests_total", "Finished requests by finish_reason", "finish_reason", kFinishNames,
         requests_);
  f.Each("fetch_blocks_total",
         "Blocks whose K/V was reused: from the worker's own pages (first_tier), read in place "
         "from a same-host store pool (mapped), or moved over UCX (ucx)",
         "path", kPathNames, fetch_blocks_);
  f.Each("fetch_bytes_total", "Payload bytes of the blocks reused, by path", "path", kPathNames,
         fetch_bytes_);
  fetch_seconds_[0] = nullptr;
  for (int i = 1; i < 3; ++i) {
    fetch_seconds_[i] =
        f.H("fetch_seconds", "One fetch from the store (lookup, transfer, import, verify), by path",
            f.Labels("path", kPathNames[i]));
  }
  store_blocks_[0] = store_bytes_[0] = nullptr;
  store_seconds_[0] = nullptr;
  for (int i = 1; i < 3; ++i) {
    const MetricLabels path = f.Labels("path", kPathNames[i]);
    store_blocks_[i] = f.C("store_blocks_total",
                           "Blocks written to the store, by path (mapped: through a same-host "
                           "pool; ucx)",
                           path);
    store_bytes_[i] =
        f.C("store_bytes_total", "Payload bytes of the blocks written to the store, by path", path);
    store_seconds_[i] = f.H("store_seconds",
                            "One write of a batch of blocks to the store (export to commit; "
                            "decode: the writer thread's Put), by path",
                            path);
  }
  checksum_failures =
      f.C("checksum_failures_total", "Fetched blocks whose checksum did not match (recomputed)");
  f.Each("recompute_fallbacks_total",
         "Fetches that ended short of the stored prefix (the rest was recomputed), by reason",
         "reason", kReasonNames, fallbacks_);
  write_queue_bytes =
      f.G("write_queue_bytes", "Decode: bytes exported and waiting for the writer thread");
  store_connected = f.G("store_connected", "1 while the last store call reached a store node");
}

void WorkerMetrics::Fetched(FetchPath path, uint64_t blocks, uint64_t bytes, double seconds) {
  const int i = static_cast<int>(path);
  fetch_blocks_[i]->Increment(static_cast<double>(blocks));
  fetch_bytes_[i]->Increment(static_cast<double>(bytes));
  if (seconds >= 0 && fetch_seconds_[i] != nullptr) fetch_seconds_[i]->Observe(seconds);
}

void WorkerMetrics::Stored(const PutResult& r, uint64_t block_bytes, double seconds) {
  const int mapped = static_cast<int>(FetchPath::kMapped), ucx = static_cast<int>(FetchPath::kUcx);
  const uint64_t over_ucx = r.stored - r.stored_mapped;
  store_blocks_[mapped]->Increment(static_cast<double>(r.stored_mapped));
  store_bytes_[mapped]->Increment(static_cast<double>(r.stored_mapped * block_bytes));
  store_blocks_[ucx]->Increment(static_cast<double>(over_ucx));
  store_bytes_[ucx]->Increment(static_cast<double>(over_ucx * block_bytes));
  store_seconds_[r.stored > 0 && over_ucx == 0 ? mapped : ucx]->Observe(seconds);
}

}  // namespace kvtier::worker
