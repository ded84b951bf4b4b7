#include "deploy/cluster.h"

#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/parse_bytes.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

extern char** environ;

namespace kvtier::deploy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- config ----

using Setter = std::function<absl::Status(const YAML::Node&)>;

template <typename T>
Setter Scalar(T* field) {
  return [field](const YAML::Node& n) -> absl::Status {
    if (!n.IsScalar()) return absl::InvalidArgumentError("expected a scalar");
    *field = n.as<T>();
    return absl::OkStatus();
  };
}

// Flattens nested maps into "a.b" keys.
absl::Status Flatten(const YAML::Node& node, const std::string& prefix,
                     std::map<std::string, YAML::Node>* out) {
  if (!node.IsMap()) return absl::InvalidArgumentError(absl::StrCat(prefix, ": expected a map"));
  for (const auto& kv : node) {
    const std::string key = prefix.empty() ? kv.first.as<std::string>()
                                           : absl::StrCat(prefix, ".", kv.first.as<std::string>());
    if (kv.second.IsMap()) {
      absl::Status s = Flatten(kv.second, key, out);
      if (!s.ok()) return s;
    } else {
      (*out)[key] = kv.second;
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const ClusterConfig& c) {
  auto bad = [](const std::string& key, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", key, ": ", why));
  };
  if (c.run_dir.empty()) return bad("run_dir", "must not be empty");
  if (c.backend != "cpu" && c.backend != "cuda" && c.backend != "auto") {
    return bad("backend", "must be cpu, cuda or auto, got '" + c.backend + "'");
  }
  if (c.model_dtype != "f32" && c.model_dtype != "bf16" && c.model_dtype != "f16") {
    return bad("model.dtype", "must be f32, bf16 or f16");
  }
  for (const auto& [key, port] : {std::pair<const char*, int>{"store.port", c.store_port},
                                  {"workers.base_port", c.worker_base_port},
                                  {"router.port", c.router_port}}) {
    if (port < 0 || port > 65535) return bad(key, "must be in [0, 65535]");
  }
  if (c.prefill_workers < 0 || c.prefill_workers > 16) return bad("prefill", "must be in [0, 16]");
  if (c.decode_workers < 1 || c.decode_workers > 16) return bad("decode", "must be in [1, 16]");
  if (c.worker_threads < 0) return bad("workers.threads", "must be >= 0");
  if (c.worker_max_batch_tokens < 16) return bad("workers.max_batch_tokens", "must be >= 16");
  if (c.router_skip_prefill_below < 0) return bad("router.skip_prefill_below", "must be >= 0");
  for (const auto& [key, text] :
       {std::pair<const char*, std::string>{"store.pool_bytes", c.store_pool_bytes},
        {"store.slot_bytes", c.store_slot_bytes},
        {"store.spill_capacity", c.store_spill_capacity},
        {"workers.kv_cache_bytes", c.worker_kv_cache_bytes}}) {
    auto b = ParseBytes(text);
    if (!b.ok()) return bad(key, std::string(b.status().message()));
  }
  if (c.ready_timeout_s <= 0) return bad("ready_timeout_s", "must be > 0");
  if (c.stop_grace_s < 0) return bad("stop_grace_s", "must be >= 0");
  return absl::OkStatus();
}

// ---- processes ----

// posix_spawn of argv (argv[0] a path, or a name looked up in PATH when `search_path`),
// stdin from /dev/null, stdout and stderr appended to `log_path`.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log_path,
                            bool new_session, bool search_path = false) {
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (auto& s : copy) args.push_back(s.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  if (new_session) posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  pid_t pid = -1;
  int rc = search_path ? posix_spawnp(&pid, args[0], &actions, &attr, args.data(), environ)
                       : posix_spawn(&pid, args[0], &actions, &attr, args.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0)
    return absl::InternalError(absl::StrCat("posix_spawn ", argv[0], ": ", strerror(rc)));
  return pid;
}

// Waits up to `timeout` for our child `pid`; returns its wait status or nullopt.
std::optional<int> WaitChild(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    if (absl::Now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& path, size_t bytes = 3000) {
  std::string s = ReadFile(path);
  return s.size() <= bytes ? s : "..." + s.substr(s.size() - bytes);
}

// Whether `pid` is alive and runs one of our binaries (guards against pid reuse).
bool IsOurs(pid_t pid) {
  if (!ProcessAlive(pid)) return false;
  std::string cmd = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
  return cmd.empty() || absl::StrContains(cmd, "kvtier");
}

absl::Status WriteState(const ClusterState& s) {
  json j = {{"run_dir", s.run_dir},
            {"endpoint", s.endpoint},
            {"model_name", s.model_name},
            {"backend", s.backend},
            {"processes", json::array()}};
  for (const ClusterProcess& p : s.processes) {
    j["processes"].push_back({{"name", p.name}, {"pid", p.pid}, {"port", p.port}, {"log", p.log}});
  }
  const std::string path = StateFilePath(s.run_dir);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << j.dump(2) << "\n";
    if (!f) return absl::InternalError("cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError("cannot write " + path + ": " + ec.message());
  return absl::OkStatus();
}

// Stops `procs` (reverse order): SIGTERM, then SIGKILL after `grace`. Reaps our own children.
void StopProcesses(const std::vector<ClusterProcess>& procs, absl::Duration grace,
                   std::ostream& log) {
  std::vector<pid_t> live;
  for (auto it = procs.rbegin(); it != procs.rend(); ++it) {
    if (it->pid > 0 && IsOurs(it->pid)) {
      log << "stopping " << it->name << " (pid " << it->pid << ")\n";
      kill(it->pid, SIGTERM);
      live.push_back(it->pid);
    }
  }
  auto wait_all = [&](absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      bool any = false;
      for (pid_t pid : live) {
        waitpid(pid, nullptr, WNOHANG);  // ours when called from StartCluster
        any = any || ProcessAlive(pid);
      }
      if (!any || absl::Now() >= deadline) return !any;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  };
  if (wait_all(grace)) return;
  for (pid_t pid : live) {
    if (ProcessAlive(pid)) {
      log << "pid " << pid << " ignored SIGTERM; sending SIGKILL\n";
      kill(pid, SIGKILL);
    }
  }
  wait_all(absl::Seconds(5));
}

// A process being started: its ready file is read into `port`.
struct Pending {
  ClusterProcess proc;
  std::string ready_file;
  std::string port_key = "grpc_port";
};

absl::Status WaitReady(std::vector<Pending*> pending, absl::Time deadline) {
  while (true) {
    bool all = true;
    for (Pending* p : pending) {
      if (p->proc.port > 0) continue;
      std::ifstream f(p->ready_file);
      if (f) {
        json j = json::parse(f, nullptr, false);
        if (!j.is_discarded() && j.contains(p->port_key) && j[p->port_key].is_number_integer()) {
          p->proc.port = j[p->port_key].get<int>();
          continue;
        }
      }
      int status = 0;
      if (waitpid(p->proc.pid, &status, WNOHANG) == p->proc.pid) {
        p->proc.pid = -1;
        return absl::UnavailableError(absl::StrCat(p->proc.name, " exited (status ", status,
                                                   ") before it was ready; its log ", p->proc.log,
                                                   ":\n", Tail(p->proc.log)));
      }
      all = false;
    }
    if (all) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      for (Pending* p : pending) {
        if (p->proc.port == 0) {
          return absl::DeadlineExceededError(absl::StrCat(
              p->proc.name, " not ready in time; its log ", p->proc.log, ":\n", Tail(p->proc.log)));
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string ResolveBackend(const std::string& backend, const std::string& run_dir) {
  if (backend != "auto") return backend;
  const std::string out = run_dir + "/nvidia-smi.txt";
  fs::remove(out);
  auto pid = Spawn({"nvidia-smi", "-L"}, out, false, /*search_path=*/true);
  if (!pid.ok()) return "cpu";
  std::optional<int> st = WaitChild(*pid, absl::Seconds(10));
  if (!st) {
    kill(*pid, SIGKILL);
    WaitChild(*pid, absl::Seconds(2));
    return "cpu";
  }
  if (!WIFEXITED(*st) || WEXITSTATUS(*st) != 0) return "cpu";
  return absl::StrContains(ReadFile(out), "GPU ") ? "cuda" : "cpu";
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
  const std::string log_path = run_dir + "/model-init.log";
  auto pid = Spawn({bin_dir + "/kvtier-model", "init", "--shape", c.model_shape, "--dtype",
                    c.model_dtype, "--seed", std::to_string(c.model_seed), "--out", tmp},
                   log_path, false);
  if (!pid.ok()) return pid.status();
  std::optional<int> st = WaitChild(*pid, absl::Seconds(c.ready_timeout_s));
  if (!st) {
    kill(*pid, SIGKILL);
    WaitChild(*pid, absl::Seconds(5));
    return absl::DeadlineExceededError("kvtier-model init did not finish in time");
  }
  if (!WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
    return absl::InternalError("kvtier-model init failed:\n" + Tail(log_path));
  }
  fs::rename(tmp, model_dir, ec);
  if (ec) return absl::InternalError("cannot move the model to " + model_dir + ": " + ec.message());
  return absl::OkStatus();
}

bool RouterHealthy(int port) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(1, 0);
  cli.set_read_timeout(2, 0);
  httplib::Result r = cli.Get("/health");
  return r && r->status == 200;
}

std::string PortArg(int base, int index) { return std::to_string(base == 0 ? 0 : base + index); }

}  // namespace

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  ClusterConfig c;
  if (path.empty()) return c;
  std::map<std::string, Setter> fields = {
      {"run_dir", Scalar(&c.run_dir)},
      {"backend", Scalar(&c.backend)},
      {"log_level", Scalar(&c.log_level)},
      {"ready_timeout_s", Scalar(&c.ready_timeout_s)},
      {"stop_grace_s", Scalar(&c.stop_grace_s)},
      {"model.dir", Scalar(&c.model_dir)},
      {"model.shape", Scalar(&c.model_shape)},
      {"model.dtype", Scalar(&c.model_dtype)},
      {"model.seed", Scalar(&c.model_seed)},
      {"model.name", Scalar(&c.model_name)},
      {"store.port", Scalar(&c.store_port)},
      {"store.pool_bytes", Scalar(&c.store_pool_bytes)},
      {"store.slot_bytes", Scalar(&c.store_slot_bytes)},
      {"store.spill_capacity", Scalar(&c.store_spill_capacity)},
      {"prefill", Scalar(&c.prefill_workers)},
      {"decode", Scalar(&c.decode_workers)},
      {"workers.threads", Scalar(&c.worker_threads)},
      {"workers.kv_cache_bytes", Scalar(&c.worker_kv_cache_bytes)},
      {"workers.max_batch_tokens", Scalar(&c.worker_max_batch_tokens)},
      {"workers.base_port", Scalar(&c.worker_base_port)},
      {"workers.keep_blocks", Scalar(&c.worker_keep_blocks)},
      {"router.port", Scalar(&c.router_port)},
      {"router.skip_prefill_below", Scalar(&c.router_skip_prefill_below)},
  };
  if (!fs::is_regular_file(path)) return absl::NotFoundError("cannot read config " + path);
  std::map<std::string, YAML::Node> flat;
  try {
    YAML::Node root = YAML::LoadFile(path);
    if (root.IsNull()) return c;
    absl::Status s = Flatten(root, "", &flat);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  for (const auto& [key, node] : flat) {
    auto it = fields.find(key);
    if (it == fields.end()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key '", key, "'"));
    }
    try {
      absl::Status s = it->second(node);
      if (!s.ok())
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, ": ", s.message()));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", key, ": bad value '", node.as<std::string>(""), "'"));
    }
  }
  absl::Status s = Validate(c);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  return c;
}

std::string StateFilePath(const std::string& run_dir) { return run_dir + "/cluster.json"; }

bool ProcessAlive(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  // A zombie (exited, not yet reaped) counts as gone.
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  size_t paren = stat.rfind(')');
  if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z') {
    return false;
  }
  return true;
}

absl::StatusOr<std::optional<ClusterState>> ReadClusterState(const std::string& run_dir) {
  const std::string path = StateFilePath(run_dir);
  if (!fs::exists(path)) return std::optional<ClusterState>();
  json j = json::parse(ReadFile(path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("corrupt state file " + path);
  try {
    ClusterState s;
    s.run_dir = j.at("run_dir").get<std::string>();
    s.endpoint = j.at("endpoint").get<std::string>();
    s.model_name = j.value("model_name", "");
    s.backend = j.value("backend", "");
    for (const json& p : j.at("processes")) {
      s.processes.push_back({p.at("name").get<std::string>(), p.at("pid").get<pid_t>(),
                             p.at("port").get<int>(), p.value("log", "")});
    }
    return std::optional<ClusterState>(std::move(s));
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("corrupt state file ", path, ": ", e.what()));
  }
}

std::string SelfBinDir() {
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? "." : p.parent_path().string();
}

absl::StatusOr<ClusterState> StartCluster(const ClusterConfig& c, const std::string& bin_dir,
                                          std::ostream& log) {
  absl::Status valid = Validate(c);
  if (!valid.ok()) return valid;
  const std::string run_dir = fs::absolute(c.run_dir).lexically_normal().string();
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) return absl::InternalError("cannot create " + run_dir + ": " + ec.message());

  auto old = ReadClusterState(run_dir);
  if (!old.ok()) return old.status();
  if (old->has_value()) {
    for (const ClusterProcess& p : (*old)->processes) {
      if (IsOurs(p.pid)) {
        return absl::FailedPreconditionError(
            absl::StrCat("a cluster of ", run_dir, " is already running at ", (*old)->endpoint,
                         " (stop it with `kvtier down`)"));
      }
    }
    log << "removing the stale state of a cluster that is no longer running\n";
    fs::remove(StateFilePath(run_dir), ec);
  }

  const std::string model_dir = c.model_dir.empty()
                                    ? run_dir + "/models/" + c.model_shape
                                    : fs::absolute(c.model_dir).lexically_normal().string();
  absl::Status ms = EnsureModel(c, model_dir, bin_dir, run_dir, log);
  if (!ms.ok()) return ms;

  ClusterState state;
  state.run_dir = run_dir;
  state.backend = ResolveBackend(c.backend, run_dir);
  state.model_name = c.model_name.empty() ? fs::path(model_dir).filename().string() : c.model_name;
  log << "backend " << state.backend << ", model " << model_dir << "\n";

  const absl::Time deadline = absl::Now() + absl::Seconds(c.ready_timeout_s);
  std::vector<std::unique_ptr<Pending>> all;
  auto cleanup = [&](absl::Status s) -> absl::Status {
    std::vector<ClusterProcess> started;
    for (const auto& p : all) {
      if (p->proc.pid > 0) started.push_back(p->proc);
    }
    std::ostringstream quiet;
    StopProcesses(started, absl::Seconds(c.stop_grace_s), quiet);
    return s;
  };
  auto start = [&](const std::string& name, const std::string& binary,
                   std::vector<std::string> args) -> absl::StatusOr<Pending*> {
    auto p = std::make_unique<Pending>();
    p->proc.name = name;
    p->proc.log = run_dir + "/" + name + ".log";
    p->ready_file = run_dir + "/" + name + ".ready.json";
    fs::remove(p->ready_file, ec);
    std::vector<std::string> argv = {bin_dir + "/" + binary};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--ready-file=" + p->ready_file);
    argv.push_back("--log-level=" + c.log_level);
    auto pid = Spawn(argv, p->proc.log, /*new_session=*/true);
    if (!pid.ok()) return pid.status();
    p->proc.pid = *pid;
    log << "started " << name << " (pid " << *pid << ")\n";
    all.push_back(std::move(p));
    return all.back().get();
  };

  // Store.
  std::vector<std::string> store_args = {
      absl::StrCat("--listen=127.0.0.1:", c.store_port), "--metrics-listen=127.0.0.1:0",
      "--pool-bytes=" + c.store_pool_bytes, "--slot-bytes=" + c.store_slot_bytes};
  if (*ParseBytes(c.store_spill_capacity) > 0) {
    store_args.push_back("--spill-dir=" + run_dir + "/spill");
    store_args.push_back("--spill-capacity=" + c.store_spill_capacity);
  }
  auto store = start("store", "kvtier-store", store_args);
  if (!store.ok()) return cleanup(store.status());
  absl::Status s = WaitReady({*store}, deadline);
  if (!s.ok()) return cleanup(s);
  const std::string store_addr = absl::StrCat("127.0.0.1:", (*store)->proc.port);

  // Workers.
  std::vector<Pending*> prefill, decode;
  for (int role = 0; role < 2; ++role) {
    const int n = role == 0 ? c.prefill_workers : c.decode_workers;
    for (int i = 0; i < n; ++i) {
      const std::string name = absl::StrCat(role == 0 ? "prefill-" : "decode-", i);
      const int index = role == 0 ? i : c.prefill_workers + i;
      std::vector<std::string> args = {
          "--model-dir=" + model_dir,
          "--backend=" + state.backend,
          "--listen=127.0.0.1:" + PortArg(c.worker_base_port, index),
          "--store=" + store_addr,
          absl::StrCat("--threads=", c.worker_threads),
          "--kv-cache-bytes=" + c.worker_kv_cache_bytes,
          absl::StrCat("--max-batch-tokens=", c.worker_max_batch_tokens),
          absl::StrCat("--max-batch-seqs=", std::min(64, c.worker_max_batch_tokens - 1)),
          "--model-name=" + state.model_name};
      if (role == 1)
        args.push_back(c.worker_keep_blocks ? "--keep-blocks=true" : "--keep-blocks=false");
      auto w = start(name, role == 0 ? "kvtier-prefill" : "kvtier-decode", args);
      if (!w.ok()) return cleanup(w.status());
      (role == 0 ? prefill : decode).push_back(*w);
    }
  }
  std::vector<Pending*> workers = prefill;
  workers.insert(workers.end(), decode.begin(), decode.end());
  s = WaitReady(workers, deadline);
  if (!s.ok()) return cleanup(s);

  // Router.
  std::vector<std::string> router_args = {
      "--model-dir=" + model_dir, "--model-name=" + state.model_name,
      absl::StrCat("--listen=127.0.0.1:", c.router_port),
      absl::StrCat("--skip-prefill-below=", c.router_skip_prefill_below)};
  for (Pending* p : prefill)
    router_args.push_back(absl::StrCat("--prefill=127.0.0.1:", p->proc.port));
  for (Pending* p : decode)
    router_args.push_back(absl::StrCat("--decode=127.0.0.1:", p->proc.port));
  auto router = start("router", "kvtier-router", router_args);
  if (!router.ok()) return cleanup(router.status());
  (*router)->port_key = "http_port";
  s = WaitReady({*router}, deadline);
  if (!s.ok()) return cleanup(s);
  const int http_port = (*router)->proc.port;
  while (!RouterHealthy(http_port)) {
    if (absl::Now() >= deadline) {
      return cleanup(absl::DeadlineExceededError(absl::StrCat(
          "the router's /health did not turn 200 in time; its log:\n", Tail((*router)->proc.log))));
    }
    if (!ProcessAlive((*router)->proc.pid)) {
      return cleanup(absl::UnavailableError("the router exited:\n" + Tail((*router)->proc.log)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }

  state.endpoint = absl::StrCat("http://127.0.0.1:", http_port, "/v1");
  for (const auto& p : all) state.processes.push_back(p->proc);
  s = WriteState(state);
  if (!s.ok()) return cleanup(s);
  return state;
}

absl::Status StopCluster(const std::string& run_dir_in, absl::Duration grace, std::ostream& log) {
  const std::string run_dir = fs::absolute(run_dir_in).lexically_normal().string();
  auto state = ReadClusterState(run_dir);
  if (!state.ok()) return state.status();
  if (!state->has_value()) {
    return absl::NotFoundError("no cluster state in " + run_dir + " (is a cluster running?)");
  }
  StopProcesses((*state)->processes, grace, log);
  for (const ClusterProcess& p : (*state)->processes) {
    if (ProcessAlive(p.pid) && IsOurs(p.pid)) {
      return absl::InternalError(absl::StrCat(p.name, " (pid ", p.pid, ") survived SIGKILL"));
    }
  }
  std::error_code ec;
  fs::remove(StateFilePath(run_dir), ec);
  for (const ClusterProcess& p : (*state)->processes) {
    fs::remove(run_dir + "/" + p.name + ".ready.json", ec);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::deploy
