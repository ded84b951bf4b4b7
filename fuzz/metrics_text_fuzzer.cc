// libFuzzer target: the Prometheus text parser (common/metrics_text.h) that `kvtier status` and
// the tests run over what a process's /metrics endpoint sends. Checks: no crash or unbounded
// work on any input; an accepted input, written back in the canonical form (escaped label
// values, shortest round-trip values, timestamps), parses again to the same samples.
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/metrics_text.h"
#include "fuzz/fuzz_util.h"

namespace kvtier {
namespace {

std::string Value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  if (r.ec != std::errc()) std::abort();
  return std::string(buf, r.ptr);
}

std::string Render(const ParsedMetrics& m) {
  std::string out;
  for (const MetricSample& s : m.samples) {
    out += s.name;
    if (!s.labels.empty()) {
      out += '{';
      for (const auto& [k, v] : s.labels) {
        absl::StrAppend(&out, k, "=\"");
        for (char c : v) {
          if (c == '\\' || c == '"') out += '\\';
          out += c == '\n' ? std::string("\\n") : std::string(1, c);
        }
        out += "\",";
      }
      out += '}';
    }
    absl::StrAppend(&out, " ", Value(s.value));
    if (s.timestamp_ms) absl::StrAppend(&out, " ", *s.timestamp_ms);
    out += '\n';
  }
  return out;
}

bool Same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

void Check(const uint8_t* data, size_t size) {
  absl::StatusOr<ParsedMetrics> p = ParseMetricsText(fuzz::AsText(data, size), 1 << 16);
  if (!p.ok()) return;
  // The canonical form has no TYPE lines, so no histogram rule applies to it.
  absl::StatusOr<ParsedMetrics> again = ParseMetricsText(Render(*p), 1 << 20);
  if (!again.ok() || again->samples.size() != p->samples.size()) std::abort();
  for (size_t i = 0; i < p->samples.size(); ++i) {
    const MetricSample& a = p->samples[i];
    const MetricSample& b = again->samples[i];
    if (a.name != b.name || a.labels != b.labels || !Same(a.value, b.value) ||
        a.timestamp_ms != b.timestamp_ms) {
      std::abort();
    }
  }
}

}  // namespace
}  // namespace kvtier

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::Check(data, size);
  return 0;
}
