#include "membership/etcd_process.h"

#include <httplib.h>

#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvtier::membership {

bool EtcdHealthy(const std::string& endpoint, absl::Duration timeout) {
  httplib::Client cli(endpoint);
  const int64_t us = absl::ToInt64Microseconds(timeout);
  cli.set_connection_timeout(0, us);
  cli.set_read_timeout(0, us);
  httplib::Result r = cli.Get("/health");
  return r && r->status == 200 && absl::StrContains(r->body, "\"health\":\"true\"");
}

std::vector<std::string> EtcdCommand(const std::string& data_dir, const std::string& client_url,
                                     const std::string& peer_url) {
  return {"etcd",
          "--name=kvtier",
          "--data-dir=" + data_dir,
          "--listen-client-urls=" + client_url,
          "--advertise-client-urls=" + client_url,
          "--listen-peer-urls=" + peer_url,
          "--initial-advertise-peer-urls=" + peer_url,
          "--initial-cluster=kvtier=" + peer_url,
          "--log-level=warn"};
}

absl::StatusOr<ChildProcess> SpawnHealthyEtcd(SpawnOptions spawn, const std::string& log,
                                              const std::string& client_url,
                                              absl::Duration timeout) {
  spawn.stdout_path = log;
  spawn.stderr_path = "&1";
  spawn.append = true;
  absl::StatusOr<ChildProcess> child = ChildProcess::Spawn(spawn);
  if (absl::IsNotFound(child.status())) {
    return absl::NotFoundError(absl::StrCat(child.status().message(),
                                            " (etcd comes with Debian's etcd-server: "
                                            "deploy/install-deps.sh)"));
  }
  if (!child.ok()) return child.status();
  const bool up =
      WaitFor([&] { return !child->Running() || EtcdHealthy(client_url, absl::Milliseconds(500)); },
              timeout);
  if (!child->Running()) {
    return absl::FailedPreconditionError(
        absl::StrCat("etcd exited at start; its log:\n", FileTail(log)));
  }
  if (!up) {
    return absl::DeadlineExceededError(absl::StrCat("etcd at ", client_url, " not healthy after ",
                                                    absl::FormatDuration(timeout), "; its log:\n",
                                                    FileTail(log)));
  }
  return child;
}

absl::StatusOr<EtcdProcess> EtcdProcess::Start(EtcdProcessOptions o) {
  if (o.dir.empty()) return absl::InvalidArgumentError("etcd: no directory");
  std::error_code ec;
  std::filesystem::create_directories(o.dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("etcd: mkdir ", o.dir, ": ", ec.message()));
  for (int* port : {&o.client_port, &o.peer_port}) {
    if (*port != 0) continue;
    absl::StatusOr<int> p = FreeTcpPort();
    if (!p.ok()) return p.status();
    *port = *p;
  }
  const std::string client = absl::StrCat("http://", o.host, ":", o.client_port);
  const std::string peer = absl::StrCat("http://", o.host, ":", o.peer_port);
  SpawnOptions spawn;
  spawn.argv = o.launcher;
  for (std::string& a : EtcdCommand(o.dir + "/etcd-data", client, peer)) {
    spawn.argv.push_back(std::move(a));
  }
  EtcdProcess p;
  p.log_path_ = o.dir + "/etcd.log";
  KVTIER_ASSIGN_OR_RETURN(p.process_,
                          SpawnHealthyEtcd(std::move(spawn), p.log_path_, client, o.start_timeout));
  p.host_ = o.host;
  p.client_port_ = o.client_port;
  return p;
}

std::string EtcdProcess::endpoint() const {
  return absl::StrCat("http://", host_, ":", client_port_);
}

}  // namespace kvtier::membership
