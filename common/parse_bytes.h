// Human-readable byte sizes for configs and flags.
#ifndef KVTIER_COMMON_PARSE_BYTES_H_
#define KVTIER_COMMON_PARSE_BYTES_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier {

// Parses "123", "64KiB", "2MiB", "1.5GiB", "4G", "512M" (binary units; case-insensitive) into
// bytes. InvalidArgument for anything else.
absl::StatusOr<uint64_t> ParseBytes(absl::string_view text);

// The largest binary unit that divides `bytes` exactly: "256MiB", "64KiB", "1000" (ParseBytes
// reads it back).
std::string FormatBytes(uint64_t bytes);

}  // namespace kvtier

#endif  // KVTIER_COMMON_PARSE_BYTES_H_
