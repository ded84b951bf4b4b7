// host:port endpoints, as every kvtier flag and config key that names a listener or a peer
// writes them ("127.0.0.1:50051", "0.0.0.0:0"; port 0: any free port).
//
// Plain functions over value types; thread-safe.
#ifndef KVTIER_COMMON_HOST_PORT_H_
#define KVTIER_COMMON_HOST_PORT_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier {

struct HostPort {
  std::string host;
  int port = 0;
};

// Splits "host:port" at the last ':'. InvalidArgument when the host is empty or the port is not
// a number in [0, 65535].
absl::StatusOr<HostPort> ParseHostPort(absl::string_view text);

}  // namespace kvtier

#endif  // KVTIER_COMMON_HOST_PORT_H_
