// The membership options every kvtier server shares (docs/membership.md), declared once into a
// server's option table (common/options.h) under `membership.*` (flags --membership-...), and
// what a server makes of them: its Registration.
//
// Plain value types and free functions; thread-safe.
#ifndef KVTIER_MEMBERSHIP_MEMBERSHIP_OPTIONS_H_
#define KVTIER_MEMBERSHIP_MEMBERSHIP_OPTIONS_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/options.h"
#include "membership/membership.h"

namespace kvtier::membership {

struct MembershipOptions {
  // etcd client endpoints (http://host:port or https://host:port). Empty: no membership (static
  // address lists). Default: empty.
  std::vector<std::string> etcd;
  // https endpoints: CA, client certificate and key (etcd --client-cert-auth). Default: none.
  std::string etcd_ca_file;
  std::string etcd_cert_file;
  std::string etcd_key_file;
  // The cluster's key prefix in etcd. Default: /kvtier.
  std::string prefix = "/kvtier";
  // Lease ttl: a member that dies is gone this long after. Default: 10 s.
  absl::Duration ttl = absl::Seconds(10);
  // host:port others reach this server's gRPC at; a port of 0 takes the port it bound. Empty:
  // the listen address (which must not be a wildcard then). Default: empty.
  std::string advertise;
  // This member's id. Empty: the advertised host:port. Default: empty.
  std::string id;

  bool enabled() const { return !etcd.empty(); }
};

// Declares the fields above as membership.* in `t`.
void DeclareMembershipOptions(MembershipOptions* o, OptionTable* t);

// An etcd client for `o` (InvalidArgument for a bad endpoint).
absl::StatusOr<std::unique_ptr<EtcdClient>> MakeEtcdClient(const MembershipOptions& o);

// Registers a server whose gRPC `listen` address bound `port`: fills the member's address, id
// and metrics address from advertise / listen (InvalidArgument for a wildcard host without
// `advertise`), then Registration::Start. `refresh` (may be null) updates the member's load before
// each renewal. `metrics_port` > 0 fills metrics_address (the advertised host).
absl::StatusOr<std::unique_ptr<Registration>> RegisterServer(
    const MembershipOptions& o, const std::string& listen, int port, int metrics_port,
    Member member, Registration::Refresh refresh = nullptr);

}  // namespace kvtier::membership

#endif  // KVTIER_MEMBERSHIP_MEMBERSHIP_OPTIONS_H_
