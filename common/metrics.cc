#include "common/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"

namespace kvtier {
namespace {

enum MetricType : int { kCounterType = 0, kGaugeType = 1, kHistogramType = 2 };

const char* TypeName(int type) {
  switch (type) {
    case kCounterType:
      return "counter";
    case kGaugeType:
      return "gauge";
    case kHistogramType:
      return "histogram";
  }
  return "untyped";
}

// Adds `delta` to an atomic double with a compare-exchange loop (fetch_add on floating-point
// atomics is C++20 but not lock-free everywhere; the loop is portable and lock-free on x86-64).
void AtomicAdd(std::atomic<double>& target, double delta) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + delta, std::memory_order_relaxed,
                                       std::memory_order_relaxed)) {
  }
}

bool IsAsciiLetter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }

void CheckLabels(const std::string& metric, const MetricLabels& labels, bool is_histogram) {
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& label = labels[i].first;
    // Names starting with "__" are reserved by Prometheus.
    KVTIER_CHECK(IsValidLabelName(label) && !absl::StartsWith(label, "__"),
                 "metric {}: invalid label name '{}'", metric, label);
    KVTIER_CHECK(!is_histogram || label != "le", "histogram {}: label 'le' is reserved", metric);
    for (size_t j = 0; j < i; ++j) {
      KVTIER_CHECK(labels[j].first != label, "metric {}: duplicate label '{}'", metric, label);
    }
  }
}

// HELP text: backslash and newline are escaped.
std::string EscapeHelp(absl::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (const char c : help) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Label values: backslash, double quote and newline are escaped.
void AppendEscapedLabelValue(std::string* out, absl::string_view value) {
  for (const char c : value) {
    switch (c) {
      case '\\':
        *out += "\\\\";
        break;
      case '"':
        *out += "\\\"";
        break;
      case '\n':
        *out += "\\n";
        break;
      default:
        *out += c;
    }
  }
}

// Integral values below 2^53 print as integers ("42", not "4.2e+01"); everything else uses
// the shortest representation that round-trips.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
  if (v == std::trunc(v) && std::fabs(v) < kMaxExactInteger) {
    if (v == 0) return "0";  // also folds -0 into 0
    return absl::StrCat(static_cast<int64_t>(v));
  }
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  KVTIER_CHECK(r.ec == std::errc(), "to_chars failed for a double");
  return std::string(buf, r.ptr);
}

// Appends `{k="v",...,extra_key="extra_value"}` (nothing when there are no labels at all).
void AppendLabels(std::string* out, const MetricLabels& labels, absl::string_view extra_key = "",
                  absl::string_view extra_value = "") {
  if (labels.empty() && extra_key.empty()) return;
  *out += '{';
  bool first = true;
  for (const auto& [key, value] : labels) {
    if (!first) *out += ',';
    first = false;
    absl::StrAppend(out, key, "=\"");
    AppendEscapedLabelValue(out, value);
    *out += '"';
  }
  if (!extra_key.empty()) {
    if (!first) *out += ',';
    absl::StrAppend(out, extra_key, "=\"");
    AppendEscapedLabelValue(out, extra_value);
    *out += '"';
  }
  *out += '}';
}

}  // namespace

bool IsValidMetricName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = IsAsciiLetter(c) || c == '_' || c == ':' || (i > 0 && IsAsciiDigit(c));
    if (!ok) return false;
  }
  return true;
}

bool IsValidLabelName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = IsAsciiLetter(c) || c == '_' || (i > 0 && IsAsciiDigit(c));
    if (!ok) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Counter / Gauge

void Counter::Increment(double v) {
  // Counters are monotonic: negative and NaN increments are dropped rather than corrupting the
  // series (a metrics bug should not take the process down).
  if (!(v >= 0)) return;
  AtomicAdd(value_, v);
}

double Counter::Value() const { return value_.load(std::memory_order_relaxed); }

void Gauge::Set(double v) { value_.store(v, std::memory_order_relaxed); }

void Gauge::Add(double v) { AtomicAdd(value_, v); }

double Gauge::Value() const { return value_.load(std::memory_order_relaxed); }

// ---------------------------------------------------------------------------------------------
// Histogram

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    KVTIER_CHECK(!std::isnan(bounds_[i]), "histogram bound {} is NaN", i);
    KVTIER_CHECK(i == 0 || bounds_[i - 1] < bounds_[i],
                 "histogram bounds must be strictly increasing (index {})", i);
  }
  // An explicit +Inf bound would duplicate the implicit one.
  KVTIER_CHECK(bounds_.empty() || !std::isinf(bounds_.back()) || bounds_.back() < 0,
               "histogram bounds must not include +Inf (it is implicit)");
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double v) {
  // First bucket whose upper bound is >= v (Prometheus "le" semantics); NaN lands in +Inf.
  size_t index = bounds_.size();
  if (!std::isnan(v)) {
    index =
        static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  }
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
  count_.fetch_add(1, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Snap() const {
  Snapshot snap;
  snap.upper_bounds = bounds_;
  snap.upper_bounds.push_back(std::numeric_limits<double>::infinity());
  snap.cumulative_counts.reserve(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    snap.cumulative_counts.push_back(running);
  }
  snap.sum = sum_.load(std::memory_order_relaxed);
  // The count is taken from the buckets (not count_) so that the +Inf bucket always equals
  // _count in one snapshot, even while other threads are observing.
  snap.count = running;
  return snap;
}

std::vector<double> LatencyBucketsSeconds() {
  return {10e-6, 25e-6, 50e-6,  100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
          25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,    2.5,  5.0,    10.0};
}

// ---------------------------------------------------------------------------------------------
// MetricsRegistry

struct MetricsRegistry::Family {
  struct Child {
    MetricLabels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
    std::vector<double> histogram_bounds;  // as registered, to detect conflicting re-registration
  };

  std::string name;
  std::string help;
  int type = kCounterType;
  std::vector<Child> children;  // registration order

  Child* Find(const MetricLabels& labels) {
    for (Child& c : children) {
      if (c.labels == labels) return &c;
    }
    return nullptr;
  }
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry::Family* MetricsRegistry::GetFamily(const std::string& name,
                                                    const std::string& help, int type) {
  KVTIER_CHECK(IsValidMetricName(name), "invalid metric name '{}'", name);
  for (const auto& family : families_) {
    if (family->name == name) {
      KVTIER_CHECK(family->type == type, "metric {} registered as {} and again as {}", name,
                   TypeName(family->type), TypeName(type));
      return family.get();
    }
  }
  auto family = std::make_unique<Family>();
  family->name = name;
  family->help = help;
  family->type = type;
  families_.push_back(std::move(family));
  return families_.back().get();
}

Counter* MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                     const MetricLabels& labels) {
  absl::MutexLock lock(&mu_);
  Family* family = GetFamily(name, help, kCounterType);
  CheckLabels(name, labels, /*is_histogram=*/false);
  if (Family::Child* existing = family->Find(labels)) return existing->counter.get();
  Family::Child child;
  child.labels = labels;
  child.counter = std::make_unique<Counter>();
  family->children.push_back(std::move(child));
  return family->children.back().counter.get();
}

Gauge* MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                 const MetricLabels& labels) {
  absl::MutexLock lock(&mu_);
  Family* family = GetFamily(name, help, kGaugeType);
  CheckLabels(name, labels, /*is_histogram=*/false);
  if (Family::Child* existing = family->Find(labels)) return existing->gauge.get();
  Family::Child child;
  child.labels = labels;
  child.gauge = std::make_unique<Gauge>();
  family->children.push_back(std::move(child));
  return family->children.back().gauge.get();
}

Histogram* MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                         std::vector<double> upper_bounds,
                                         const MetricLabels& labels) {
  absl::MutexLock lock(&mu_);
  Family* family = GetFamily(name, help, kHistogramType);
  CheckLabels(name, labels, /*is_histogram=*/true);
  if (Family::Child* existing = family->Find(labels)) {
    KVTIER_CHECK(existing->histogram_bounds == upper_bounds,
                 "histogram {} re-registered with different buckets", name);
    return existing->histogram.get();
  }
  Family::Child child;
  child.labels = labels;
  child.histogram_bounds = upper_bounds;
  child.histogram = std::make_unique<Histogram>(std::move(upper_bounds));
  family->children.push_back(std::move(child));
  return family->children.back().histogram.get();
}

std::string MetricsRegistry::RenderText() const {
  absl::ReaderMutexLock lock(&mu_);
  std::string out;
  for (const auto& family : families_) {
    const std::string& name = family->name;
    absl::StrAppend(&out, "# HELP ", name, " ", EscapeHelp(family->help), "\n");
    absl::StrAppend(&out, "# TYPE ", name, " ", TypeName(family->type), "\n");
    for (const Family::Child& child : family->children) {
      switch (family->type) {
        case kCounterType:
          out += name;
          AppendLabels(&out, child.labels);
          absl::StrAppend(&out, " ", FormatValue(child.counter->Value()), "\n");
          break;
        case kGaugeType:
          out += name;
          AppendLabels(&out, child.labels);
          absl::StrAppend(&out, " ", FormatValue(child.gauge->Value()), "\n");
          break;
        case kHistogramType: {
          const Histogram::Snapshot snap = child.histogram->Snap();
          for (size_t i = 0; i < snap.upper_bounds.size(); ++i) {
            absl::StrAppend(&out, name, "_bucket");
            AppendLabels(&out, child.labels, "le", FormatValue(snap.upper_bounds[i]));
            absl::StrAppend(&out, " ", snap.cumulative_counts[i], "\n");
          }
          absl::StrAppend(&out, name, "_sum");
          AppendLabels(&out, child.labels);
          absl::StrAppend(&out, " ", FormatValue(snap.sum), "\n");
          absl::StrAppend(&out, name, "_count");
          AppendLabels(&out, child.labels);
          absl::StrAppend(&out, " ", snap.count, "\n");
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace kvtier
