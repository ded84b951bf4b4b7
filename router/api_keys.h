// The router's API keys (docs/security.md): a table API key → tenant, read once at start-up
// from a text file of "KEY TENANT" lines (blank lines and '#' comments allowed). Only the
// SHA-256 of each key is kept in memory; a request names its key in "Authorization: Bearer
// KEY". Several keys may name one tenant (they share its cache namespace).
//
// Immutable after Load; thread-safe for lookups.
#ifndef KVTIER_ROUTER_API_KEYS_H_
#define KVTIER_ROUTER_API_KEYS_H_

#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::router {

class ApiKeys {
 public:
  // Shortest accepted key, and the longest file read.
  static constexpr size_t kMinKeyBytes = 16;
  static constexpr size_t kMaxFileBytes = 16 << 20;

  // The table of the file at `path`. NotFound when it cannot be read; InvalidArgument naming
  // the file and line for a line that is not "KEY TENANT", a key shorter than kMinKeyBytes, a
  // tenant of other characters than [A-Za-z0-9_.-], a key listed twice, or no key at all.
  static absl::StatusOr<ApiKeys> Load(const std::string& path);
  // The same over `text`; `source` names it in errors.
  static absl::StatusOr<ApiKeys> Parse(absl::string_view text, absl::string_view source);

  // The tenant of an Authorization header value ("Bearer KEY"), or nullopt when it names no
  // key of the table.
  std::optional<std::string> Tenant(absl::string_view authorization) const;
  size_t size() const { return tenants_.size(); }

 private:
  absl::flat_hash_map<std::string, std::string> tenants_;  // SHA-256 of the key → tenant
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_API_KEYS_H_
