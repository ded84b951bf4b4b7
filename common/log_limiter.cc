#include "common/log_limiter.h"

namespace kvtier {

bool LogLimiter::Admit(uint64_t* left_out) {
  const absl::Time now = clock_();
  absl::MutexLock lock(&mu_);
  if (now < window_end_) {
    ++left_out_;
    return false;
  }
  *left_out = left_out_;
  left_out_ = 0;
  window_end_ = now + interval_;
  return true;
}

uint64_t LogLimiter::left_out() const {
  absl::MutexLock lock(&mu_);
  return left_out_;
}

}  // namespace kvtier
