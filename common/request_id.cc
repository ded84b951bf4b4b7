#include "common/request_id.h"

#include "absl/strings/ascii.h"

namespace kvtier {

bool IsValidRequestId(absl::string_view id, size_t max_chars) {
  if (id.empty() || id.size() > max_chars) return false;
  for (const char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace kvtier
