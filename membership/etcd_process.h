// A one-member etcd (Debian's etcd-server) run as a child process: the membership store of a
// one-host cluster (`kvtier up`), of the network-namespace harness and of the tests
// (docs/membership.md). Its data lives in `dir`/etcd-data, its log in `dir`/etcd.log.
//
// Ownership: owns the child and stops it on destruction (SIGTERM, then SIGKILL), unless
// released. Thread-safety: one thread per object.
#ifndef KVTIER_MEMBERSHIP_ETCD_PROCESS_H_
#define KVTIER_MEMBERSHIP_ETCD_PROCESS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/process.h"

namespace kvtier::membership {

struct EtcdProcessOptions {
  // Directory for the data and the log; created if missing. Required.
  std::string dir;
  // Address the client and peer ports bind. Default: 127.0.0.1.
  std::string host = "127.0.0.1";
  // Client and peer ports; 0: free ports. Default: 0.
  int client_port = 0;
  int peer_port = 0;
  // Prepended to etcd's command line (e.g. {"ip", "netns", "exec", "ns1"}). Default: none.
  std::vector<std::string> launcher;
  // Bound on the start (until /health answers). Default: 20 s.
  absl::Duration start_timeout = absl::Seconds(20);
};

class EtcdProcess {
 public:
  // Starts etcd and waits until its /health says it is healthy. NotFound when no `etcd` binary
  // is in PATH (deploy/install-deps.sh installs etcd-server); the log's tail on a failed start.
  static absl::StatusOr<EtcdProcess> Start(EtcdProcessOptions options);

  // "http://host:port", the client endpoint.
  std::string endpoint() const;
  int client_port() const { return client_port_; }
  ChildProcess& process() { return process_; }
  const std::string& log_path() const { return log_path_; }

 private:
  ChildProcess process_;
  std::string host_;
  int client_port_ = 0;
  std::string log_path_;
};

// The command line of a one-member etcd named "kvtier": data in `data_dir`, clients at
// `client_url`, the peer port at `peer_url` (http://host:port each).
std::vector<std::string> EtcdCommand(const std::string& data_dir, const std::string& client_url,
                                     const std::string& peer_url);

// Spawns `spawn` (a launcher and EtcdCommand; its output appended to `log`) and waits up to
// `timeout` until etcd at `client_url` says it is healthy. NotFound when no `etcd` binary is in
// PATH, FailedPrecondition when it exits first, DeadlineExceeded when it is not healthy in time
// (the last two with the tail of the log). What EtcdProcess::Start runs, and `kvtier up` for the
// etcd it starts and restarts detached (deploy/cluster.h).
absl::StatusOr<ChildProcess> SpawnHealthyEtcd(SpawnOptions spawn, const std::string& log,
                                              const std::string& client_url,
                                              absl::Duration timeout);

// Whether etcd at `endpoint` (http://host:port) says it is healthy, asking once within
// `timeout`.
bool EtcdHealthy(const std::string& endpoint, absl::Duration timeout);

}  // namespace kvtier::membership

#endif  // KVTIER_MEMBERSHIP_ETCD_PROCESS_H_
