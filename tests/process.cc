#include "tests/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace kvtier::testing {

absl::StatusOr<ChildProcess> ChildProcess::Spawn(const std::vector<std::string>& argv,
                                                 const std::map<std::string, std::string>& env,
                                                 const std::string& log_path) {
  std::map<std::string, std::string> merged;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    size_t eq = kv.find('=');
    if (eq != std::string::npos) merged[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : env) merged[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : merged) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!log_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  }
  ChildProcess child;
  int rc = posix_spawn(&child.pid_, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    child.pid_ = -1;
    return absl::InternalError(absl::StrCat("posix_spawn ", argv[0], ": ", strerror(rc)));
  }
  return child;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& o) noexcept {
  if (this != &o) {
    if (pid_ > 0) Signal(SIGKILL, absl::Seconds(5));
    pid_ = o.pid_;
    o.pid_ = -1;
  }
  return *this;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) Signal(SIGKILL, absl::Seconds(5));
}

std::optional<int> ChildProcess::Wait(absl::Duration timeout) {
  if (pid_ <= 0) return std::nullopt;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return status;
    }
    if (absl::Now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::optional<int> ChildProcess::Signal(int sig, absl::Duration timeout) {
  if (pid_ <= 0) return std::nullopt;
  kill(pid_, sig);
  return Wait(timeout);
}

absl::StatusOr<StoreProcess> StoreProcess::Start(const std::string& dir,
                                                 const StoreProcessOptions& o) {
  StoreProcess s;
  const std::string ready = dir + "/ready.json";
  std::filesystem::remove(ready);
  s.log_path_ = dir + "/store.log";
  std::vector<std::string> argv = {
      std::string(KVTIER_BIN_DIR) + "/kvtier-store",
      "--listen=127.0.0.1:" + std::to_string(o.grpc_port),
      "--metrics-listen=127.0.0.1:0",
      "--pool-bytes=" + o.pool_bytes,
      "--slot-bytes=" + o.slot_bytes,
      "--reservation-timeout-ms=" + std::to_string(o.reservation_timeout_ms),
      "--lease-timeout-ms=" + std::to_string(o.lease_timeout_ms),
      "--ready-file=" + ready};
  if (!o.spill_dir.empty()) {
    argv.push_back("--spill-dir=" + o.spill_dir);
    argv.push_back("--spill-capacity=" + o.spill_capacity);
  }
  auto child = ChildProcess::Spawn(argv, o.env, s.log_path_);
  if (!child.ok()) return child.status();
  s.process_ = std::move(*child);
  bool up = WaitFor(
      [&] {
        std::ifstream f(ready);
        if (!f) return false;
        try {
          nlohmann::json j = nlohmann::json::parse(f);
          s.grpc_port_ = j.at("grpc_port").get<int>();
          s.metrics_port_ = j.at("metrics_port").get<int>();
          return true;
        } catch (const std::exception&) {
          return false;
        }
      },
      absl::Seconds(20));
  if (!up) {
    return absl::DeadlineExceededError(absl::StrCat("kvtier-store did not start:\n", s.log()));
  }
  return s;
}

std::string StoreProcess::log() const {
  std::ifstream f(log_path_);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

absl::StatusOr<ServerProcess> ServerProcess::Start(const std::string& binary,
                                                   const std::vector<std::string>& args,
                                                   const std::string& dir, const std::string& name,
                                                   const std::map<std::string, std::string>& env,
                                                   absl::Duration timeout) {
  ServerProcess s;
  const std::string ready = dir + "/" + name + ".ready.json";
  std::filesystem::remove(ready);
  s.log_path_ = dir + "/" + name + ".log";
  std::vector<std::string> argv = {std::string(KVTIER_BIN_DIR) + "/" + binary};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--ready-file=" + ready);
  auto child = ChildProcess::Spawn(argv, env, s.log_path_);
  if (!child.ok()) return child.status();
  s.process_ = std::move(*child);
  bool exited = false;
  bool up = WaitFor(
      [&] {
        std::ifstream f(ready);
        if (f) {
          try {
            s.grpc_port_ = nlohmann::json::parse(f).at("grpc_port").get<int>();
            return true;
          } catch (const std::exception&) {
          }
        }
        exited = s.process_.Wait(absl::ZeroDuration()).has_value();
        return exited;
      },
      timeout);
  if (!up || exited) {
    return absl::DeadlineExceededError(
        absl::StrCat(binary, exited ? " exited" : " did not start", ":\n", s.log()));
  }
  return s;
}

std::string ServerProcess::log() const {
  std::ifstream f(log_path_);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string MakeTempDir(const std::string& name) {
  std::filesystem::path p =
      std::filesystem::path(::testing::TempDir()) / absl::StrCat("kvtier_", name, "_", getpid());
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace kvtier::testing
