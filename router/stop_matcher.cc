#include "router/stop_matcher.h"

#include <utility>

namespace kvtier::router {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

std::string StopMatcher::Push(absl::string_view text) {
  if (stopped_) return "";
  pending_.append(text.data(), text.size());
  if (stops_.empty()) return std::move(pending_);
  // The earliest complete stop sequence wins. Everything before pending_ was checked already
  // (a stop sequence cannot start there: such a start would have been held back).
  size_t first = std::string::npos;
  for (const std::string& s : stops_) {
    first = std::min(first, pending_.find(s));
  }
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of a stop sequence.
  size_t keep_from = pending_.size();
  for (const std::string& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > 0; --len) {
      if (pending_.size() - len >= keep_from) break;  // not longer than what is kept already
      if (absl::string_view(pending_).substr(pending_.size() - len) ==
          absl::string_view(s).substr(0, len)) {
        keep_from = pending_.size() - len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, keep_from);
  pending_.erase(0, keep_from);
  return out;
}

std::string StopMatcher::Flush() {
  if (stopped_) return "";
  return std::exchange(pending_, std::string());
}

}  // namespace kvtier::router
