#include "common/metrics_text.h"

#include <cmath>
#include <string>

#include "common/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

TEST(MetricsTextTest, ReadsWhatTheRegistryRenders) {
  MetricsRegistry r;
  r.AddCounter("kvtier_x_total", "Things\\ counted.\nTwice.", {{"path", "ucx"}})->Increment(3);
  r.AddCounter("kvtier_x_total", "", {{"path", "mapped"}})->Increment(4.5);
  r.AddGauge("kvtier_g", "A gauge.", {{"v", "a\"b\\c\nd"}})->Set(-2);
  Histogram* h = r.AddHistogram("kvtier_h_seconds", "Latency.", {0.1, 1}, {{"cache", "hit"}});
  h->Observe(0.05);
  h->Observe(5);
  absl::StatusOr<ParsedMetrics> p = ParseMetricsText(r.RenderText());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->types.at("kvtier_x_total"), MetricType::kCounter);
  EXPECT_EQ(p->types.at("kvtier_g"), MetricType::kGauge);
  EXPECT_EQ(p->types.at("kvtier_h_seconds"), MetricType::kHistogram);
  EXPECT_EQ(p->help.at("kvtier_x_total"), "Things\\ counted.\nTwice.");
  EXPECT_EQ(p->Sum("kvtier_x_total"), 7.5);
  EXPECT_EQ(p->Sum("kvtier_x_total", {{"path", "ucx"}}), 3);
  EXPECT_EQ(p->Sum("kvtier_x_total", {{"path", "rdma"}}), 0);
  EXPECT_EQ(p->Sum("kvtier_g", {{"v", "a\"b\\c\nd"}}), -2);
  EXPECT_EQ(p->Sum("kvtier_h_seconds_count", {{"cache", "hit"}}), 2);
  EXPECT_EQ(p->Sum("kvtier_h_seconds_bucket", {{"le", "0.1"}}), 1);
  EXPECT_EQ(p->Sum("kvtier_h_seconds_bucket", {{"le", "+Inf"}}), 2);
  EXPECT_DOUBLE_EQ(p->Sum("kvtier_h_seconds_sum"), 5.05);
  EXPECT_EQ(p->FamilyOf("kvtier_h_seconds_bucket"), "kvtier_h_seconds");
  EXPECT_EQ(p->FamilyOf("kvtier_x_total"), "kvtier_x_total");
  EXPECT_THAT(p->Families(), ElementsAre("kvtier_g", "kvtier_h_seconds", "kvtier_x_total"));
  EXPECT_TRUE(p->Has("kvtier_h_seconds_sum"));
  EXPECT_FALSE(p->Has("kvtier_h_seconds"));
}

TEST(MetricsTextTest, ReadsOtherClientsOutput) {
  // As the Go client and others write it: comments, blanks, timestamps, special values,
  // a trailing comma, spaces around label punctuation, a summary, untyped samples.
  const char* text =
      "# A comment line.\n"
      "\n"
      "# HELP go_gc_duration_seconds A summary.\n"
      "# TYPE go_gc_duration_seconds summary\n"
      "go_gc_duration_seconds{quantile=\"0.5\"} 1.2e-05\n"
      "go_gc_duration_seconds_sum 0.25\n"
      "go_gc_duration_seconds_count 12\n"
      "http_requests_total{method=\"post\",code=\"200\",} 1027 1395066363000\n"
      "http_requests_total { method = \"get\" , code=\"400\" }\t3   -1\n"
      "up Nan\n"
      "x_pos +Inf\n"
      "x_neg -inf\n"
      "x_exp +1.5E3\n"
      "x_big 1e999\n"
      "x_tiny -1e-999\n"
      "untyped_total 4\n";
  absl::StatusOr<ParsedMetrics> p = ParseMetricsText(text);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->samples.size(), 12u);
  EXPECT_EQ(p->samples[3].timestamp_ms, 1395066363000);
  EXPECT_THAT(p->samples[3].labels, ElementsAre(Pair("method", "post"), Pair("code", "200")));
  EXPECT_EQ(p->samples[4].timestamp_ms, -1);
  EXPECT_EQ(p->samples[4].value, 3);
  EXPECT_EQ(p->Sum("http_requests_total"), 1030);
  EXPECT_TRUE(std::isnan(p->samples[5].value));
  EXPECT_EQ(p->samples[6].value, INFINITY);
  EXPECT_EQ(p->samples[7].value, -INFINITY);
  EXPECT_EQ(p->samples[8].value, 1500);
  EXPECT_EQ(p->samples[9].value, INFINITY);
  EXPECT_EQ(p->samples[10].value, 0);
  EXPECT_EQ(p->FamilyOf("go_gc_duration_seconds_sum"), "go_gc_duration_seconds");
  EXPECT_EQ(p->FamilyOf("go_gc_duration_seconds_bucket"), "go_gc_duration_seconds_bucket");
  EXPECT_EQ(p->types.count("untyped_total"), 0u);
  // A label missing from a sample matches an empty value (PromQL).
  EXPECT_EQ(p->Sum("http_requests_total", {{"tenant", ""}}), 1030);
}

TEST(MetricsTextTest, ErrorsNameTheLine) {
  struct Case {
    const char* text;
    const char* error;
  };
  const Case cases[] = {
      {"a 1\n2b 3\n", "line 2: a sample line must start with a metric name"},
      {"a{b=\"c\" 1\n", "line 1: expected ',' or '}' in a"},
      {"a{b=c} 1\n", "expected a quoted value for label b"},
      {"a{b=\"c\\t\"} 1\n", "invalid escape '\\t'"},
      {"a{b=\"c} 1\n", "unterminated label value"},
      {"a{b=\"1\",b=\"2\"} 1\n", "label 'b' given twice"},
      {"a{1b=\"c\"} 1\n", "bad label name"},
      {"a{b\"c\"} 1\n", "expected '=' after label b"},
      {"a one\n", "bad value 'one' of a"},
      {"a +-1\n", "bad value '+-1'"},
      {"a\n", "bad value '' of a"},
      {"a 1 12.5\n", "bad timestamp '12.5'"},
      {"a 1 2 3\n", "text after the timestamp"},
      {"a-1 2\n", "expected labels or a value after a"},
      {"# TYPE a counter\n# TYPE a gauge\n", "line 2: a second TYPE line for a"},
      {"# HELP a x\n# HELP a y\n", "a second HELP line for a"},
      {"# TYPE a histogram_x\n", "unknown metric type 'histogram_x'"},
      {"# TYPE 9a counter\n", "bad metric name in the TYPE line"},
      {"a 1\n# TYPE a counter\n", "the TYPE line of a after its samples"},
      {"# TYPE h histogram\nh_bucket 1\n", "histogram bucket h_bucket has no le"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ParsedMetrics> p = ParseMetricsText(c.text);
    ASSERT_FALSE(p.ok()) << c.text;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(p.status().message(), HasSubstr(c.error)) << c.text;
  }
}

TEST(MetricsTextTest, InputIsBounded) {
  EXPECT_TRUE(ParseMetricsText("a 1\n", 4).ok());
  absl::StatusOr<ParsedMetrics> p = ParseMetricsText("a 1\nb 2\n", 4);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(p.status().message(), HasSubstr("over the limit of 4 bytes"));
}

}  // namespace
}  // namespace kvtier
