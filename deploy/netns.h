// Hosts as network namespaces on one machine (docs/testing.md, "Hosts as network namespaces"):
// one Linux bridge in the root namespace and one network namespace per host, each joined to the
// bridge by a veth pair and given one address of a /24 subnet (the bridge holds .254, so the
// root namespace reaches every host). Processes run "on" a host through `ip netns exec`
// (Wrap); faults are a link set down or a netem qdisc on the host's link. Built with iproute2's
// `ip` and `tc` (Debian's iproute2); needs CAP_NET_ADMIN (root).
//
// Names: the bridge is `<prefix>br`, host i's namespace `<prefix>-<host>` and its root-side
// veth `<prefix>v<i>` (the namespace side is renamed eth0). Interface names must fit in 15
// bytes, so the prefix is at most 8 characters; topologies that exist at once need distinct
// prefixes and subnets.
//
// Ownership: a NetnsTopology owns its bridge, namespaces and veths and deletes them on
// destruction (processes still running in a namespace keep it alive, unnamed, until they exit:
// stop them first). Create first removes whatever an earlier run with the same prefix left.
// Thread-safety: one thread per object.
#ifndef KVTIER_DEPLOY_NETNS_H_
#define KVTIER_DEPLOY_NETNS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvtier::deploy {

struct NetnsOptions {
  // Prefix of every name (at most 8 of [a-z0-9]). Default: kvt.
  std::string prefix = "kvt";
  // The first three octets of the hosts' /24: host i gets <subnet>.<i + 1>, the bridge .254.
  // Default: 10.213.0.
  std::string subnet = "10.213.0";
};

class NetnsTopology {
 public:
  // Whether topologies can be made here: root, and `ip` and `tc` on the PATH. The reason when
  // not (for a test's skip message).
  static absl::Status Available();

  // The bridge and one namespace per name in `hosts` (1 to 200 names of [a-z0-9-], at most 20
  // characters each), links up, loopback up in each namespace.
  static absl::StatusOr<NetnsTopology> Create(const std::vector<std::string>& hosts,
                                              const NetnsOptions& options = {});
  // The topology that Create made with `hosts` and `options` in another process (`kvtier up`),
  // to run processes on its hosts and inject faults; not owned: destruction deletes nothing.
  static absl::StatusOr<NetnsTopology> Attach(const std::vector<std::string>& hosts,
                                              const NetnsOptions& options = {});
  // FailedPrecondition (naming the namespace and its pids) when a namespace of `prefix` runs
  // processes: another live topology (a running `kvtier up` cluster) that Create would delete.
  static absl::Status CheckUnused(absl::string_view prefix);
  // Deletes whatever a topology with `prefix` left (veths, namespaces, bridge).
  static void RemoveLeftovers(absl::string_view prefix);

  NetnsTopology(NetnsTopology&& other) noexcept;
  NetnsTopology& operator=(NetnsTopology&& other) noexcept;
  ~NetnsTopology();  // Destroy()

  const std::vector<std::string>& hosts() const { return hosts_; }
  // The host's address; "" for an unknown host.
  std::string Address(absl::string_view host) const;
  // The bridge's address, by which the hosts reach the root namespace.
  std::string GatewayAddress() const { return subnet_ + ".254"; }
  // The host's namespace name; "" for an unknown host.
  std::string Namespace(absl::string_view host) const;
  // `argv` run in the host's namespace: {"/usr/sbin/ip", "netns", "exec", <namespace>,
  // argv...} (`ip`'s path from the PATH). argv[0] must be a path or a name on the PATH; the
  // process's pid is the command's own (ip execs it).
  std::vector<std::string> Wrap(absl::string_view host, const std::vector<std::string>& argv) const;

  // Cuts (up = false) or restores the host's link to the bridge.
  absl::Status SetLinkUp(absl::string_view host, bool up);
  // Adds `delay` and `loss_percent` (0-100) to every packet in both directions of the host's
  // link (tc netem on both ends of its veth), replacing earlier settings; ClearNetem removes
  // them. FailedPrecondition when the kernel has no netem qdisc.
  absl::Status SetNetem(absl::string_view host, absl::Duration delay, double loss_percent);
  absl::Status ClearNetem(absl::string_view host);

  // Deletes the veths, namespaces and bridge. Idempotent; the first error is returned after
  // trying everything.
  absl::Status Destroy();
  // Lets the topology go: destruction no longer deletes it (`kvtier up`, whose processes
  // outlive it; `kvtier down` deletes it with RemoveLeftovers).
  void Release() { live_ = false; }

 private:
  NetnsTopology() = default;
  int Index(absl::string_view host) const;  // -1 for an unknown host
  std::string Veth(int i) const { return prefix_ + "v" + std::to_string(i); }
  std::string Bridge() const { return prefix_ + "br"; }

  std::string ip_path_;  // `ip`'s absolute path (ServerProcess::Spawn needs a path)
  std::string prefix_;
  std::string subnet_;
  std::vector<std::string> hosts_;
  bool live_ = false;
};

}  // namespace kvtier::deploy

#endif  // KVTIER_DEPLOY_NETNS_H_
