#include "common/metrics.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "common/metrics_http.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace kvtier {
namespace {

TEST(CounterTest, Arithmetic) {
  Counter c;
  EXPECT_EQ(c.Value(), 0.0);
  c.Increment();
  c.Increment(2.5);
  EXPECT_DOUBLE_EQ(c.Value(), 3.5);
  c.Increment(-1.0);  // counters never go down: dropped
  c.Increment(std::numeric_limits<double>::quiet_NaN());
  EXPECT_DOUBLE_EQ(c.Value(), 3.5);
}

TEST(GaugeTest, Arithmetic) {
  Gauge g;
  EXPECT_EQ(g.Value(), 0.0);
  g.Set(10);
  g.Add(-2.5);
  g.Add(0.5);
  EXPECT_DOUBLE_EQ(g.Value(), 8.0);
  g.Set(-3);
  EXPECT_DOUBLE_EQ(g.Value(), -3.0);
}

TEST(MetricsTest, ConcurrentUpdatesAreNotLost) {
  Counter c;
  Gauge g;
  Histogram h({0.5, 1.5});
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        c.Increment();
        g.Add(t % 2 == 0 ? 2.0 : -1.0);
        h.Observe(t % 3);  // 0, 1 or 2: exact in double
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(c.Value(), static_cast<double>(kThreads * kPerThread));
  EXPECT_EQ(g.Value(), (kThreads / 2) * kPerThread * 2.0 - (kThreads / 2) * kPerThread);
  const Histogram::Snapshot snap = h.Snap();
  EXPECT_EQ(snap.count, static_cast<uint64_t>(kThreads * kPerThread));
  // t % 3 over t = 0..7: 0,1,2,0,1,2,0,1 -> three threads observe 0, three 1, two 2.
  EXPECT_EQ(snap.cumulative_counts,
            (std::vector<uint64_t>{3 * kPerThread, 6 * kPerThread, 8 * kPerThread}));
  EXPECT_EQ(snap.sum, (3.0 * 1 + 2.0 * 2) * kPerThread);
}

TEST(HistogramTest, BucketPlacementAndCumulativeCounts) {
  Histogram h({1.0, 2.0, 5.0});
  for (double v : {0.5, 1.0, 1.5, 5.0, 7.0, -3.0}) h.Observe(v);
  Histogram::Snapshot snap = h.Snap();
  ASSERT_EQ(snap.upper_bounds.size(), 4u);
  EXPECT_EQ(snap.upper_bounds[0], 1.0);
  EXPECT_TRUE(std::isinf(snap.upper_bounds[3]));
  // le semantics: 1.0 belongs to the "le=1" bucket, 5.0 to "le=5".
  EXPECT_EQ(snap.cumulative_counts, (std::vector<uint64_t>{3, 4, 5, 6}));
  EXPECT_DOUBLE_EQ(snap.sum, 12.0);
  EXPECT_EQ(snap.count, 6u);

  h.Observe(std::numeric_limits<double>::quiet_NaN());  // lands in +Inf only
  snap = h.Snap();
  EXPECT_EQ(snap.cumulative_counts, (std::vector<uint64_t>{3, 4, 5, 7}));
  EXPECT_EQ(snap.count, 7u);
}

TEST(HistogramTest, NoBoundsHasOnlyInf) {
  Histogram h({});
  h.Observe(3);
  const Histogram::Snapshot snap = h.Snap();
  ASSERT_EQ(snap.cumulative_counts.size(), 1u);
  EXPECT_EQ(snap.cumulative_counts[0], 1u);
  EXPECT_EQ(snap.sum, 3.0);
}

TEST(HistogramTest, LatencyBuckets) {
  const std::vector<double> b = LatencyBucketsSeconds();
  const std::vector<double> want = {10e-6,  25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3,
                                    2.5e-3, 5e-3,  10e-3, 25e-3,  50e-3,  100e-3, 250e-3,
                                    500e-3, 1,     2.5,   5,      10};
  EXPECT_EQ(b, want);
}

TEST(MetricsRegistryTest, RendersExactText) {
  MetricsRegistry r;
  Counter* get = r.AddCounter("kvtier_requests_total", "Requests served.", {{"op", "get"}});
  Gauge* bytes = r.AddGauge("kvtier_bytes_cached", "Bytes in cache.");
  Histogram* lat =
      r.AddHistogram("kvtier_latency_seconds", "Latency.", {0.001, 0.5, 1}, {{"tier", "gpu"}});
  // Registered after the other families but rendered with its own family.
  Counter* put = r.AddCounter("kvtier_requests_total", "ignored", {{"op", "put"}});
  get->Increment(3);
  put->Increment(1.5);
  bytes->Set(1048576);
  lat->Observe(0.0009765625);  // 2^-10: exact sums
  lat->Observe(0.25);
  lat->Observe(2);
  Gauge* big = r.AddGauge("kvtier_big", "Big and small.", {{"k", "a"}});
  big->Set(1e20);
  r.AddGauge("kvtier_big", "", {{"k", "b"}})->Set(-0.125);

  EXPECT_EQ(r.RenderText(),
            "# HELP kvtier_requests_total Requests served.\n"
            "# TYPE kvtier_requests_total counter\n"
            "kvtier_requests_total{op=\"get\"} 3\n"
            "kvtier_requests_total{op=\"put\"} 1.5\n"
            "# HELP kvtier_bytes_cached Bytes in cache.\n"
            "# TYPE kvtier_bytes_cached gauge\n"
            "kvtier_bytes_cached 1048576\n"
            "# HELP kvtier_latency_seconds Latency.\n"
            "# TYPE kvtier_latency_seconds histogram\n"
            "kvtier_latency_seconds_bucket{tier=\"gpu\",le=\"0.001\"} 1\n"
            "kvtier_latency_seconds_bucket{tier=\"gpu\",le=\"0.5\"} 2\n"
            "kvtier_latency_seconds_bucket{tier=\"gpu\",le=\"1\"} 2\n"
            "kvtier_latency_seconds_bucket{tier=\"gpu\",le=\"+Inf\"} 3\n"
            "kvtier_latency_seconds_sum{tier=\"gpu\"} 2.2509765625\n"
            "kvtier_latency_seconds_count{tier=\"gpu\"} 3\n"
            "# HELP kvtier_big Big and small.\n"
            "# TYPE kvtier_big gauge\n"
            "kvtier_big{k=\"a\"} 1e+20\n"
            "kvtier_big{k=\"b\"} -0.125\n");
}

TEST(MetricsRegistryTest, UnlabeledHistogramAndSpecialValues) {
  MetricsRegistry r;
  Histogram* h = r.AddHistogram("h", "H.", {0.00001, 2.5});
  h->Observe(1);
  Gauge* g = r.AddGauge("g", "G.");
  g->Set(std::numeric_limits<double>::infinity());
  Gauge* n = r.AddGauge("n", "N.");
  n->Set(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(r.RenderText(),
            "# HELP h H.\n"
            "# TYPE h histogram\n"
            "h_bucket{le=\"1e-05\"} 0\n"
            "h_bucket{le=\"2.5\"} 1\n"
            "h_bucket{le=\"+Inf\"} 1\n"
            "h_sum 1\n"
            "h_count 1\n"
            "# HELP g G.\n"
            "# TYPE g gauge\n"
            "g +Inf\n"
            "# HELP n N.\n"
            "# TYPE n gauge\n"
            "n NaN\n");
}

TEST(MetricsRegistryTest, EscapesLabelValuesAndHelp) {
  MetricsRegistry r;
  r.AddCounter("esc_total", "line1\nback\\slash \"quotes stay\"",
               {{"path", "C:\\dir\\"}, {"q", "say \"hi\"\nbye"}})
      ->Increment();
  EXPECT_EQ(r.RenderText(),
            "# HELP esc_total line1\\nback\\\\slash \"quotes stay\"\n"
            "# TYPE esc_total counter\n"
            "esc_total{path=\"C:\\\\dir\\\\\",q=\"say \\\"hi\\\"\\nbye\"} 1\n");
}

TEST(MetricsRegistryTest, SameNameAndLabelsReturnSameObject) {
  MetricsRegistry r;
  Counter* a = r.AddCounter("c_total", "C.", {{"x", "1"}});
  EXPECT_EQ(r.AddCounter("c_total", "C.", {{"x", "1"}}), a);
  EXPECT_NE(r.AddCounter("c_total", "C.", {{"x", "2"}}), a);
  Gauge* g = r.AddGauge("g", "G.");
  EXPECT_EQ(r.AddGauge("g", "G."), g);
  Histogram* h = r.AddHistogram("h", "H.", {1, 2});
  EXPECT_EQ(r.AddHistogram("h", "H.", {1, 2}), h);
  // One HELP/TYPE per family.
  const std::string text = r.RenderText();
  size_t n = 0;
  for (size_t pos = text.find("# TYPE c_total"); pos != std::string::npos;
       pos = text.find("# TYPE c_total", pos + 1)) {
    ++n;
  }
  EXPECT_EQ(n, 1u);
}

// KVTIER_CHECK logs through spdlog's default logger (stdout); death tests match stderr.
void LogToStderr() {
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "death_test", std::make_shared<spdlog::sinks::stderr_sink_st>()));
}

TEST(MetricsRegistryDeathTest, TypeMismatchAborts) {
  MetricsRegistry r;
  r.AddCounter("m", "M.");
  EXPECT_DEATH(
      {
        LogToStderr();
        r.AddGauge("m", "M.");
      },
      "registered as counter");
}

TEST(MetricsRegistryDeathTest, InvalidNamesAbort) {
  MetricsRegistry r;
  EXPECT_DEATH(
      {
        LogToStderr();
        r.AddCounter("1abc", "bad");
      },
      "invalid metric name");
  EXPECT_DEATH(
      {
        LogToStderr();
        r.AddCounter("a-b", "bad");
      },
      "invalid metric name");
  EXPECT_DEATH(
      {
        LogToStderr();
        r.AddCounter("", "bad");
      },
      "invalid metric name");
  EXPECT_DEATH(
      {
        LogToStderr();
        r.AddCounter("ok", "bad", {{"bad-label", "v"}});
      },
      "invalid label name");
  EXPECT_DEATH(
      {
        LogToStderr();
        r.AddHistogram("hist", "bad", {1}, {{"le", "v"}});
      },
      "reserved");
  EXPECT_DEATH(
      {
        LogToStderr();
        r.AddHistogram("hist2", "bad", {2, 1});
      },
      "strictly increasing");
}

// Sends `bytes` on a fresh TCP connection and returns the server's answer up to the end of the
// response headers (the server may keep the connection open; each recv waits at most 2 s).
std::string SendRaw(int port, const std::string& bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "socket() failed";
  timeval tv{};
  tv.tv_sec = 2;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string reply;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "connect() failed";
  }
  if (send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())) {
    char buf[4096];
    for (int i = 0; i < 64; ++i) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      reply.append(buf, static_cast<size_t>(n));
      if (reply.find("\r\n\r\n") != std::string::npos) break;
    }
  }
  close(fd);
  return reply;
}

TEST(MetricsHttpServerTest, ServesMetricsHealthzAnd404) {
  MetricsRegistry r;
  r.AddCounter("kvtier_http_test_total", "Test counter.", {{"a", "b"}})->Increment(7);
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, &r);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);

  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2, 0);
  cli.set_read_timeout(2, 0);
  cli.set_write_timeout(2, 0);

  auto res = cli.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, r.RenderText());
  EXPECT_NE(res->body.find("kvtier_http_test_total{a=\"b\"} 7\n"), std::string::npos);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");

  res = cli.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok");

  res = cli.Get("/nope");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);

  // Garbage bytes get a 400 and a closed connection, and the server keeps serving.
  const std::string reply = SendRaw(port, std::string("\x00\xff garbage\r\n\r\n", 14));
  EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;

  r.AddGauge("kvtier_http_test_gauge", "Added later.")->Set(2);
  res = cli.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("kvtier_http_test_gauge 2\n"), std::string::npos);

  (*server)->Stop();
  (*server)->Stop();  // idempotent
  EXPECT_FALSE(cli.Get("/healthz"));
}

TEST(MetricsHttpServerTest, IdleClientDoesNotBlockServingOrStop) {
  MetricsRegistry r;
  r.AddGauge("g", "G.")->Set(1);
  auto server = MetricsHttpServer::Start("127.0.0.1", 0, &r);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  // A client that connects and never sends anything.
  const int idle = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(idle, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(idle, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);

  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2, 0);
  cli.set_read_timeout(2, 0);
  auto res = cli.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "# HELP g G.\n# TYPE g gauge\ng 1\n");

  // Stop() waits for the idle connection only up to the keep-alive timeout (1 s).
  const auto start = std::chrono::steady_clock::now();
  (*server)->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  close(idle);
}

TEST(MetricsHttpServerTest, BindFailureIsUnavailable) {
  MetricsRegistry r;
  auto first = MetricsHttpServer::Start("127.0.0.1", 0, &r);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = MetricsHttpServer::Start("127.0.0.1", (*first)->port(), &r);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(MetricsHttpServer::Start("127.0.0.1", 70000, &r).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsHttpServer::Start("127.0.0.1", 0, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
