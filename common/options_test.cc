#include "common/options.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

using ::testing::HasSubstr;

// One field of every kind, two in a nested section.
struct Demo {
  std::string name = "demo";
  bool enabled = true;
  int count = 4;
  int64_t big = -5;
  uint32_t small = 7;
  uint64_t seed = 9;
  double ratio = 0.5;
  absl::Duration timeout = absl::Seconds(2);
  std::vector<std::string> peers;
  uint64_t pool = 256ull << 20;
  int64_t cache = 1024;
  std::string spill = "1GiB";
  std::string mode = "fast";
  std::string listen = "127.0.0.1:80";
  std::string metrics = "127.0.0.1:9100";
  std::string dir;
  int lo = 1;
  int hi = 2;
};

void DeclareDemo(Demo* d, OptionTable* t) {
  t->Add("name", &d->name, "a name").Required();
  t->Add("enabled", &d->enabled, "a switch");
  t->Add("count", &d->count, "a count").Range(1, 8);
  t->Add("big", &d->big, "an int64");
  t->Add("small", &d->small, "a uint32");
  t->Add("seed", &d->seed, "a uint64");
  t->Add("ratio", &d->ratio, "a double").Positive();
  t->Add("timeout_ms", &d->timeout, "a duration").Positive();
  t->Add("peers", &d->peers, "host:port, repeat").Flag("--peer").HostPort();
  t->AddBytes("pool_bytes", &d->pool, "bytes into uint64");
  t->AddBytes("cache_bytes", &d->cache, "bytes into int64").Min(512);
  t->AddBytes("spill", &d->spill, "bytes kept as text");
  t->Add("mode", &d->mode, "one of").OneOf({"fast", "slow"});
  t->Add("listen", &d->listen, "an endpoint").HostPort();
  t->Add("metrics", &d->metrics, "an endpoint or off").HostPort(/*off_allowed=*/true);
  t->Add("dir", &d->dir, "a directory");
  t->Add("limits.lo", &d->lo, "nested");
  t->Add("limits.hi", &d->hi, "nested, own flag").Flag("--high");
  t->Finalize([d]() -> absl::Status {
    if (d->lo < d->hi) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("lo (", d->lo, ") must be < hi (", d->hi, ")"));
  });
}

class OptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("kvtier_options_test_", getpid(),
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Yaml(const std::string& text) {
    const std::string path = (dir_ / "c.yaml").string();
    std::ofstream(path) << text;
    return path;
  }

  // The options of a command line with Demo's flags.
  absl::StatusOr<Demo> Parse(const std::vector<std::string>& args) {
    OptionFlags<Demo> flags(Demo(), DeclareDemo);
    return flags.Parse(args);
  }

  std::filesystem::path dir_;
};

TEST_F(OptionsTest, DefaultsStandWithoutConfigOrFlags) {
  absl::StatusOr<Demo> d = Parse({});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->name, "demo");
  EXPECT_EQ(d->count, 4);
  EXPECT_EQ(d->pool, 256ull << 20);
  EXPECT_EQ(d->timeout, absl::Seconds(2));
  EXPECT_TRUE(d->peers.empty());
}

TEST_F(OptionsTest, EveryKindFromYaml) {
  const std::string cfg = Yaml(
      "name: other\nenabled: false\ncount: 8\nbig: -9000000000\nsmall: 4000000000\n"
      "seed: 18446744073709551615\nratio: 1.25\ntimeout_ms: 1500\n"
      "peers: [a:1, b:2]\npool_bytes: 2GiB\ncache_bytes: 64KiB\nspill: 3MiB\nmode: slow\n"
      "listen: 0.0.0.0:0\nmetrics: ''\nlimits:\n  lo: 5\n  hi: 6\n");
  absl::StatusOr<Demo> d = Parse({"--config", cfg});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->name, "other");
  EXPECT_FALSE(d->enabled);
  EXPECT_EQ(d->count, 8);
  EXPECT_EQ(d->big, -9000000000);
  EXPECT_EQ(d->small, 4000000000u);
  EXPECT_EQ(d->seed, 18446744073709551615ull);
  EXPECT_EQ(d->ratio, 1.25);
  EXPECT_EQ(d->timeout, absl::Milliseconds(1500));
  EXPECT_EQ(d->peers, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(d->pool, 2ull << 30);
  EXPECT_EQ(d->cache, 64 << 10);
  EXPECT_EQ(d->spill, "3MiB");
  EXPECT_EQ(d->mode, "slow");
  EXPECT_EQ(d->listen, "0.0.0.0:0");
  EXPECT_EQ(d->metrics, "");
  EXPECT_EQ(d->lo, 5);
  EXPECT_EQ(d->hi, 6);
}

TEST_F(OptionsTest, EveryKindFromFlags) {
  absl::StatusOr<Demo> d =
      Parse({"--name=x", "--enabled", "off", "--count", "2", "--small=3", "--timeout-ms=10",
             "--peer", "a:1", "--peer=b:2", "--pool-bytes=64KiB", "--cache-bytes", "1024",
             "--metrics", "off", "--limits-lo=-1", "--high", "0"});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->name, "x");
  EXPECT_FALSE(d->enabled);
  EXPECT_EQ(d->count, 2);
  EXPECT_EQ(d->small, 3u);
  EXPECT_EQ(d->timeout, absl::Milliseconds(10));
  EXPECT_EQ(d->peers, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(d->pool, 64u << 10);
  EXPECT_EQ(d->metrics, "");
  EXPECT_EQ(d->lo, -1);
  EXPECT_EQ(d->hi, 0);
}

TEST_F(OptionsTest, FlagsOverrideYamlOverridesDefaults) {
  const std::string cfg = Yaml("name: yaml\ncount: 6\npeers: c:3\n");
  absl::StatusOr<Demo> d = Parse({"--config", cfg, "--count=3"});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->name, "yaml");                              // YAML over the default
  EXPECT_EQ(d->count, 3);                                  // the flag over YAML
  EXPECT_EQ(d->peers, (std::vector<std::string>{"c:3"}));  // a scalar is a one-item list
  EXPECT_EQ(d->ratio, 0.5);                                // neither: the default
  d = Parse({"--config", cfg, "--peer=d:4"});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->peers, (std::vector<std::string>{"d:4"}));  // flags replace the YAML list
}

TEST_F(OptionsTest, UnknownKeysAreErrorsNamingTheKey) {
  absl::StatusOr<Demo> d = Parse({"--config", Yaml("name: x\ncuont: 3\n")});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("unknown key 'cuont'"));
  d = Parse({"--config", Yaml("limits:\n  mid: 3\n")});
  EXPECT_THAT(d.status().message(), HasSubstr("unknown key 'limits.mid'"));
  d = Parse({"--config", Yaml("name:\n  first: x\n")});
  EXPECT_THAT(d.status().message(), HasSubstr("name: expected a single value"));
}

TEST_F(OptionsTest, BadValuesNameTheKeyOrFlag) {
  auto error = [&](const std::vector<std::string>& args) {
    absl::StatusOr<Demo> d = Parse(args);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << d.status();
    return std::string(d.status().message());
  };
  EXPECT_THAT(error({"--count=many"}), HasSubstr("--count: expected an integer, got 'many'"));
  EXPECT_THAT(error({"--small=-1"}), HasSubstr("--small: expected an integer"));
  EXPECT_THAT(error({"--enabled=maybe"}), HasSubstr("--enabled: expected true or false"));
  EXPECT_THAT(error({"--pool-bytes=lots"}), HasSubstr("--pool-bytes: not a size"));
  EXPECT_THAT(error({"--config", Yaml("ratio: half\n")}), HasSubstr("c.yaml: ratio: expected"));
  // Checks after parsing name the key and the flag.
  EXPECT_THAT(error({"--count=9"}), HasSubstr("count (--count): must be in [1, 8], got 9"));
  EXPECT_THAT(error({"--ratio=0"}), HasSubstr("ratio (--ratio): must be > 0, got 0"));
  EXPECT_THAT(error({"--cache-bytes=100"}),
              HasSubstr("cache_bytes (--cache-bytes): must be >= 512"));
  EXPECT_THAT(error({"--mode=medium"}), HasSubstr("mode (--mode): must be one of fast|slow"));
  EXPECT_THAT(error({"--peer=nohost"}), HasSubstr("peers (--peer): 'nohost' is not host:port"));
  EXPECT_THAT(error({"--listen=h:65536"}), HasSubstr("listen (--listen)"));
  EXPECT_THAT(error({"--listen=off"}), HasSubstr("listen (--listen)"));    // no off here
  EXPECT_THAT(error({"--high=1"}), HasSubstr("lo (1) must be < hi (1)"));  // cross-field
  EXPECT_THAT(error({"--no-such-flag"}), HasSubstr("--no-such-flag"));
}

TEST_F(OptionsTest, RequiredAndDirectoryChecks) {
  Demo d;
  OptionTable t;
  t.Add("dir", &d.dir, "a directory").Required().DirWith("marker");
  t.Add("peers", &d.peers, "at least one").Required();
  CLI::App app;
  t.AddFlags(app);
  EXPECT_THAT(app.help(), HasSubstr("(dir; default none, required)"));
  EXPECT_THAT(t.Validate().message(), HasSubstr("dir is required (--dir)"));
  d.dir = dir_.string();
  EXPECT_THAT(t.Validate().message(), HasSubstr("has no marker"));
  std::ofstream(dir_ / "marker") << "";
  EXPECT_THAT(t.Validate().message(), HasSubstr("peers is required (--peers)"));
  d.peers = {"x"};
  EXPECT_TRUE(t.Validate().ok());
}

TEST_F(OptionsTest, FileErrors) {
  Demo d;
  OptionTable t;
  DeclareDemo(&d, &t);
  EXPECT_EQ(t.LoadYamlFile((dir_ / "missing.yaml").string()).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.LoadYamlFile(Yaml("name: [unclosed\n")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.LoadYamlFile(Yaml("- a\n- b\n")).message(), HasSubstr("not a YAML map"));
  EXPECT_TRUE(t.LoadYamlFile(Yaml("")).ok());  // an empty file sets nothing
  EXPECT_EQ(d.name, "demo");
}

TEST_F(OptionsTest, HelpListsEveryFlagWithKeyAndDefault) {
  CLI::App app;
  OptionFlags<Demo> flags(Demo(), DeclareDemo);
  flags.Register(app);
  const std::string help = app.help();
  for (const char* expected : {"--config",
                               "--name",
                               "(name; default demo)",
                               "--enabled",
                               "(enabled; default true)",
                               "--count",
                               "(count; default 4)",
                               "--big",
                               "(big; default -5)",
                               "--small",
                               "--seed",
                               "--ratio",
                               "(ratio; default 0.5)",
                               "--timeout-ms",
                               "(timeout_ms; default 2000)",
                               "--peer",
                               "(peers; default none)",
                               "--pool-bytes",
                               "(pool_bytes; default 256MiB)",
                               "--cache-bytes",
                               "(cache_bytes; default 1KiB)",
                               "--spill",
                               "(spill; default 1GiB)",
                               "--mode",
                               "fast|slow",
                               "--listen",
                               "HOST:PORT",
                               "--metrics",
                               "--dir",
                               "--limits-lo",
                               "(limits.lo; default 1)",
                               "--high",
                               "(limits.hi; default 2)"}) {
    EXPECT_THAT(help, HasSubstr(expected));
  }
}

TEST_F(OptionsTest, FlagsOfChosenKeysOnly) {
  CLI::App app;
  OptionFlags<Demo> flags(Demo(), DeclareDemo);
  flags.Register(app, {"name"});
  const std::vector<const char*> argv = {"demo", "--name=y"};
  app.parse(static_cast<int>(argv.size()), argv.data());
  absl::StatusOr<Demo> d = flags.Resolve();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->name, "y");
  EXPECT_THAT(app.help(), ::testing::Not(HasSubstr("--count")));
}

TEST_F(OptionsTest, ABoolFlagAloneIsTrue) {
  absl::StatusOr<Demo> d = Parse({"--enabled=false"});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->enabled);
  struct Switch {
    bool on = false;
    int n = 0;
  };
  OptionFlags<Switch> sw(Switch(), [](Switch* s, OptionTable* t) {
    t->Add("on", &s->on, "a switch");
    t->Add("n", &s->n, "a number");
  });
  absl::StatusOr<Switch> s = sw.Parse({"--on", "--n", "2"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->on);
  EXPECT_EQ(s->n, 2);
}

// The TLS fields of every server (docs/security.md): TLS or --plaintext, one of them, and the
// flags that pass them on to a child give the same options back.
TEST_F(OptionsTest, TlsOptionsAndTheirFlags) {
  struct Server {
    TlsOptions tls;
  };
  auto parse = [](TlsRole role, const std::vector<std::string>& args) {
    static TlsRole r;
    r = role;
    OptionFlags<Server> f(Server(),
                          [](Server* s, OptionTable* t) { DeclareTlsOptions(&s->tls, t, r); });
    return f.Parse(args);
  };
  absl::StatusOr<Server> s = parse(TlsRole::kServer, {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--plaintext"));
  s = parse(TlsRole::kServer, {"--plaintext"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->tls.plaintext);
  EXPECT_EQ(TlsFlags(s->tls, TlsRole::kServer), std::vector<std::string>{"--plaintext"});
  EXPECT_FALSE(parse(TlsRole::kServer, {"--plaintext", "--tls-cert-file=/c"}).ok());
  // The store declares no client certificate.
  EXPECT_FALSE(parse(TlsRole::kServer, {"--plaintext", "--tls-client-cert-file=/c"}).ok());

  TlsOptions full;
  full.ca_file = "/ca";
  full.cert_file = "/c";
  full.key_file = "/k";
  full.mutual = true;
  full.client_cert_file = "/cc";
  full.client_key_file = "/ck";
  full.service_token_file = "/t";
  for (TlsRole role :
       {TlsRole::kServer, TlsRole::kServerAndClient, TlsRole::kHttpServerAndClient}) {
    s = parse(role, TlsFlags(full, role));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->tls.cert_file, "/c");
    EXPECT_EQ(s->tls.service_token_file, "/t");
    EXPECT_EQ(s->tls.mutual, role != TlsRole::kHttpServerAndClient);
    EXPECT_EQ(s->tls.client_cert_file, role == TlsRole::kServer ? "" : "/cc");
  }
  TlsOptions no_token = full;
  no_token.service_token_file.clear();
  s = parse(TlsRole::kServerAndClient, TlsFlags(no_token, TlsRole::kServerAndClient));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("service_token_file"));
}

}  // namespace
}  // namespace kvtier
