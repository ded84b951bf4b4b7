// Which network devices the UCX data plane may use (UCX_NET_DEVICES): a configured interface or
// address, or else the interfaces through which this host reaches the control plane's hosts.
// UCX's TCP transport listens on every device it may use and has no authentication, so the
// data plane is kept to the interface the deployment chose (docs/store-protocol.md, "Data
// plane: interfaces and trust").
//
// Plain functions; thread-safe.
#ifndef KVTIER_TRANSPORT_NET_DEVICES_H_
#define KVTIER_TRANSPORT_NET_DEVICES_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvtier::transport {

// The configured value "every network device".
inline constexpr absl::string_view kAllNetDevices = "all";

// A UCX_NET_DEVICES value for `configured`:
// - "all": every device (returns "");
// - an interface name ("lo", "eth0"; or UCX's device syntax with a port, "mlx5_0:1", passed
//   as it is), which must exist on this host;
// - an IP address of one of this host's interfaces: that interface;
// - empty: the interfaces this host uses to reach `hosts` (names or addresses; the kernel's
//   route, so a loopback host gives the loopback interface). A wildcard host (0.0.0.0, ::)
//   gives every device.
// InvalidArgument, naming the value, when an interface, address or host is unknown.
absl::StatusOr<std::string> ResolveNetDevices(absl::string_view configured,
                                              absl::Span<const std::string> hosts);

}  // namespace kvtier::transport

#endif  // KVTIER_TRANSPORT_NET_DEVICES_H_
