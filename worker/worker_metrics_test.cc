#include "worker/worker_metrics.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace kvtier::worker {
namespace {

// Every family of docs/observability.md, "Worker families", with its type.
constexpr std::pair<const char*, const char*> kFamilies[] = {
    {"time_to_first_token_seconds", "histogram"},
    {"inter_token_latency_seconds", "histogram"},
    {"e2e_request_latency_seconds", "histogram"},
    {"request_queue_time_seconds", "histogram"},
    {"request_prefill_time_seconds", "histogram"},
    {"num_requests_running", "gauge"},
    {"num_requests_waiting", "gauge"},
    {"kv_cache_usage_perc", "gauge"},
    {"prompt_tokens_total", "counter"},
    {"generation_tokens_total", "counter"},
    {"requests_total", "counter"},
    {"fetch_blocks_total", "counter"},
    {"fetch_bytes_total", "counter"},
    {"fetch_seconds", "histogram"},
    {"store_blocks_total", "counter"},
    {"store_bytes_total", "counter"},
    {"store_seconds", "histogram"},
    {"checksum_failures_total", "counter"},
    {"recompute_fallbacks_total", "counter"},
    {"write_queue_bytes", "gauge"},
    {"store_connected", "gauge"},
};

TEST(WorkerMetricsTest, EveryFamilyIsExportedFromTheStart) {
  for (const char* role : {"prefill", "decode"}) {
    WorkerMetrics m(role);
    const std::string text = m.registry().RenderText();
    for (const auto& [name, type] : kFamilies) {
      const std::string family = absl::StrCat("kvtier_worker_", name);
      EXPECT_NE(text.find(absl::StrCat("# TYPE ", family, " ", type, "\n")), std::string::npos)
          << family;
      // At least one sample, and every sample of the family carries the role.
      const std::string sample = absl::StrCat(
          family, type == std::string("histogram") ? "_count{role=\"" : "{role=\"", role, "\"");
      EXPECT_NE(text.find(sample), std::string::npos) << sample;
    }
    // No sample without the role label.
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (line.empty() || line[0] == '#') continue;
      EXPECT_NE(line.find(absl::StrCat("role=\"", role, "\"")), absl::string_view::npos) << line;
    }
  }
}

TEST(WorkerMetricsTest, LabelledFamiliesHaveTheirFixedValues) {
  WorkerMetrics m("decode");
  const std::string text = m.registry().RenderText();
  for (const char* s : {
           R"(kvtier_worker_time_to_first_token_seconds_count{role="decode",cache="hit"} 0)",
           R"(kvtier_worker_time_to_first_token_seconds_count{role="decode",cache="miss"} 0)",
           R"(kvtier_worker_prompt_tokens_total{role="decode",source="computed"} 0)",
           R"(kvtier_worker_prompt_tokens_total{role="decode",source="first_tier"} 0)",
           R"(kvtier_worker_prompt_tokens_total{role="decode",source="store"} 0)",
           R"(kvtier_worker_requests_total{role="decode",finish_reason="stop"} 0)",
           R"(kvtier_worker_requests_total{role="decode",finish_reason="length"} 0)",
           R"(kvtier_worker_requests_total{role="decode",finish_reason="cancelled"} 0)",
           R"(kvtier_worker_requests_total{role="decode",finish_reason="error"} 0)",
           R"(kvtier_worker_fetch_blocks_total{role="decode",path="first_tier"} 0)",
           R"(kvtier_worker_fetch_blocks_total{role="decode",path="mapped"} 0)",
           R"(kvtier_worker_fetch_blocks_total{role="decode",path="ucx"} 0)",
           R"(kvtier_worker_fetch_bytes_total{role="decode",path="ucx"} 0)",
           R"(kvtier_worker_fetch_seconds_count{role="decode",path="mapped"} 0)",
           R"(kvtier_worker_fetch_seconds_count{role="decode",path="ucx"} 0)",
           R"(kvtier_worker_recompute_fallbacks_total{role="decode",reason="store_error"} 0)",
           R"(kvtier_worker_recompute_fallbacks_total{role="decode",reason="checksum"} 0)",
           R"(kvtier_worker_recompute_fallbacks_total{role="decode",reason="import"} 0)",
       }) {
    EXPECT_NE(text.find(std::string(s) + "\n"), std::string::npos) << s;
  }
  // fetch_seconds has no first_tier series: nothing is fetched from the worker's own pages.
  EXPECT_EQ(text.find(R"(fetch_seconds_count{role="decode",path="first_tier"})"),
            std::string::npos);
}

TEST(WorkerMetricsTest, UpdatesReachTheirSeries) {
  WorkerMetrics m("decode");
  m.Fetched(FetchPath::kUcx, 3, 3000, 0.002);
  m.Fetched(FetchPath::kFirstTier, 2, 2000);
  m.Stored(PutResult{.stored = 4, .stored_mapped = 1}, 1000, 0.01);
  m.Fallback(FallbackReason::kChecksum);
  m.PromptTokens(TokenSource::kStore, 48);
  m.Finished(FinishReason::kCancelled);
  m.FirstToken(true, absl::Milliseconds(5));
  EXPECT_EQ(m.fetch_blocks(FetchPath::kUcx).Value(), 3);
  EXPECT_EQ(m.fetch_bytes(FetchPath::kFirstTier).Value(), 2000);
  EXPECT_EQ(m.store_blocks(), 4);
  EXPECT_EQ(m.store_blocks(FetchPath::kMapped).Value(), 1);
  EXPECT_EQ(m.store_blocks(FetchPath::kUcx).Value(), 3);
  EXPECT_EQ(m.fallbacks(FallbackReason::kChecksum).Value(), 1);
  EXPECT_EQ(m.prompt_tokens(TokenSource::kStore).Value(), 48);
  EXPECT_EQ(m.requests(FinishReason::kCancelled).Value(), 1);
  EXPECT_EQ(m.ttft(true).Snap().count, 1u);
  EXPECT_EQ(m.ttft(false).Snap().count, 0u);
  const std::string text = m.registry().RenderText();
  EXPECT_NE(text.find("kvtier_worker_fetch_seconds_count{role=\"decode\",path=\"ucx\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("kvtier_worker_store_bytes_total{role=\"decode\",path=\"ucx\"} 3000\n"),
            std::string::npos);
  EXPECT_NE(text.find("kvtier_worker_store_seconds_count{role=\"decode\",path=\"ucx\"} 1\n"),
            std::string::npos)
      << "a batch with blocks over UCX counts as ucx";
}

}  // namespace
}  // namespace kvtier::worker
