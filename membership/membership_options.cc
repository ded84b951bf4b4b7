#include "membership/membership_options.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/host_port.h"

namespace kvtier::membership {

void DeclareMembershipOptions(MembershipOptions* o, OptionTable* t) {
  t->Add("membership.etcd", &o->etcd,
         "etcd endpoint http(s)://host:port to register with and watch (repeat for several; "
         "none: static addresses)");
  t->Add("membership.etcd_ca_file", &o->etcd_ca_file, "PEM CA that verifies https etcd endpoints");
  t->Add("membership.etcd_cert_file", &o->etcd_cert_file, "PEM client certificate for etcd");
  t->Add("membership.etcd_key_file", &o->etcd_key_file, "PEM private key of etcd_cert_file");
  t->Add("membership.prefix", &o->prefix, "the cluster's key prefix in etcd");
  t->Add("membership.ttl_ms", &o->ttl, "lease ttl: a dead member is gone this long after");
  t->Add("membership.advertise", &o->advertise,
         "host:port others reach this server at (port 0: the bound port; empty: listen)");
  t->Add("membership.id", &o->id, "member id (empty: the advertised host:port)");
  t->Finalize([o]() -> absl::Status {
    if (!o->enabled()) return absl::OkStatus();
    if (o->ttl < absl::Seconds(2)) {
      return absl::InvalidArgumentError("membership.ttl_ms (--membership-ttl-ms): must be >= 2000");
    }
    if (o->prefix.empty() || o->prefix[0] != '/' || o->prefix.back() == '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          "membership.prefix (--membership-prefix): want /name, got '", o->prefix, "'"));
    }
    return MakeEtcdClient(*o).status();
  });
}

absl::StatusOr<std::unique_ptr<EtcdClient>> MakeEtcdClient(const MembershipOptions& o) {
  return EtcdClient::Create({.endpoints = o.etcd,
                             .ca_file = o.etcd_ca_file,
                             .cert_file = o.etcd_cert_file,
                             .key_file = o.etcd_key_file});
}

absl::StatusOr<std::unique_ptr<Registration>> RegisterServer(const MembershipOptions& o,
                                                             const std::string& listen, int port,
                                                             int metrics_port, Member member,
                                                             Registration::Refresh refresh) {
  absl::StatusOr<HostPort> hp = ParseHostPort(o.advertise.empty() ? listen : o.advertise);
  if (!hp.ok()) return hp.status();
  if (o.advertise.empty() && (hp->host == "0.0.0.0" || hp->host == "::" || hp->host == "[::]")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "membership: listen address ", listen,
        " is a wildcard: give membership.advertise (--membership-advertise), the address "
        "others reach this server at"));
  }
  if (hp->port == 0 || o.advertise.empty()) hp->port = port;
  member.address = absl::StrCat(hp->host, ":", hp->port);
  member.id = o.id.empty() ? member.address : o.id;
  if (metrics_port > 0) member.metrics_address = absl::StrCat(hp->host, ":", metrics_port);
  absl::StatusOr<std::unique_ptr<EtcdClient>> etcd = MakeEtcdClient(o);
  if (!etcd.ok()) return etcd.status();
  return Registration::Start(*std::move(etcd), o.prefix, std::move(member), o.ttl,
                             std::move(refresh));
}

}  // namespace kvtier::membership
