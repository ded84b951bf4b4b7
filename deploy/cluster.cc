#include "deploy/cluster.h"

#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/parse_bytes.h"
#include "common/process.h"
#include "common/service.h"
#include "common/status_macros.h"
#include "membership/etcd_process.h"
#include "nlohmann/json.hpp"

namespace kvtier::deploy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The one declaration of every field: YAML key (nested sections: "store.pool_bytes"), flag
// ("--store-pool-bytes"), help, checks. deploy/local/cluster.yaml shows them all.
void DeclareClusterConfig(ClusterConfig* c, OptionTable* t) {
  t->Add("run_dir", &c->run_dir, "logs, ready files, spill, cluster.json").Required();
  t->Add("backend", &c->backend, "engine backend (auto: cuda when `nvidia-smi -L` lists a GPU)")
      .OneOf({"cpu", "cuda", "auto"});
  t->Add("log_level", &c->log_level, "log level of every process").OneOf(LogLevelNames());
  t->Add("ready_timeout_s", &c->ready_timeout_s, "bound on the whole start").Positive();
  t->Add("stop_grace_s", &c->stop_grace_s, "SIGTERM, then SIGKILL after this long").Min(0);
  t->Add("model.dir", &c->model_dir, "model directory (empty: <run_dir>/models/<shape>)");
  t->Add("model.shape", &c->model_shape, "preset shape of a generated model");
  t->Add("model.dtype", &c->model_dtype, "dtype of a generated model")
      .OneOf({"f32", "bf16", "f16"});
  t->Add("model.seed", &c->model_seed, "weight seed of a generated model");
  t->Add("model.name", &c->model_name, "served model id (empty: the directory name)");
  t->Add("store.port", &c->store_port,
         "first store gRPC port (0: any free ports; else consecutive ports)")
      .Range(0, 65535);
  t->Add("store.nodes", &c->store_nodes, "store nodes (every worker uses all of them)")
      .Range(1, 16);
  t->AddBytes("store.pool_bytes", &c->store_pool_bytes, "store host pool");
  t->AddBytes("store.slot_bytes", &c->store_slot_bytes, "store slot (largest block)");
  t->AddBytes("store.spill_capacity", &c->store_spill_capacity,
              "spill tier in <run_dir>/spill (0: spill off)");
  t->Add("prefill", &c->prefill_workers, "prefill workers (0: decode computes whole prompts)")
      .Range(0, 16);
  t->Add("decode", &c->decode_workers, "decode workers").Range(1, 16);
  t->Add("workers.threads", &c->worker_threads, "CPU threads per worker (0: all cores)").Min(0);
  t->AddBytes("workers.kv_cache_bytes", &c->worker_kv_cache_bytes, "paged KV cache per worker");
  t->Add("workers.max_batch_tokens", &c->worker_max_batch_tokens, "prefill chunk").Min(16);
  t->Add("workers.base_port", &c->worker_base_port,
         "first worker gRPC port (0: any free ports; else consecutive ports)")
      .Range(0, 65535);
  t->Add("workers.keep_blocks", &c->worker_keep_blocks,
         "decode keeps finished requests' blocks in its own pages (first tier)");
  t->Add("router.port", &c->router_port, "router HTTP port (0: any free port)").Range(0, 65535);
  t->Add("router.skip_prefill_below", &c->router_skip_prefill_below,
         "uncached prompt tokens below which decode computes them itself")
      .Min(0);
  t->Add("etcd", &c->etcd,
         "start a local etcd (data in <run_dir>/etcd) the processes register with");
  t->Add("netns.enabled", &c->netns,
         "every process on a host of its own: a network namespace (root, iproute2)")
      .Flag("--netns");
  t->Add("netns.prefix", &c->netns_prefix, "prefix of the namespaces' names (1-8 of [a-z0-9])");
  t->Add("netns.subnet", &c->netns_subnet,
         "the hosts' /24, three octets (hosts .1, .2, ...; the bridge, root's side, .254)");
}

// Whether `pid` is alive and runs one of our binaries (guards against pid reuse).
bool IsOurs(pid_t pid) {
  if (!ProcessAlive(pid)) return false;
  std::string cmd = FileTail(absl::StrCat("/proc/", pid, "/cmdline"), std::string::npos);
  return cmd.empty() || absl::StrContains(cmd, "kvtier");
}

absl::Status WriteState(const ClusterState& s) {
  json j = {{"run_dir", s.run_dir},           {"endpoint", s.endpoint},
            {"model_name", s.model_name},     {"backend", s.backend},
            {"netns_prefix", s.netns_prefix}, {"netns_subnet", s.netns_subnet},
            {"processes", json::array()}};
  for (const ClusterProcess& p : s.processes) {
    j["processes"].push_back({{"name", p.name},
                              {"pid", p.pid},
                              {"host", p.host},
                              {"port", p.port},
                              {"metrics_port", p.metrics_port},
                              {"log", p.log},
                              {"argv", p.argv},
                              {"env", p.env}});
  }
  return WriteFileAtomically(StateFilePath(s.run_dir), j.dump(2) + "\n");
}

std::string ResolveBackend(const std::string& backend) {
  if (backend != "auto") return backend;
  SpawnOptions o;
  o.argv = {"nvidia-smi", "-L"};
  o.stderr_path = "&1";
  absl::StatusOr<CommandResult> r = RunCommand(o, absl::Seconds(10));
  return r.ok() && r->ok() && absl::StrContains(r->output, "GPU ") ? "cuda" : "cpu";
}

absl::Status EnsureModel(const ClusterConfig& c, const std::string& model_dir,
                         const std::string& bin_dir, const std::string& run_dir,
                         std::ostream& log) {
  if (fs::exists(fs::path(model_dir) / "config.json")) return absl::OkStatus();
  log << "generating the " << c.model_shape << " " << c.model_dtype << " model in " << model_dir
      << "\n";
  const std::string tmp = absl::StrCat(model_dir, ".tmp-", getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(fs::path(tmp).parent_path(), ec);
  SpawnOptions o;
  o.argv = {bin_dir + "/kvtier-model",
            "init",
            "--shape=" + c.model_shape,
            "--dtype=" + c.model_dtype,
            absl::StrCat("--seed=", c.model_seed),
            "--out=" + tmp};
  o.stdout_path = run_dir + "/model-init.log";
  o.stderr_path = "&1";
  o.append = true;
  o.stop_grace = absl::ZeroDuration();
  KVTIER_ASSIGN_OR_RETURN(ChildProcess init, ChildProcess::Spawn(o));
  std::optional<int> st = init.Wait(absl::Seconds(c.ready_timeout_s));
  if (!st) return absl::DeadlineExceededError("kvtier-model init did not finish in time");
  if (!WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
    return absl::InternalError("kvtier-model init failed:\n" + FileTail(o.stdout_path));
  }
  fs::rename(tmp, model_dir, ec);
  if (ec) return absl::InternalError("cannot move the model to " + model_dir + ": " + ec.message());
  return absl::OkStatus();
}

bool RouterHealthy(const std::string& host, int port, const std::string& ca_file) {
  httplib::SSLClient cli(host, port);
  cli.set_ca_cert_path(ca_file.c_str());
  cli.enable_server_certificate_verification(true);
  cli.set_connection_timeout(1, 0);
  cli.set_read_timeout(2, 0);
  httplib::Result r = cli.Get("/health");
  return r && r->status == 200;
}

// The command line of the live process `pid` (/proc) as RestartClusterProcess replays it:
// `launcher` (`ip netns exec NS` on a namespace host: the process replaced it), then its own
// arguments without the --ready-file that ServerProcess adds, --listen and --metrics-listen
// naming the ports it bound (it may have asked for port 0).
std::vector<std::string> ReplayableArgv(const std::vector<std::string>& launcher, pid_t pid,
                                        int port, int metrics_port) {
  std::vector<std::string> argv = launcher;
  const std::string raw = FileTail(absl::StrCat("/proc/", pid, "/cmdline"), std::string::npos);
  for (absl::string_view a : absl::StrSplit(raw, '\0', absl::SkipEmpty())) {
    if (absl::StartsWith(a, "--ready-file=")) continue;
    const bool listen = absl::StartsWith(a, "--listen=");
    const bool metrics = absl::StartsWith(a, "--metrics-listen=") && metrics_port > 0;
    if ((listen || metrics) && a.rfind(':') != absl::string_view::npos) {
      argv.push_back(absl::StrCat(a.substr(0, a.rfind(':') + 1), listen ? port : metrics_port));
    } else {
      argv.emplace_back(a);
    }
  }
  return argv;
}

std::string PortArg(int base, int index) { return std::to_string(base == 0 ? 0 : base + index); }

// The processes of a cluster in start order: etcd (when asked), the stores ("store", or
// "store-0", "store-1", ...), the prefill and the decode workers, the router.
std::vector<std::string> ProcessNames(const ClusterConfig& c) {
  std::vector<std::string> names;
  if (c.etcd) names.push_back("etcd");
  for (int i = 0; i < c.store_nodes; ++i) {
    names.push_back(c.store_nodes == 1 ? "store" : absl::StrCat("store-", i));
  }
  for (int i = 0; i < c.prefill_workers; ++i) names.push_back(absl::StrCat("prefill-", i));
  for (int i = 0; i < c.decode_workers; ++i) names.push_back(absl::StrCat("decode-", i));
  names.push_back("router");
  return names;
}

// The namespace host of process `name`: its name without '-' ("store-0" runs on "store0").
std::string HostName(const std::string& name) { return absl::StrReplaceAll(name, {{"-", ""}}); }

// Options of a process that outlives `kvtier up`: a session of its own, no parent-death signal.
SpawnOptions Detached(std::vector<std::string> argv, std::map<std::string, std::string> env,
                      absl::Duration stop_grace) {
  SpawnOptions o;
  o.argv = std::move(argv);
  o.env = std::move(env);
  o.new_session = true;
  o.die_with_parent = false;
  o.stop_grace = stop_grace;
  return o;
}

// The processes of a cluster being started. Until Release(), destruction stops them all.
class Starting {
 public:
  // `topology`: the namespace hosts (null: every process on 127.0.0.1).
  Starting(const ClusterConfig& c, std::string bin_dir, std::string run_dir,
           const NetnsTopology* topology, std::ostream& log)
      : c_(c),
        bin_dir_(std::move(bin_dir)),
        run_dir_(std::move(run_dir)),
        topology_(topology),
        log_(log) {}

  // Where process `name` runs: 127.0.0.1, or its namespace host, reached through `ip netns
  // exec` and with UCX over TCP (shared memory ignores namespaces: docs/testing.md).
  ClusterProcess Placed(const std::string& name) const {
    ClusterProcess p;
    p.name = name;
    if (topology_ != nullptr) {
      p.host = topology_->Address(HostName(name));
      p.argv = topology_->Wrap(HostName(name), {});
      p.env = {{"UCX_TLS", "tcp"}};
    }
    return p;
  }

  // etcd on its host (its own ports in a namespace, free ones on 127.0.0.1), data and log in
  // <run_dir>/etcd; waits until it is healthy. Its endpoint is etcd_endpoint().
  absl::Status StartEtcd(absl::Time deadline) {
    ClusterProcess p = Placed("etcd");
    int peer_port = 2380;
    p.port = 2379;
    if (topology_ == nullptr) {
      KVTIER_ASSIGN_OR_RETURN(p.port, FreeTcpPort());
      KVTIER_ASSIGN_OR_RETURN(peer_port, FreeTcpPort());
    }
    p.metrics_port = p.port;  // etcd serves /metrics on its client URL
    const std::string dir = run_dir_ + "/etcd";
    std::error_code ec;
    fs::create_directories(dir, ec);
    p.log = dir + "/etcd.log";
    const std::string client = absl::StrCat("http://", p.address());
    const std::string peer = absl::StrCat("http://", p.host, ":", peer_port);
    // The name has "kvtier" in it: IsOurs tells this etcd from a reused pid by it.
    for (std::string& a : membership::EtcdCommand(dir + "/data", client, peer)) {
      p.argv.push_back(std::move(a));
    }
    KVTIER_ASSIGN_OR_RETURN(
        ChildProcess etcd,
        membership::SpawnHealthyEtcd(Detached(p.argv, p.env, absl::Seconds(c_.stop_grace_s)), p.log,
                                     client, deadline - absl::Now()));
    log_ << "started etcd " << client << " (pid " << etcd.pid() << ")\n";
    etcd_endpoint_ = client;
    etcd_.emplace(Etcd{std::move(etcd), std::move(p)});
    return absl::OkStatus();
  }
  const std::string& etcd_endpoint() const { return etcd_endpoint_; }

  // `binary` of the bin directory with `args`, on the host Placed(name) says, registering with
  // the cluster's etcd when it has one (every kvtier server declares membership.*).
  absl::Status Spawn(const std::string& name, const std::string& binary,
                     std::vector<std::string> args) {
    ClusterProcess p = Placed(name);
    SpawnOptions o = Detached(p.argv, p.env, absl::Seconds(c_.stop_grace_s));
    o.argv.push_back(bin_dir_ + "/" + binary);
    o.argv.insert(o.argv.end(), args.begin(), args.end());
    o.argv.push_back("--log-level=" + c_.log_level);
    if (!etcd_endpoint_.empty()) o.argv.push_back("--membership-etcd=" + etcd_endpoint_);
    KVTIER_ASSIGN_OR_RETURN(ServerProcess server, ServerProcess::Spawn(o, run_dir_, name));
    log_ << "started " << name << (p.host == "127.0.0.1" ? "" : " on " + p.host) << " (pid "
         << server.process().pid() << ")\n";
    servers_.push_back({std::move(p), std::move(server)});
    return absl::OkStatus();
  }

  // Waits until every process spawned since the last call wrote its ready file.
  absl::Status AwaitReady(absl::Time deadline) {
    for (; ready_ < servers_.size(); ++ready_) {
      Server& s = servers_[ready_];
      KVTIER_RETURN_IF_ERROR(s.server.AwaitReady(deadline - absl::Now()));
      s.record.port = s.server.grpc_port();
    }
    return absl::OkStatus();
  }

  // host:PORT of the ready processes whose name starts with `prefix`.
  std::vector<std::string> Addresses(absl::string_view prefix) const {
    std::vector<std::string> out;
    for (size_t i = 0; i < ready_; ++i) {
      if (absl::StartsWith(servers_[i].record.name, prefix)) {
        out.push_back(servers_[i].record.address());
      }
    }
    return out;
  }

  ServerProcess& last() { return servers_.back().server; }

  // The processes as the state file records them, in start order; they now outlive this
  // object.
  std::vector<ClusterProcess> Release() {
    std::vector<ClusterProcess> out;
    if (etcd_.has_value()) {
      etcd_->record.pid = etcd_->process.Release();
      out.push_back(std::move(etcd_->record));
      etcd_.reset();
    }
    for (Server& s : servers_) {
      ClusterProcess& p = s.record;
      // The router's /metrics is on its API port.
      p.metrics_port = p.name == "router" ? p.port : s.server.metrics_port();
      p.log = s.server.log_path();
      p.argv = ReplayableArgv(p.argv, s.server.process().pid(), p.port, s.server.metrics_port());
      p.pid = s.server.process().Release();
      out.push_back(std::move(p));
    }
    servers_.clear();
    return out;
  }

 private:
  struct Server {
    ClusterProcess record;  // argv: the launcher until Release
    ServerProcess server;
  };
  struct Etcd {
    ChildProcess process;
    ClusterProcess record;
  };

  const ClusterConfig& c_;
  const std::string bin_dir_;
  const std::string run_dir_;
  const NetnsTopology* const topology_;
  std::ostream& log_;
  std::optional<Etcd> etcd_;
  std::string etcd_endpoint_;
  std::vector<Server> servers_;  // in start order
  size_t ready_ = 0;             // servers_[0, ready_) are ready
};

}  // namespace

bool ClusterProcessRunning(const ClusterProcess& p) { return IsOurs(p.pid); }

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  if (path.empty()) return ClusterConfig();
  KVTIER_ASSIGN_OR_RETURN(ClusterConfig c,
                          LoadYamlOptions(path, ClusterConfig(), DeclareClusterConfig));
  absl::Status s = ValidateOptions(&c, DeclareClusterConfig);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  return c;
}

ClusterFlags::ClusterFlags() : OptionFlags(ClusterConfig(), DeclareClusterConfig) {}

ClusterCredentials CredentialsOf(const std::string& run_dir) {
  ClusterCredentials c;
  c.pki = LocalPki::In(run_dir + "/tls");
  c.api_keys_file = run_dir + "/tls/api_keys";
  c.api_key_file = run_dir + "/api_key";
  return c;
}

absl::StatusOr<ClusterCredentials> EnsureCredentials(const std::string& run_dir,
                                                     const std::vector<std::string>& server_ips) {
  ClusterCredentials c = CredentialsOf(run_dir);
  const std::string dir = run_dir + "/tls";
  std::error_code ec;
  fs::create_directories(dir, ec);
  fs::permissions(dir, fs::perms::owner_all, ec);
  if (ec) return absl::InternalError("cannot create " + dir + ": " + ec.message());
  KVTIER_RETURN_IF_ERROR(WriteLocalPki(dir, 825, server_ips).status());
  if (!fs::exists(c.api_key_file) || !fs::exists(c.api_keys_file)) {
    const std::string key = "sk-kvtier-" + RandomHex(24);
    KVTIER_RETURN_IF_ERROR(WritePrivateFile(c.api_key_file, key + "\n"));
    KVTIER_RETURN_IF_ERROR(WritePrivateFile(
        c.api_keys_file,
        "# API key -> tenant (router/api_keys.h), written by `kvtier up`\n" + key + " local\n"));
  }
  return c;
}

std::string StateFilePath(const std::string& run_dir) { return run_dir + "/cluster.json"; }

absl::StatusOr<std::optional<ClusterState>> ReadClusterState(const std::string& run_dir) {
  const std::string path = StateFilePath(run_dir);
  if (!fs::exists(path)) return std::optional<ClusterState>();
  json j = json::parse(FileTail(path, std::string::npos), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("corrupt state file " + path);
  try {
    ClusterState s;
    s.run_dir = j.at("run_dir").get<std::string>();
    s.endpoint = j.at("endpoint").get<std::string>();
    s.model_name = j.value("model_name", "");
    s.backend = j.value("backend", "");
    s.netns_prefix = j.value("netns_prefix", "");
    s.netns_subnet = j.value("netns_subnet", "");
    for (const json& p : j.at("processes")) {
      s.processes.push_back({p.at("name").get<std::string>(), p.at("pid").get<pid_t>(),
                             p.value("host", "127.0.0.1"), p.at("port").get<int>(),
                             p.value("metrics_port", 0), p.value("log", ""),
                             p.value("argv", std::vector<std::string>()),
                             p.value("env", std::map<std::string, std::string>())});
    }
    return std::optional<ClusterState>(std::move(s));
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("corrupt state file ", path, ": ", e.what()));
  }
}

absl::StatusOr<ClusterState> StartCluster(const ClusterConfig& c, const std::string& bin_dir,
                                          std::ostream& log) {
  ClusterConfig checked = c;
  KVTIER_RETURN_IF_ERROR(ValidateOptions(&checked, DeclareClusterConfig));
  const std::string run_dir = fs::absolute(c.run_dir).lexically_normal().string();
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) return absl::InternalError("cannot create " + run_dir + ": " + ec.message());

  KVTIER_ASSIGN_OR_RETURN(std::optional<ClusterState> old, ReadClusterState(run_dir));
  if (old.has_value()) {
    for (const ClusterProcess& p : old->processes) {
      if (IsOurs(p.pid)) {
        return absl::FailedPreconditionError(absl::StrCat("a cluster of ", run_dir,
                                                          " is already running at ", old->endpoint,
                                                          " (stop it with `kvtier down`)"));
      }
    }
    log << "removing the stale state of a cluster that is no longer running\n";
    fs::remove(StateFilePath(run_dir), ec);
  }

  const std::string model_dir = c.model_dir.empty()
                                    ? run_dir + "/models/" + c.model_shape
                                    : fs::absolute(c.model_dir).lexically_normal().string();
  KVTIER_RETURN_IF_ERROR(EnsureModel(c, model_dir, bin_dir, run_dir, log));

  ClusterState state;
  state.run_dir = run_dir;
  state.backend = ResolveBackend(c.backend);
  state.model_name = c.model_name.empty() ? fs::path(model_dir).filename().string() : c.model_name;
  log << "backend " << state.backend << ", model " << model_dir << "\n";

  // With netns, every process on a host of its own; the topology outlives `up` once the
  // cluster is up (Release below) and is deleted with the processes when the start fails.
  std::optional<NetnsTopology> topology;
  std::vector<std::string> server_ips;
  if (c.netns) {
    std::vector<std::string> hosts;
    for (const std::string& name : ProcessNames(c)) hosts.push_back(HostName(name));
    // Create deletes what a killed run of this prefix left: never a live cluster's hosts.
    if (absl::Status st = NetnsTopology::CheckUnused(c.netns_prefix); !st.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          st.message(), " (stop that cluster with `kvtier down`, or set netns.prefix and ",
          "netns.subnet)"));
    }
    KVTIER_ASSIGN_OR_RETURN(
        NetnsTopology t,
        NetnsTopology::Create(hosts, {.prefix = c.netns_prefix, .subnet = c.netns_subnet}));
    topology.emplace(std::move(t));
    for (const std::string& h : hosts) server_ips.push_back(topology->Address(h));
    log << "network namespaces " << c.netns_prefix << "-<host> on " << c.netns_subnet
        << ".0/24 (the root namespace is " << topology->GatewayAddress() << ")\n";
  }

  KVTIER_ASSIGN_OR_RETURN(const ClusterCredentials creds, EnsureCredentials(run_dir, server_ips));
  const TlsOptions tls = creds.pki.Options();

  const absl::Time deadline = absl::Now() + absl::Seconds(c.ready_timeout_s);
  Starting cluster(c, bin_dir, run_dir, topology.has_value() ? &*topology : nullptr, log);
  if (c.etcd) KVTIER_RETURN_IF_ERROR(cluster.StartEtcd(deadline));

  for (int i = 0; i < c.store_nodes; ++i) {
    const std::string name = c.store_nodes == 1 ? "store" : absl::StrCat("store-", i);
    const std::string host = cluster.Placed(name).host;
    std::vector<std::string> args = {
        "--listen=" + host + ":" + PortArg(c.store_port, i), "--metrics-listen=" + host + ":0",
        "--pool-bytes=" + c.store_pool_bytes, "--slot-bytes=" + c.store_slot_bytes};
    if (*ParseBytes(c.store_spill_capacity) > 0) {
      args.push_back(absl::StrCat("--spill-dir=", run_dir, "/spill",
                                  c.store_nodes == 1 ? "" : absl::StrCat("-", i)));
      args.push_back("--spill-capacity=" + c.store_spill_capacity);
    }
    if (c.netns) args.push_back("--data-interface=" + host);
    for (std::string& f : TlsFlags(tls, TlsRole::kServer)) args.push_back(std::move(f));
    KVTIER_RETURN_IF_ERROR(cluster.Spawn(name, "kvtier-store", std::move(args)));
  }
  KVTIER_RETURN_IF_ERROR(cluster.AwaitReady(deadline));
  const std::vector<std::string> stores = cluster.Addresses("store");

  for (int role = 0; role < 2; ++role) {
    const int n = role == 0 ? c.prefill_workers : c.decode_workers;
    for (int i = 0; i < n; ++i) {
      const int index = role == 0 ? i : c.prefill_workers + i;
      const std::string name = absl::StrCat(role == 0 ? "prefill-" : "decode-", i);
      const std::string host = cluster.Placed(name).host;
      std::vector<std::string> args = {
          "--model-dir=" + model_dir, "--backend=" + state.backend,
          "--listen=" + host + ":" + PortArg(c.worker_base_port, index),
          absl::StrCat("--threads=", c.worker_threads),
          "--kv-cache-bytes=" + c.worker_kv_cache_bytes,
          absl::StrCat("--max-batch-tokens=", c.worker_max_batch_tokens),
          absl::StrCat("--max-batch-seqs=", std::min(64, c.worker_max_batch_tokens - 1)),
          "--model-name=" + state.model_name,
          // /metrics on a free port of their own, as the store's (docs/observability.md).
          "--metrics-listen=" + host + ":0"};
      // With etcd the workers follow the store nodes there (docs/membership.md): nodes that
      // join or leave later are seen too.
      if (!c.etcd) {
        for (const std::string& s : stores) args.push_back("--store=" + s);
      }
      if (role == 1) {
        args.push_back(c.worker_keep_blocks ? "--keep-blocks=true" : "--keep-blocks=false");
      }
      for (std::string& f : TlsFlags(tls, TlsRole::kServerAndClient)) {
        args.push_back(std::move(f));
      }
      KVTIER_RETURN_IF_ERROR(
          cluster.Spawn(name, role == 0 ? "kvtier-prefill" : "kvtier-decode", std::move(args)));
    }
  }
  KVTIER_RETURN_IF_ERROR(cluster.AwaitReady(deadline));

  const std::string router_host = cluster.Placed("router").host;
  std::vector<std::string> router_args = {
      "--model-dir=" + model_dir, "--model-name=" + state.model_name,
      absl::StrCat("--listen=", router_host, ":", c.router_port),
      absl::StrCat("--skip-prefill-below=", c.router_skip_prefill_below)};
  // With etcd the router finds the workers there (and workers started later); else the lists.
  if (!c.etcd) {
    for (const std::string& a : cluster.Addresses("prefill-")) {
      router_args.push_back("--prefill=" + a);
    }
    for (const std::string& a : cluster.Addresses("decode-")) {
      router_args.push_back("--decode=" + a);
    }
  }
  // HTTPS with the server certificate; no client certificates on the API, API keys instead.
  for (std::string& f : TlsFlags(tls, TlsRole::kHttpServerAndClient)) {
    router_args.push_back(std::move(f));
  }
  router_args.push_back("--api-keys-file=" + creds.api_keys_file);
  KVTIER_RETURN_IF_ERROR(cluster.Spawn("router", "kvtier-router", std::move(router_args)));
  KVTIER_RETURN_IF_ERROR(cluster.AwaitReady(deadline));
  ServerProcess& router = cluster.last();
  const int http_port = router.grpc_port();  // the router's ready file repeats its HTTP port
  auto healthy = [&] { return RouterHealthy(router_host, http_port, tls.ca_file); };
  WaitFor([&] { return healthy() || !router.process().Running(); }, deadline - absl::Now());
  if (!router.process().Running()) {
    return absl::UnavailableError("the router exited:\n" + FileTail(router.log_path()));
  }
  if (!healthy()) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the router's /health did not turn 200 in time; its log:\n", FileTail(router.log_path())));
  }

  // The root namespace reaches a namespace host's address over the bridge.
  state.endpoint = absl::StrCat("https://", router_host, ":", http_port, "/v1");
  state.processes = cluster.Release();
  if (topology.has_value()) {
    state.netns_prefix = c.netns_prefix;
    state.netns_subnet = c.netns_subnet;
  }
  absl::Status written = WriteState(state);
  if (!written.ok()) {
    std::vector<pid_t> pids;
    for (const ClusterProcess& p : state.processes) pids.push_back(p.pid);
    TerminateAll(pids, absl::Seconds(c.stop_grace_s));
    return written;  // `topology` deletes the namespaces
  }
  if (topology.has_value()) topology->Release();
  return state;
}

absl::StatusOr<NetnsTopology> ClusterTopology(const ClusterState& state) {
  if (state.netns_prefix.empty()) {
    return absl::FailedPreconditionError("the cluster of " + state.run_dir +
                                         " runs without network namespaces");
  }
  std::vector<std::string> hosts;
  for (const ClusterProcess& p : state.processes) hosts.push_back(HostName(p.name));
  return NetnsTopology::Attach(hosts, {.prefix = state.netns_prefix, .subnet = state.netns_subnet});
}

absl::Status RestartClusterProcess(ClusterState* state, const std::string& name,
                                   absl::Duration timeout) {
  auto p = std::find_if(state->processes.begin(), state->processes.end(),
                        [&](const ClusterProcess& q) { return q.name == name; });
  if (p == state->processes.end()) return absl::NotFoundError("no cluster process " + name);
  if (IsOurs(p->pid)) {
    return absl::FailedPreconditionError(absl::StrCat(name, " (pid ", p->pid, ") still runs"));
  }
  if (p->argv.empty()) return absl::FailedPreconditionError("no command line recorded for " + name);
  // A restart that fails is killed at once.
  SpawnOptions o = Detached(p->argv, p->env, absl::ZeroDuration());
  if (name == "etcd") {
    KVTIER_ASSIGN_OR_RETURN(ChildProcess etcd, membership::SpawnHealthyEtcd(
                                                   o, p->log, "http://" + p->address(), timeout));
    p->pid = etcd.Release();
    return WriteState(*state);
  }
  KVTIER_ASSIGN_OR_RETURN(ServerProcess server, ServerProcess::Spawn(o, state->run_dir, name));
  KVTIER_RETURN_IF_ERROR(server.AwaitReady(timeout));
  if (server.metrics_port() > 0) p->metrics_port = server.metrics_port();
  p->pid = server.process().Release();
  return WriteState(*state);
}

absl::Status StopCluster(const std::string& run_dir_in, absl::Duration grace, std::ostream& log) {
  const std::string run_dir = fs::absolute(run_dir_in).lexically_normal().string();
  KVTIER_ASSIGN_OR_RETURN(std::optional<ClusterState> state, ReadClusterState(run_dir));
  if (!state.has_value()) {
    return absl::NotFoundError("no cluster state in " + run_dir + " (is a cluster running?)");
  }
  // The router first; etcd last, once the others have left it.
  std::vector<pid_t> pids[2];
  for (auto it = state->processes.rbegin(); it != state->processes.rend(); ++it) {
    if (IsOurs(it->pid)) {
      log << "stopping " << it->name << " (pid " << it->pid << ")\n";
      pids[it->name == "etcd"].push_back(it->pid);
    }
  }
  for (const std::vector<pid_t>& group : pids) {
    for (pid_t pid : TerminateAll(group, grace)) {
      log << "pid " << pid << " ignored SIGTERM; sent SIGKILL\n";
    }
  }
  for (const ClusterProcess& p : state->processes) {
    if (IsOurs(p.pid)) {
      return absl::InternalError(absl::StrCat(p.name, " (pid ", p.pid, ") survived SIGKILL"));
    }
  }
  if (!state->netns_prefix.empty()) {
    log << "deleting the network namespaces " << state->netns_prefix << "-*\n";
    NetnsTopology::RemoveLeftovers(state->netns_prefix);
  }
  std::error_code ec;
  fs::remove(StateFilePath(run_dir), ec);
  for (const ClusterProcess& p : state->processes) {
    fs::remove(run_dir + "/" + p.name + ".ready.json", ec);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::deploy
