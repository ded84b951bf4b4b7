#include "transport/net_devices.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace kvtier::transport {
namespace {

// The name of the interface holding address `a`; empty if none.
std::string InterfaceOf(const sockaddr_storage& a) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::unique_ptr<ifaddrs, void (*)(ifaddrs*)> owned(list, freeifaddrs);
  for (const ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != a.ss_family) continue;
    bool same = false;
    if (a.ss_family == AF_INET) {
      same = reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr ==
             reinterpret_cast<const sockaddr_in*>(&a)->sin_addr.s_addr;
    } else if (a.ss_family == AF_INET6) {
      same =
          std::memcmp(&reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr,
                      &reinterpret_cast<const sockaddr_in6*>(&a)->sin6_addr, sizeof(in6_addr)) == 0;
    }
    if (same) return i->ifa_name;
  }
  return "";
}

// The first address `host` resolves to (an IP literal without a lookup).
absl::StatusOr<sockaddr_storage> Resolve(absl::string_view host) {
  host = absl::StripSuffix(absl::StripPrefix(host, "["), "]");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  const std::string h(host);
  if (getaddrinfo(h.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("host '", host, "' does not resolve"));
  }
  sockaddr_storage a{};
  std::memcpy(&a, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return a;
}

bool IsWildcard(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(&a)->sin_addr.s_addr == htonl(INADDR_ANY);
  }
  return a.ss_family == AF_INET6 &&
         IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&a)->sin6_addr);
}

// The local address the kernel would send from to reach `to` (a UDP connect sends nothing).
absl::StatusOr<sockaddr_storage> SourceFor(sockaddr_storage to) {
  socklen_t len = sizeof(sockaddr_in);
  if (to.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&to)->sin_port = htons(9);
  } else {
    reinterpret_cast<sockaddr_in6*>(&to)->sin6_port = htons(9);
    len = sizeof(sockaddr_in6);
  }
  const int fd = socket(to.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_storage from{};
  socklen_t from_len = sizeof(from);
  const bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&to), len) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&from), &from_len) == 0;
  const int err = errno;
  close(fd);
  if (!ok) return absl::InvalidArgumentError(absl::StrCat("no route: ", std::strerror(err)));
  return from;
}

}  // namespace

absl::StatusOr<std::string> ResolveNetDevices(absl::string_view configured,
                                              absl::Span<const std::string> hosts) {
  if (configured == kAllNetDevices) return std::string();
  if (!configured.empty()) {
    sockaddr_storage a{};
    const std::string c(configured);
    if (inet_pton(AF_INET, c.c_str(), &reinterpret_cast<sockaddr_in*>(&a)->sin_addr) == 1) {
      a.ss_family = AF_INET;
    } else if (inet_pton(AF_INET6, c.c_str(), &reinterpret_cast<sockaddr_in6*>(&a)->sin6_addr) ==
               1) {
      a.ss_family = AF_INET6;
    }
    if (a.ss_family != 0) {
      std::string name = InterfaceOf(a);
      if (name.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("data_interface ", configured,
                                                       " is no address of this host's interfaces"));
      }
      return name;
    }
    // A UCX device with a port ("mlx5_0:1") is UCX's to check.
    if (configured.find(':') == absl::string_view::npos && if_nametoindex(c.c_str()) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("data_interface '", configured, "' is no network interface of this host"));
    }
    return c;
  }
  std::vector<std::string> names;
  for (const std::string& host : hosts) {
    absl::StatusOr<sockaddr_storage> to = Resolve(host);
    if (!to.ok()) return to.status();
    if (IsWildcard(*to)) return std::string();
    absl::StatusOr<sockaddr_storage> from = SourceFor(*to);
    std::string name = from.ok() ? InterfaceOf(*from) : "";
    if (name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("no interface of this host reaches '", host,
                       "' (set data_interface to an interface, an address or 'all')"));
    }
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  return absl::StrJoin(names, ",");
}

}  // namespace kvtier::transport
