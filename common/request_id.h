// Request ids for tracing (docs/observability.md, "Request tracing"): the id the router takes
// from a client's X-Request-Id header or makes, and that the worker calls carry and every log
// line about the request names (`req=ID`). An id that reaches a log line or a response header
// must not be able to forge either, so it is checked against one small alphabet.
//
// Plain functions; thread-safe.
#ifndef KVTIER_COMMON_REQUEST_ID_H_
#define KVTIER_COMMON_REQUEST_ID_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace kvtier {

// Most characters of a client's X-Request-Id.
inline constexpr size_t kMaxRequestIdChars = 64;

// Whether `id` is 1..max_chars characters of [A-Za-z0-9._:-].
bool IsValidRequestId(absl::string_view id, size_t max_chars = kMaxRequestIdChars);

}  // namespace kvtier

#endif  // KVTIER_COMMON_REQUEST_ID_H_
