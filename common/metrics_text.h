// A parser of the Prometheus text exposition format 0.0.4: what common/metrics.cc renders and
// what any Prometheus client renders (HELP and TYPE lines, comments, labels with escapes, +Inf,
// -Inf and NaN values, optional timestamps). `kvtier status` (deploy/status.h) and the tests read
// the /metrics of kvtier processes with it (docs/observability.md).
//
// Input is bounded (max_bytes); a malformed line is InvalidArgument naming the line number and
// what is wrong. ParsedMetrics is a plain value: its const methods are safe from any thread.
#ifndef KVTIER_COMMON_METRICS_TEXT_H_
#define KVTIER_COMMON_METRICS_TEXT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/metrics.h"

namespace kvtier {

enum class MetricType { kUntyped, kCounter, kGauge, kHistogram, kSummary };

// "counter", "gauge", ... as the TYPE line names it.
const char* MetricTypeName(MetricType type);

// One sample line: `name{labels} value [timestamp_ms]`.
struct MetricSample {
  std::string name;     // as written, e.g. "kvtier_worker_fetch_seconds_bucket"
  MetricLabels labels;  // in the order written, unescaped
  double value = 0;
  std::optional<int64_t> timestamp_ms;
};

struct ParsedMetrics {
  std::vector<MetricSample> samples;        // in input order
  std::map<std::string, MetricType> types;  // family -> its TYPE line
  std::map<std::string, std::string> help;  // family -> its HELP text, unescaped

  // The family a sample name belongs to: the name of a histogram with `_bucket`, `_sum` or
  // `_count` removed (a summary: `_sum`, `_count`), otherwise the name itself.
  std::string FamilyOf(absl::string_view sample_name) const;
  // The families that have at least one sample.
  std::set<std::string> Families() const;
  // Whether any sample is named `name`.
  bool Has(absl::string_view name) const;
  // The sum of the values of the samples named `name` whose labels include every pair of
  // `match` (an empty value matches a missing label too, as in PromQL); 0 when none match.
  double Sum(absl::string_view name, const MetricLabels& match = {}) const;
};

// The largest input ParseMetricsText takes by default: far above any kvtier process's page.
inline constexpr size_t kMaxMetricsTextBytes = 8u << 20;

// Parses a whole exposition. InvalidArgument "line N: ..." for a malformed line (a bad name,
// label, escape or value, a second TYPE or HELP for a family, a TYPE after the family's samples,
// a histogram bucket without `le`, a label given twice); ResourceExhausted above `max_bytes`.
absl::StatusOr<ParsedMetrics> ParseMetricsText(absl::string_view text,
                                               size_t max_bytes = kMaxMetricsTextBytes);

}  // namespace kvtier

#endif  // KVTIER_COMMON_METRICS_TEXT_H_
