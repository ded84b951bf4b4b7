// LogLimiter: logging for a failure that may repeat thousands of times a second (a failing
// disk, a flood of bad requests). Per interval it writes the first occurrence and counts the
// rest; the next line written says how many were left out before it:
//
//   LogLimiter spill_failures_;  // a member, one per kind of failure
//   spill_failures_.Log(spdlog::level::warn, "spill of {} failed: {}", key, status);
//   -> "spill of ab.. failed: ... [412 more like this in the last 10s]"
//
// KVTIER_LOG_LIMITED (below) gives one call site a limiter of its own.
// Messages are formatted only when written. Thread-safety: Log may be called from any thread.
#ifndef KVTIER_COMMON_LOG_LIMITER_H_
#define KVTIER_COMMON_LOG_LIMITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace kvtier {

class LogLimiter {
 public:
  using Clock = std::function<absl::Time()>;

  explicit LogLimiter(absl::Duration interval = absl::Seconds(10), Clock clock = &absl::Now)
      : interval_(interval), clock_(std::move(clock)) {}

  template <typename... Args>
  void Log(spdlog::level::level_enum level, fmt::format_string<Args...> format, Args&&... args) {
    uint64_t left_out = 0;
    if (!Admit(&left_out)) return;
    std::string line = fmt::format(format, std::forward<Args>(args)...);
    if (left_out > 0) {
      line += fmt::format(" [{} more like this in the last {}]", left_out,
                          absl::FormatDuration(interval_));
    }
    spdlog::log(level, "{}", line);
  }

  // Occurrences counted but not written so far in the current interval.
  uint64_t left_out() const;

 private:
  // True when this occurrence is written; then *left_out is the count of the previous interval.
  bool Admit(uint64_t* left_out);

  const absl::Duration interval_;
  const Clock clock_;
  mutable absl::Mutex mu_;
  absl::Time window_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t left_out_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier

// KVTIER_LOG_LIMITED(warn, "format", args...): like spdlog::warn(...), through a LogLimiter of
// this call site's own (default interval), for a failure that may repeat at a high rate. The
// first argument names a spdlog::level (trace, debug, info, warn, err, critical).
#define KVTIER_LOG_LIMITED(severity, ...)                            \
  do {                                                               \
    static ::kvtier::LogLimiter kvtier_log_limiter_;                 \
    kvtier_log_limiter_.Log(::spdlog::level::severity, __VA_ARGS__); \
  } while (0)

#endif  // KVTIER_COMMON_LOG_LIMITER_H_
