// `kvtier status`: the screen from parsed metrics (every kind of process, up, down, failing),
// and bounded scrapes of a real metrics endpoint, a silent one and a closed port. The command
// against a running cluster is tests/observability_test.cc's.
#include "deploy/status.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/time/clock.h"
#include "common/metrics.h"
#include "common/metrics_http.h"
#include "common/process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::deploy {
namespace {

using ::testing::HasSubstr;

ParsedMetrics Parse(const MetricsRegistry& r) {
  absl::StatusOr<ParsedMetrics> p = ParseMetricsText(r.RenderText());
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : ParsedMetrics();
}

ProcessScrape Up(const std::string& name, pid_t pid, const MetricsRegistry& r) {
  ProcessScrape s;
  s.process.name = name;
  s.process.pid = pid;
  s.running = true;
  s.metrics = Parse(r);
  return s;
}

TEST(StatusTest, RendersEveryKindOfProcess) {
  MetricsRegistry store;
  store.AddGauge("kvtier_store_active_leases", "")->Set(3);
  store.AddCounter("kvtier_store_hit_blocks_total", "")->Increment(7);
  store.AddCounter("kvtier_store_miss_blocks_total", "")->Increment(1);
  store.AddGauge("kvtier_store_pool_bytes_used", "")->Set(12 << 20);
  store.AddGauge("kvtier_store_pool_bytes", "")->Set(256 << 20);
  store.AddGauge("kvtier_store_spill_bytes", "")->Set(512 << 20);
  store.AddGauge("kvtier_store_spill_capacity_bytes", "")->Set(1 << 30);
  store.AddGauge("kvtier_store_spill_online", "")->Set(1);

  MetricsRegistry decode;
  const MetricLabels role = {{"role", "decode"}};
  decode.AddGauge("kvtier_worker_num_requests_running", "", role)->Set(2);
  decode.AddGauge("kvtier_worker_num_requests_waiting", "", role)->Set(1);
  decode.AddGauge("kvtier_worker_kv_cache_usage_perc", "", role)->Set(0.43);
  decode.AddGauge("kvtier_worker_store_connected", "", role)->Set(1);
  for (const auto& [source, n] : {std::pair{"computed", 30}, {"first_tier", 50}, {"store", 20}}) {
    decode
        .AddCounter("kvtier_worker_prompt_tokens_total", "",
                    {{"role", "decode"}, {"source", source}})
        ->Increment(n);
  }
  decode
      .AddCounter("kvtier_worker_recompute_fallbacks_total", "",
                  {{"role", "decode"}, {"reason", "checksum"}})
      ->Increment(2);

  MetricsRegistry prefill;  // idle, its store unreachable
  prefill.AddGauge("kvtier_worker_num_requests_running", "", {{"role", "prefill"}});
  prefill.AddGauge("kvtier_worker_store_connected", "", {{"role", "prefill"}})->Set(0);

  MetricsRegistry router;
  router.AddCounter("kvtier_router_prompt_tokens_total", "")->Increment(200);
  router.AddCounter("kvtier_router_cached_tokens_total", "")->Increment(150);
  for (const char* w : {"127.0.0.1:1", "127.0.0.1:2"}) {
    router.AddGauge("kvtier_router_worker_in_flight", "", {{"worker", w}, {"role", "decode"}})
        ->Set(1);
    router.AddGauge("kvtier_router_worker_up", "", {{"worker", w}, {"role", "decode"}})
        ->Set(w[10] == '1');
  }

  ProcessScrape dead;
  dead.process.name = "decode-1";
  dead.process.pid = 99;
  dead.metrics = absl::UnavailableError("not running");
  ProcessScrape silent;
  silent.process.name = "prefill-1";
  silent.process.pid = 98;
  silent.running = true;
  silent.metrics = absl::UnavailableError("http://127.0.0.1:5/metrics: Read\nmore");

  ClusterState state;
  state.run_dir = "/run";
  state.endpoint = "https://127.0.0.1:8080/v1";
  state.model_name = "tiny";
  state.backend = "cpu";
  const std::string screen =
      RenderStatus(state, {Up("store", 10, store), Up("prefill-0", 11, prefill),
                           Up("decode-0", 12, decode), silent, dead, Up("router", 13, router)});
  EXPECT_EQ(
      screen,
      "cluster /run: https://127.0.0.1:8080/v1, model tiny (cpu), 4/6 processes up\n"
      "NAME       PID  UP   LOAD              HIT%  POOL/KV             SPILL              NOTE\n"
      "store      10   yes  leases 3          87.5  12.0 MiB/256.0 MiB  512.0 MiB/1.0 GiB  "
      "spill online\n"
      "prefill-0  11   yes  running 0 wait 0  -     kv 0%               -                  "
      "store unreachable\n"
      "decode-0   12   yes  running 2 wait 1  70.0  kv 43%              -                  "
      "2 fallbacks to recompute\n"
      "prefill-1  98   no   -                 -     -                   -                  "
      "http://127.0.0.1:5/metrics: Read\n"
      "decode-1   99   no   -                 -     -                   -                  "
      "not running\n"
      "router     13   yes  in flight 2       75.0  -                   -                  "
      "1/2 workers up\n");
}

TEST(StatusTest, SpillOffAndOffline) {
  MetricsRegistry off;
  off.AddGauge("kvtier_store_spill_capacity_bytes", "");
  ClusterState state;
  std::string screen = RenderStatus(state, {Up("store", 1, off)});
  EXPECT_THAT(screen, HasSubstr("leases 0  -     -        off"));
  MetricsRegistry offline;
  offline.AddGauge("kvtier_store_spill_capacity_bytes", "")->Set(1 << 30);
  offline.AddGauge("kvtier_store_spill_online", "")->Set(0);
  offline.AddCounter("kvtier_store_checksum_failures_total", "")->Increment(4);
  screen = RenderStatus(state, {Up("store", 1, offline)});
  EXPECT_THAT(screen, HasSubstr("0 B/1.0 GiB  spill OFFLINE, 4 checksum failures"));
}

TEST(StatusTest, ScrapesARealEndpoint) {
  MetricsRegistry r;
  r.AddCounter("kvtier_store_lookups_total", "Lookup calls.")->Increment(5);
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1", 0, &r);
  ASSERT_TRUE(server.ok()) << server.status();
  MetricsTarget t;
  t.port = (*server)->port();
  absl::StatusOr<ParsedMetrics> m = ScrapeMetrics(t, absl::Seconds(2));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->Sum("kvtier_store_lookups_total"), 5);
}

TEST(StatusTest, ScrapesAreBounded) {
  // A port nobody listens on: refused at once.
  absl::StatusOr<int> closed = FreeTcpPort();
  ASSERT_TRUE(closed.ok());
  MetricsTarget t;
  t.port = *closed;
  absl::StatusOr<ParsedMetrics> m = ScrapeMetrics(t, absl::Seconds(2));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnavailable) << m.status();
  EXPECT_THAT(m.status().message(),
              HasSubstr(absl::StrCat("127.0.0.1:", *closed, "/metrics: cannot connect")));

  // A listener that never answers (a hung or stopped process): the kernel accepts the
  // connection, nothing is ever read; the scrape gives up after its timeout.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  t.port = ntohs(addr.sin_port);
  const absl::Time start = absl::Now();
  m = ScrapeMetrics(t, absl::Milliseconds(500));
  const absl::Duration took = absl::Now() - start;
  close(fd);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnavailable) << m.status();
  EXPECT_THAT(m.status().message(), HasSubstr("no answer within 0.5 s"));
  EXPECT_LT(took, absl::Seconds(3)) << m.status();
}

TEST(StatusTest, NoClusterIsExitOne) {
  StatusOptions o;
  o.run_dir = ::testing::TempDir() + "/kvtier_status_test_no_cluster";
  std::ostringstream out, err;
  EXPECT_EQ(RunStatus(o, out, err), 1);
  EXPECT_THAT(err.str(), HasSubstr("no cluster state in"));
  EXPECT_EQ(out.str(), "");
}

}  // namespace
}  // namespace kvtier::deploy
