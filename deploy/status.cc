#include "deploy/status.h"

#include <httplib.h>

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/tls.h"

namespace kvtier::deploy {
namespace {

constexpr char kNone[] = "-";

// 100 * num / den with one decimal, or "-" when there is nothing to divide.
std::string Percent(double num, double den) {
  return den > 0 ? absl::StrFormat("%.1f", 100.0 * num / den) : kNone;
}

// "3.1 MiB" (binary units, one decimal).
std::string Bytes(double b) {
  for (const auto& [unit, scale] :
       {std::pair{"GiB", double(1ull << 30)}, std::pair{"MiB", double(1ull << 20)},
        std::pair{"KiB", double(1ull << 10)}}) {
    if (b >= scale) return absl::StrFormat("%.1f %s", b / scale, unit);
  }
  return absl::StrFormat("%.0f B", b);
}

// "3.1 MiB/1.0 GiB", or "-" without a total.
std::string BytesOf(double used, double total) {
  return total > 0 ? absl::StrCat(Bytes(used), "/", Bytes(total)) : kNone;
}

// The columns of one row.
struct Row {
  std::string name, pid, up, load, hit, pool, spill, note;
};

void StoreRow(const ParsedMetrics& m, Row* r) {
  r->load = absl::StrCat("leases ", m.Sum("kvtier_store_active_leases"));
  const double hits = m.Sum("kvtier_store_hit_blocks_total");
  r->hit = Percent(hits, hits + m.Sum("kvtier_store_miss_blocks_total"));
  r->pool = BytesOf(m.Sum("kvtier_store_pool_bytes_used"), m.Sum("kvtier_store_pool_bytes"));
  const double capacity = m.Sum("kvtier_store_spill_capacity_bytes");
  std::vector<std::string> notes;
  if (capacity > 0) {
    r->spill = BytesOf(m.Sum("kvtier_store_spill_bytes"), capacity);
    notes.push_back(m.Sum("kvtier_store_spill_online") > 0 ? "spill online" : "spill OFFLINE");
  } else {
    r->spill = "off";
  }
  if (const double n = m.Sum("kvtier_store_checksum_failures_total"); n > 0) {
    notes.push_back(absl::StrCat(n, " checksum failures"));
  }
  r->note = absl::StrJoin(notes, ", ");
}

void WorkerRow(const ParsedMetrics& m, Row* r) {
  r->load = absl::StrCat("running ", m.Sum("kvtier_worker_num_requests_running"), " wait ",
                         m.Sum("kvtier_worker_num_requests_waiting"));
  constexpr char kPrompt[] = "kvtier_worker_prompt_tokens_total";
  r->hit =
      Percent(m.Sum(kPrompt, {{"source", "first_tier"}}) + m.Sum(kPrompt, {{"source", "store"}}),
              m.Sum(kPrompt));
  r->pool = absl::StrFormat("kv %.0f%%", 100 * m.Sum("kvtier_worker_kv_cache_usage_perc"));
  r->spill = kNone;
  std::vector<std::string> notes;
  if (m.Has("kvtier_worker_store_connected") && m.Sum("kvtier_worker_store_connected") == 0) {
    notes.push_back("store unreachable");
  }
  if (const double n = m.Sum("kvtier_worker_recompute_fallbacks_total"); n > 0) {
    notes.push_back(absl::StrCat(n, " fallbacks to recompute"));
  }
  if (const double n = m.Sum("kvtier_worker_checksum_failures_total"); n > 0) {
    notes.push_back(absl::StrCat(n, " checksum failures"));
  }
  r->note = absl::StrJoin(notes, ", ");
}

void RouterRow(const ParsedMetrics& m, Row* r) {
  r->load = absl::StrCat("in flight ", m.Sum("kvtier_router_worker_in_flight"));
  r->hit = Percent(m.Sum("kvtier_router_cached_tokens_total"),
                   m.Sum("kvtier_router_prompt_tokens_total"));
  r->pool = kNone;
  r->spill = kNone;
  int workers = 0;
  for (const MetricSample& s : m.samples) workers += s.name == "kvtier_router_worker_up";
  r->note = absl::StrCat(m.Sum("kvtier_router_worker_up"), "/", workers, " workers up");
}

void EtcdRow(const ParsedMetrics& m, Row* r) {
  r->load = r->hit = r->pool = r->spill = kNone;
  r->note = m.Sum("etcd_server_has_leader") > 0 ? "leader" : "NO LEADER";
}

Row MakeRow(const ProcessScrape& s) {
  Row r;
  r.name = s.process.name;
  r.pid = absl::StrCat(s.process.pid);
  r.load = r.hit = r.pool = r.spill = kNone;
  if (!s.running) {
    r.up = "no";
    r.note = "not running";
    return r;
  }
  if (!s.metrics.ok()) {
    r.up = "no";
    std::string why(s.metrics.status().message());
    r.note = why.substr(0, why.find('\n'));
    return r;
  }
  r.up = "yes";
  const std::string& n = s.process.name;
  if (absl::StartsWith(n, "store")) {
    StoreRow(*s.metrics, &r);
  } else if (n == "etcd") {
    EtcdRow(*s.metrics, &r);
  } else if (n == "router") {
    RouterRow(*s.metrics, &r);
  } else {
    WorkerRow(*s.metrics, &r);
  }
  return r;
}

}  // namespace

absl::StatusOr<ParsedMetrics> ScrapeMetrics(const MetricsTarget& t, absl::Duration timeout) {
  const bool https = !t.ca_file.empty();
  const std::string where = absl::StrCat(https ? "https" : "http", "://", t.host, ":", t.port);
  httplib::Client cli(where);
  if (https) {
    cli.set_ca_cert_path(t.ca_file);
    cli.enable_server_certificate_verification(true);
  }
  if (!t.api_key.empty()) cli.set_bearer_token_auth(t.api_key);
  cli.set_connection_timeout(absl::ToChronoMicroseconds(timeout));
  cli.set_read_timeout(absl::ToChronoMicroseconds(timeout));
  cli.set_write_timeout(absl::ToChronoMicroseconds(timeout));
  // Bounded as a whole too: a server that drips bytes slower than the read timeout ends here.
  const absl::Time deadline = absl::Now() + 2 * timeout;
  std::string body;
  bool too_big = false, too_slow = false;
  httplib::Result r = cli.Get("/metrics", [&](const char* data, size_t n) {
    too_big = body.size() + n > kMaxMetricsTextBytes;
    too_slow = absl::Now() > deadline;
    if (too_big || too_slow) return false;
    body.append(data, n);
    return true;
  });
  if (too_big) {
    return absl::ResourceExhaustedError(
        absl::StrCat(where, "/metrics: over ", kMaxMetricsTextBytes, " bytes"));
  }
  if (too_slow) return absl::DeadlineExceededError(where + "/metrics: too slow");
  if (!r) {
    // httplib's names are terse ("Read", "Connection"): say what they mean here.
    const httplib::Error e = r.error();
    const bool silent = e == httplib::Error::Read || e == httplib::Error::ConnectionTimeout;
    return absl::UnavailableError(absl::StrCat(
        where, "/metrics: ",
        silent ? absl::StrFormat("no answer within %.1f s", absl::ToDoubleSeconds(timeout))
        : e == httplib::Error::Connection ? std::string("cannot connect")
                                          : httplib::to_string(e)));
  }
  if (r->status != 200) {
    return absl::UnavailableError(absl::StrCat(where, "/metrics: HTTP ", r->status));
  }
  absl::StatusOr<ParsedMetrics> m = ParseMetricsText(body);
  if (!m.ok()) return absl::DataLossError(absl::StrCat(where, "/metrics: ", m.status().message()));
  return m;
}

MetricsTarget TargetOf(const ClusterProcess& p, const ClusterCredentials& creds,
                       const std::string& api_key) {
  MetricsTarget t;
  t.host = p.host;
  t.port = p.metrics_port;
  if (p.name == "router") {
    t.ca_file = creds.pki.ca_file;
    t.api_key = api_key;
  }
  return t;
}

std::vector<ProcessScrape> ScrapeCluster(const ClusterState& state, absl::Duration timeout) {
  const ClusterCredentials creds = CredentialsOf(state.run_dir);
  absl::StatusOr<std::string> key = ReadSecretFile(creds.api_key_file);
  std::vector<ProcessScrape> out(state.processes.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < state.processes.size(); ++i) {
    ProcessScrape& s = out[i];
    s.process = state.processes[i];
    s.running = ClusterProcessRunning(s.process);
    if (!s.running) {
      s.metrics = absl::UnavailableError("not running");
    } else if (s.process.metrics_port == 0) {
      s.metrics = absl::NotFoundError("no metrics port in the state file");
    } else if (s.process.name == "router" && !key.ok()) {
      s.metrics = key.status();
    } else {
      const MetricsTarget target = TargetOf(s.process, creds, key.ok() ? *key : "");
      threads.emplace_back([&s, target, timeout] { s.metrics = ScrapeMetrics(target, timeout); });
    }
  }
  for (std::thread& t : threads) t.join();
  return out;
}

std::string RenderStatus(const ClusterState& state, const std::vector<ProcessScrape>& scrapes) {
  std::vector<Row> rows = {{"NAME", "PID", "UP", "LOAD", "HIT%", "POOL/KV", "SPILL", "NOTE"}};
  int up = 0;
  for (const ProcessScrape& s : scrapes) {
    rows.push_back(MakeRow(s));
    up += rows.back().up == "yes";
  }
  std::string out =
      absl::StrFormat("cluster %s: %s, model %s (%s), %d/%d processes up\n", state.run_dir,
                      state.endpoint, state.model_name, state.backend, up, scrapes.size());
  constexpr int kColumns = 8;
  auto cell = [](const Row& r, int c) -> const std::string& {
    const std::string* cells[kColumns] = {&r.name, &r.pid,  &r.up,    &r.load,
                                          &r.hit,  &r.pool, &r.spill, &r.note};
    return *cells[c];
  };
  size_t width[kColumns] = {};
  for (const Row& r : rows) {
    for (int c = 0; c < kColumns; ++c) width[c] = std::max(width[c], cell(r, c).size());
  }
  for (const Row& r : rows) {
    std::string line;
    for (int c = 0; c < kColumns; ++c) {
      absl::StrAppend(&line, cell(r, c));
      if (c + 1 < kColumns) line.append(width[c] - cell(r, c).size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

int RunStatus(const StatusOptions& o, std::ostream& out, std::ostream& err) {
  const absl::Duration timeout = absl::Seconds(o.timeout_s);
  for (;;) {
    absl::StatusOr<std::optional<ClusterState>> state = ReadClusterState(o.run_dir);
    if (!state.ok() || !state->has_value()) {
      err << "kvtier status: "
          << (state.ok() ? "no cluster state in " + o.run_dir + " (is a cluster running?)"
                         : state.status().ToString())
          << "\n";
      return 1;
    }
    const std::string screen = RenderStatus(**state, ScrapeCluster(**state, timeout));
    if (o.watch_s <= 0) {
      out << screen << std::flush;
      return 0;
    }
    // Home and clear, then the screen and the time it was taken.
    out << "\033[H\033[2J" << screen
        << absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()) << ", every "
        << o.watch_s << " s (Ctrl-C ends)\n"
        << std::flush;
    absl::SleepFor(absl::Seconds(o.watch_s));
  }
}

}  // namespace kvtier::deploy
