#include "membership/etcd_process.h"

#include <httplib.h>

#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace kvtier::membership {

bool EtcdHealthy(const std::string& endpoint, absl::Duration timeout) {
  httplib::Client cli(endpoint);
  const int64_t us = absl::ToInt64Microseconds(timeout);
  cli.set_connection_timeout(0, us);
  cli.set_read_timeout(0, us);
  httplib::Result r = cli.Get("/health");
  return r && r->status == 200 && absl::StrContains(r->body, "\"health\":\"true\"");
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
  spawn.argv.insert(spawn.argv.end(),
                    {"etcd", "--name=kvtier", "--data-dir=" + o.dir + "/etcd-data",
                     "--listen-client-urls=" + client, "--advertise-client-urls=" + client,
                     "--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
                     "--initial-cluster=kvtier=" + peer, "--log-level=warn"});
  spawn.stdout_path = o.dir + "/etcd.log";
  spawn.stderr_path = "&1";
  spawn.append = true;
  absl::StatusOr<ChildProcess> child = ChildProcess::Spawn(spawn);
  if (absl::IsNotFound(child.status())) {
    return absl::NotFoundError(absl::StrCat(child.status().message(),
                                            " (etcd comes with Debian's etcd-server: "
                                            "deploy/install-deps.sh)"));
  }
  if (!child.ok()) return child.status();
  EtcdProcess p;
  p.process_ = *std::move(child);
  p.host_ = o.host;
  p.client_port_ = o.client_port;
  p.log_path_ = spawn.stdout_path;
  const bool up =
      WaitFor([&] { return !p.process_.Running() || EtcdHealthy(client, absl::Milliseconds(500)); },
              o.start_timeout);
  if (!p.process_.Running()) {
    return absl::FailedPreconditionError(
        absl::StrCat("etcd exited at start; its log:\n", FileTail(p.log_path_)));
  }
  if (!up) {
    return absl::DeadlineExceededError(absl::StrCat("etcd not healthy after ",
                                                    absl::FormatDuration(o.start_timeout),
                                                    "; its log:\n", FileTail(p.log_path_)));
  }
  return p;
}

std::string EtcdProcess::endpoint() const {
  return absl::StrCat("http://", host_, ":", client_port_);
}

}  // namespace kvtier::membership
