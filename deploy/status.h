// `kvtier status`: one screen about a running local cluster (docs/observability.md, "kvtier
// status"): every process of the state file (deploy/cluster.h), whether it is up, its load,
// cache hit rate, store pool or KV-page use and spill use, from its Prometheus /metrics parsed
// with common/metrics_text.h. The store and the workers serve /metrics in plain HTTP on
// loopback; the router on its HTTPS API port with the cluster's CA and API key.
//
// Every scrape is bounded (connect, read, size), so a hung or dead process shows as down and
// never hangs the screen. RenderStatus is a pure function of the scrapes, for unit tests.
// Plain functions; ScrapeCluster runs the scrapes on threads of its own and returns when all
// are done; the rest is single-threaded.
#ifndef KVTIER_DEPLOY_STATUS_H_
#define KVTIER_DEPLOY_STATUS_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics_text.h"
#include "deploy/cluster.h"

namespace kvtier::deploy {

// Where a /metrics page is.
struct MetricsTarget {
  std::string host = "127.0.0.1";
  int port = 0;
  // HTTPS verified with this PEM CA (the router); empty: plain HTTP.
  std::string ca_file;
  // Sent as "Authorization: Bearer API_KEY"; empty: none.
  std::string api_key;
};

// GET /metrics of `target`, parsed. Connect and read are each bounded by `timeout`, the body by
// kMaxMetricsTextBytes. Unavailable naming the port when it does not answer or answers non-200.
absl::StatusOr<ParsedMetrics> ScrapeMetrics(const MetricsTarget& target, absl::Duration timeout);

// The target of a cluster process: the router's over HTTPS with the cluster's credentials.
MetricsTarget TargetOf(const ClusterProcess& p, const ClusterCredentials& creds,
                       const std::string& api_key);

// One process as `kvtier status` sees it.
struct ProcessScrape {
  ClusterProcess process;
  bool running = false;                   // its pid runs one of our binaries
  absl::StatusOr<ParsedMetrics> metrics;  // what its /metrics said, or why there is nothing
};

// Scrapes every process of `state` at once (each bounded by `timeout`); a process that does
// not run is not asked. The API key is read from the run directory.
std::vector<ProcessScrape> ScrapeCluster(const ClusterState& state, absl::Duration timeout);

// The screen: a heading line, then one row per process (NAME PID UP LOAD HIT% POOL/KV SPILL
// NOTE; docs/observability.md shows it).
std::string RenderStatus(const ClusterState& state, const std::vector<ProcessScrape>& scrapes);

struct StatusOptions {
  // The cluster's run directory. Default: .kvtier-run.
  std::string run_dir = ".kvtier-run";
  // Redraw every this many seconds until interrupted; 0: print once. Default: 0.
  double watch_s = 0;
  // Bound on each scrape. Default: 2 s.
  double timeout_s = 2;
};

// `kvtier status`: prints the screen to `out` (with --watch, again and again after clearing the
// terminal). Returns the exit code: 0 when a screen was printed, 1 when there is no cluster
// state in the run directory (the error goes to `err`).
int RunStatus(const StatusOptions& options, std::ostream& out, std::ostream& err);

}  // namespace kvtier::deploy

#endif  // KVTIER_DEPLOY_STATUS_H_
