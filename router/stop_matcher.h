// Stop sequences (OpenAI "stop"): detects them in text that arrives piece by piece (one piece
// per decoded token), across piece boundaries, and holds back text that may be the start of a
// stop sequence so that the client never sees any part of one.
//
// One per output stream; not thread-safe.
#ifndef KVTIER_ROUTER_STOP_MATCHER_H_
#define KVTIER_ROUTER_STOP_MATCHER_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace kvtier::router {

class StopMatcher {
 public:
  // `stops`: the stop sequences (empty strings are ignored).
  explicit StopMatcher(std::vector<std::string> stops);

  // Adds `text` and returns what can be sent now. Once a stop sequence is complete, returns
  // the text before it, stopped() becomes true and later calls return "".
  std::string Push(absl::string_view text);
  // Ends the stream: returns the held-back text ("" after a stop).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // held back: a suffix that is a proper prefix of some stop sequence
  bool stopped_ = false;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_STOP_MATCHER_H_
