#include "deploy/netns.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/process.h"
#include "common/status_macros.h"

namespace kvtier::deploy {
namespace {

// Runs `argv` (stderr with stdout); the output on failure is in the error.
absl::StatusOr<std::string> Run(std::vector<std::string> argv) {
  SpawnOptions o;
  o.argv = std::move(argv);
  o.stderr_path = "&1";
  absl::StatusOr<CommandResult> r = RunCommand(o, absl::Seconds(20));
  if (!r.ok()) return r.status();
  if (!r->ok()) {
    return absl::InternalError(absl::StrCat(
        absl::StrJoin(o.argv, " "), ": ",
        r->timed_out ? "timed out" : DescribeWaitStatus(r->wait_status), ": ", r->output));
  }
  return r->output;
}

absl::Status RunAll(const std::vector<std::vector<std::string>>& commands) {
  for (const auto& argv : commands) {
    absl::StatusOr<std::string> r = Run(argv);
    if (!r.ok()) return r.status();
  }
  return absl::OkStatus();
}

bool ValidName(absl::string_view s, size_t max, bool dash) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (dash && c == '-'))) return false;
  }
  return true;
}

// The namespaces whose names start with `prefix`-.
std::vector<std::string> NamespacesOf(absl::string_view prefix) {
  std::vector<std::string> out;
  absl::StatusOr<std::string> ns = Run({"ip", "netns", "list"});
  if (!ns.ok()) return out;
  // "kvt-store0 (id: 3)"
  for (absl::string_view line : absl::StrSplit(*ns, '\n', absl::SkipEmpty())) {
    const std::string name(line.substr(0, line.find(' ')));
    if (absl::StartsWith(name, absl::StrCat(prefix, "-"))) out.push_back(name);
  }
  return out;
}

}  // namespace

absl::Status NetnsTopology::Available() {
  if (geteuid() != 0) return absl::FailedPreconditionError("network namespaces need root");
  for (const char* tool : {"ip", "tc"}) {
    absl::StatusOr<std::string> r = Run({tool, "-V"});
    if (!r.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("`", tool, "` (Debian's iproute2) is not usable: ", r.status().message()));
    }
  }
  return absl::OkStatus();
}

void NetnsTopology::RemoveLeftovers(absl::string_view prefix) {
  const std::string p(prefix);
  if (absl::StatusOr<std::string> links = Run({"ip", "-o", "link", "show"}); links.ok()) {
    // "12: kvtv0@if11: <...>": root-side veths of this prefix.
    for (absl::string_view line : absl::StrSplit(*links, '\n')) {
      std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(": ", 2));
      if (f.size() < 2) continue;
      const std::string name(f[1].substr(0, f[1].find('@')));
      if (absl::StartsWith(name, p + "v")) (void)Run({"ip", "link", "delete", name});
    }
  }
  for (const std::string& name : NamespacesOf(prefix)) (void)Run({"ip", "netns", "delete", name});
  (void)Run({"ip", "link", "delete", p + "br"});
}

absl::Status NetnsTopology::CheckUnused(absl::string_view prefix) {
  for (const std::string& name : NamespacesOf(prefix)) {
    absl::StatusOr<std::string> pids = Run({"ip", "netns", "pids", name});
    if (pids.ok() && !absl::StripAsciiWhitespace(*pids).empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("network namespace ", name, " runs processes (pids ",
                       absl::StrJoin(absl::StrSplit(absl::StripAsciiWhitespace(*pids), '\n'), " "),
                       "): another topology uses the prefix '", prefix, "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<NetnsTopology> NetnsTopology::Create(const std::vector<std::string>& hosts,
                                                    const NetnsOptions& options) {
  if (!ValidName(options.prefix, 8, false)) {
    return absl::InvalidArgumentError(
        absl::StrCat("netns prefix '", options.prefix, "': 1 to 8 of [a-z0-9]"));
  }
  std::vector<absl::string_view> octets = absl::StrSplit(options.subnet, '.');
  if (octets.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("netns subnet '", options.subnet, "': three octets, e.g. 10.213.0"));
  }
  if (hosts.empty() || hosts.size() > 200) {
    return absl::InvalidArgumentError("a netns topology has 1 to 200 hosts");
  }
  for (size_t i = 0; i < hosts.size(); ++i) {
    if (!ValidName(hosts[i], 20, true)) {
      return absl::InvalidArgumentError(
          absl::StrCat("netns host name '", hosts[i], "': 1 to 20 of [a-z0-9-]"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (hosts[i] == hosts[j]) {
        return absl::InvalidArgumentError(absl::StrCat("netns host '", hosts[i], "' twice"));
      }
    }
  }
  KVTIER_RETURN_IF_ERROR(Available());
  RemoveLeftovers(options.prefix);
  KVTIER_ASSIGN_OR_RETURN(NetnsTopology t, Attach(hosts, options));
  t.live_ = true;  // from here on, destruction removes what was made
  const std::string br = t.Bridge();
  absl::Status st = RunAll({{"ip", "link", "add", br, "type", "bridge"},
                            {"ip", "addr", "add", t.GatewayAddress() + "/24", "dev", br},
                            {"ip", "link", "set", br, "up"}});
  for (size_t i = 0; st.ok() && i < hosts.size(); ++i) {
    const std::string ns = t.Namespace(hosts[i]);
    const std::string veth = t.Veth(static_cast<int>(i));
    const std::string peer = veth + "p";
    st = RunAll({{"ip", "netns", "add", ns},
                 {"ip", "link", "add", veth, "type", "veth", "peer", "name", peer},
                 {"ip", "link", "set", peer, "netns", ns},
                 {"ip", "-n", ns, "link", "set", peer, "name", "eth0"},
                 {"ip", "-n", ns, "addr", "add", t.Address(hosts[i]) + "/24", "dev", "eth0"},
                 {"ip", "-n", ns, "link", "set", "eth0", "up"},
                 {"ip", "-n", ns, "link", "set", "lo", "up"},
                 {"ip", "link", "set", veth, "master", br},
                 {"ip", "link", "set", veth, "up"}});
  }
  if (!st.ok()) return st;  // t's destruction removes the partial topology
  return t;
}

absl::StatusOr<NetnsTopology> NetnsTopology::Attach(const std::vector<std::string>& hosts,
                                                    const NetnsOptions& options) {
  NetnsTopology t;
  KVTIER_ASSIGN_OR_RETURN(std::string which, Run({"sh", "-c", "command -v ip"}));
  t.ip_path_ = std::string(absl::StripAsciiWhitespace(which));
  t.prefix_ = options.prefix;
  t.subnet_ = options.subnet;
  t.hosts_ = hosts;
  return t;
}

NetnsTopology::NetnsTopology(NetnsTopology&& other) noexcept
    : ip_path_(std::move(other.ip_path_)),
      prefix_(std::move(other.prefix_)),
      subnet_(std::move(other.subnet_)),
      hosts_(std::move(other.hosts_)),
      live_(std::exchange(other.live_, false)) {}

NetnsTopology& NetnsTopology::operator=(NetnsTopology&& other) noexcept {
  if (this != &other) {
    (void)Destroy();
    ip_path_ = std::move(other.ip_path_);
    prefix_ = std::move(other.prefix_);
    subnet_ = std::move(other.subnet_);
    hosts_ = std::move(other.hosts_);
    live_ = std::exchange(other.live_, false);
  }
  return *this;
}

NetnsTopology::~NetnsTopology() { (void)Destroy(); }

int NetnsTopology::Index(absl::string_view host) const {
  for (size_t i = 0; i < hosts_.size(); ++i) {
    if (hosts_[i] == host) return static_cast<int>(i);
  }
  return -1;
}

std::string NetnsTopology::Address(absl::string_view host) const {
  const int i = Index(host);
  return i < 0 ? "" : absl::StrCat(subnet_, ".", i + 1);
}

std::string NetnsTopology::Namespace(absl::string_view host) const {
  return Index(host) < 0 ? "" : absl::StrCat(prefix_, "-", host);
}

std::vector<std::string> NetnsTopology::Wrap(absl::string_view host,
                                             const std::vector<std::string>& argv) const {
  std::vector<std::string> out = {ip_path_, "netns", "exec", Namespace(host)};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

absl::Status NetnsTopology::SetLinkUp(absl::string_view host, bool up) {
  const int i = Index(host);
  if (i < 0) return absl::NotFoundError(absl::StrCat("no netns host '", host, "'"));
  return Run({"ip", "link", "set", Veth(i), up ? "up" : "down"}).status();
}

absl::Status NetnsTopology::SetNetem(absl::string_view host, absl::Duration delay,
                                     double loss_percent) {
  const int i = Index(host);
  if (i < 0) return absl::NotFoundError(absl::StrCat("no netns host '", host, "'"));
  if (loss_percent < 0 || loss_percent > 100 || delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("netem: delay >= 0 and loss in [0, 100]");
  }
  const std::vector<std::string> netem = {
      "root",  "netem",
      "delay", absl::StrCat(absl::ToDoubleMicroseconds(delay), "us"),
      "loss",  absl::StrCat(loss_percent, "%")};
  std::vector<std::string> outer = {"tc", "qdisc", "replace", "dev", Veth(i)};
  std::vector<std::string> inner = {"tc", "-n", Namespace(host), "qdisc", "replace", "dev", "eth0"};
  outer.insert(outer.end(), netem.begin(), netem.end());
  inner.insert(inner.end(), netem.begin(), netem.end());
  absl::Status st = RunAll({outer, inner});
  if (!st.ok() && absl::StrContains(st.message(), "qdisc kind is unknown")) {
    return absl::FailedPreconditionError(
        "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM / the sch_netem module)");
  }
  return st;
}

absl::Status NetnsTopology::ClearNetem(absl::string_view host) {
  const int i = Index(host);
  if (i < 0) return absl::NotFoundError(absl::StrCat("no netns host '", host, "'"));
  // Deleting a root qdisc that was never added fails; either way none is left.
  (void)Run({"tc", "qdisc", "del", "dev", Veth(i), "root"});
  (void)Run({"tc", "-n", Namespace(host), "qdisc", "del", "dev", "eth0", "root"});
  return absl::OkStatus();
}

absl::Status NetnsTopology::Destroy() {
  if (!live_) return absl::OkStatus();
  live_ = false;
  absl::Status first;
  auto note = [&first](absl::Status st) {
    if (first.ok() && !st.ok() && !absl::StrContains(st.message(), "Cannot find device") &&
        !absl::StrContains(st.message(), "No such file")) {
      first = std::move(st);
    }
  };
  for (size_t i = 0; i < hosts_.size(); ++i) {
    note(Run({"ip", "link", "delete", Veth(static_cast<int>(i))}).status());
    note(Run({"ip", "netns", "delete", Namespace(hosts_[i])}).status());
  }
  note(Run({"ip", "link", "delete", Bridge()}).status());
  return first;
}

}  // namespace kvtier::deploy
