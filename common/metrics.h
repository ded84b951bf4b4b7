// A small Prometheus metrics registry: counters, gauges and histograms, rendered in the text
// exposition format 0.0.4. Hand-written because Debian packages no Prometheus C++ client.
//
// MetricsRegistry owns every metric it creates; the returned pointers stay valid for the
// registry's lifetime. All classes are safe for concurrent use without external
// synchronization: updates are lock-free atomics, creation and rendering take a mutex.
#ifndef KVTIER_COMMON_METRICS_H_
#define KVTIER_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace kvtier {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// Monotonic counter.
class Counter {
 public:
  void Increment(double v = 1.0);
  double Value() const;

 private:
  std::atomic<double> value_{0.0};
};

// Value that goes up and down.
class Gauge {
 public:
  void Set(double v);
  void Add(double v);
  double Value() const;

 private:
  std::atomic<double> value_{0.0};
};

// Cumulative histogram with fixed upper bounds (an implicit +Inf bucket is added).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double v);

  // Snapshot for rendering and tests: cumulative counts per bound (+Inf last), sum, count.
  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> cumulative_counts;
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Snap() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 (non-cumulative)
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

// Prometheus names: a metric [a-zA-Z_:][a-zA-Z0-9_:]*, a label [a-zA-Z_][a-zA-Z0-9_]* (the
// registry also refuses labels starting with "__", reserved by Prometheus).
bool IsValidMetricName(absl::string_view name);
bool IsValidLabelName(absl::string_view name);

// Default latency buckets in seconds: 10 us .. 10 s.
std::vector<double> LatencyBucketsSeconds();

class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Creates a metric in family `name` (one HELP/TYPE line per family; every metric of a family
  // must have the same type). Registering the same name and labels twice returns the same
  // object. Names must match [a-zA-Z_:][a-zA-Z0-9_:]*; label values are escaped.
  Counter* AddCounter(const std::string& name, const std::string& help,
                      const MetricLabels& labels = {});
  Gauge* AddGauge(const std::string& name, const std::string& help,
                  const MetricLabels& labels = {});
  Histogram* AddHistogram(const std::string& name, const std::string& help,
                          std::vector<double> upper_bounds, const MetricLabels& labels = {});

  // The whole registry in Prometheus text format 0.0.4.
  std::string RenderText() const;

 private:
  struct Family;
  Family* GetFamily(const std::string& name, const std::string& help, int type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Family>> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier

#endif  // KVTIER_COMMON_METRICS_H_
