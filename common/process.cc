#include "common/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace kvtier {

namespace {

absl::Status Errno(absl::string_view what, int err = errno) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Live children, for the signal handler. Lock-free so that the handler may read it.
constexpr int kMaxChildren = 256;
std::atomic<pid_t> g_children[kMaxChildren];

void RegisterChild(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t expected = 0;
    if (slot.compare_exchange_strong(expected, pid)) return;
  }
}

void UnregisterChild(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

// The full path of `program` in $PATH, or "" if it is not there.
std::string FindInPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", program);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

void KillChildrenAndExit(int sig) {
  for (auto& slot : g_children) {
    const pid_t pid = slot.load();
    if (pid > 0) kill(pid, SIGTERM);
  }
  _exit(128 + sig);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ChildProcess

absl::StatusOr<ChildProcess> ChildProcess::Spawn(const SpawnOptions& o) {
  if (o.argv.empty()) return absl::InvalidArgumentError("no command");
  // Environment: ours, with o.env overriding same-named entries.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view kv(*e);
    if (!o.env.contains(std::string(kv.substr(0, kv.find('='))))) env_strings.emplace_back(kv);
  }
  for (const auto& [k, v] : o.env) env_strings.push_back(absl::StrCat(k, "=", v));
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv = o.argv;
  if (argv[0].find('/') == std::string::npos) {
    argv[0] = FindInPath(argv[0]);
    if (argv[0].empty()) {
      return absl::NotFoundError(absl::StrCat("cannot start ", o.argv[0], ": not found in PATH"));
    }
  }
  if (access(argv[0].c_str(), X_OK) != 0) return Errno(absl::StrCat("cannot start ", argv[0]));
  if (o.die_with_parent) {
    static const std::string* const setpriv = new std::string(FindInPath("setpriv"));
    if (!setpriv->empty()) argv.insert(argv.begin(), {*setpriv, "--pdeathsig", "TERM"});
  }
  for (auto& s : argv) args.push_back(s.data());
  args.push_back(nullptr);

  // Our ends of the pipes are close-on-exec, so no other child inherits them (a worker must
  // see EOF when we close its stdin, and we must see EOF when it exits).
  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1};
  auto close_pipes = [&] {
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1]}) {
      if (fd >= 0) close(fd);
    }
  };
  if (o.pipe_stdin && pipe2(in_pipe, O_CLOEXEC) != 0) return Errno("pipe");
  if (o.pipe_stdout && pipe2(out_pipe, O_CLOEXEC) != 0) {
    close_pipes();
    return Errno("pipe");
  }

  const int file_flags = O_WRONLY | O_CREAT | (o.append ? O_APPEND : O_TRUNC);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (o.pipe_stdin) {
    posix_spawn_file_actions_adddup2(&actions, in_pipe[0], STDIN_FILENO);
  } else if (o.new_session) {
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  }
  if (o.pipe_stdout) {
    posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  } else if (!o.stdout_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, o.stdout_path.c_str(), file_flags,
                                     0644);
  }
  if (o.stderr_path == "&1") {
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  } else if (!o.stderr_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, o.stderr_path.c_str(), file_flags,
                                     0644);
  }
  // The child starts with default signal dispositions and an empty mask, whatever we ignore
  // or block (an ignored SIGPIPE would otherwise survive exec).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                      (o.new_session ? POSIX_SPAWN_SETSID : 0));

  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &actions, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    close_pipes();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot start ", o.argv[0], ": ", std::strerror(rc)));
  }
  RegisterChild(pid);
  ChildProcess p;
  p.pid_ = pid;
  p.name_ = std::filesystem::path(o.argv[0]).filename().string();
  p.stop_grace_ = o.stop_grace;
  if (o.pipe_stdin) {
    close(in_pipe[0]);
    p.stdin_fd_ = in_pipe[1];
  }
  if (o.pipe_stdout) {
    close(out_pipe[1]);
    p.stdout_fd_ = out_pipe[0];
  }
  return p;
}

absl::StatusOr<ChildProcess> ChildProcess::Spawn(const std::vector<std::string>& argv,
                                                 const std::map<std::string, std::string>& env,
                                                 const std::string& log_path) {
  SpawnOptions o;
  o.argv = argv;
  o.env = env;
  o.stdout_path = log_path;
  o.stderr_path = log_path.empty() ? "" : "&1";
  o.append = true;
  o.stop_grace = absl::ZeroDuration();
  return Spawn(o);
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      name_(std::move(other.name_)),
      stdin_fd_(std::exchange(other.stdin_fd_, -1)),
      stdout_fd_(std::exchange(other.stdout_fd_, -1)),
      pending_(std::move(other.pending_)),
      exit_status_(std::exchange(other.exit_status_, std::nullopt)),
      stop_grace_(other.stop_grace_) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    if (Running()) Terminate(stop_grace_);
    CloseFds();
    pid_ = std::exchange(other.pid_, -1);
    name_ = std::move(other.name_);
    stdin_fd_ = std::exchange(other.stdin_fd_, -1);
    stdout_fd_ = std::exchange(other.stdout_fd_, -1);
    pending_ = std::move(other.pending_);
    exit_status_ = std::exchange(other.exit_status_, std::nullopt);
    stop_grace_ = other.stop_grace_;
  }
  return *this;
}

ChildProcess::~ChildProcess() {
  if (Running()) Terminate(stop_grace_);
  CloseFds();
}

void ChildProcess::CloseFds() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (stdout_fd_ >= 0) close(stdout_fd_);
  stdin_fd_ = stdout_fd_ = -1;
}

void ChildProcess::Reaped(int status) {
  exit_status_ = status;
  UnregisterChild(pid_);
}

bool ChildProcess::Running() {
  if (pid_ <= 0 || exit_status_.has_value()) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) Reaped(status);
  return !exit_status_.has_value();
}

absl::Status ChildProcess::WriteLine(absl::string_view line) {
  if (stdin_fd_ < 0) return absl::FailedPreconditionError(name_ + ": no stdin pipe");
  std::string buf = absl::StrCat(line, "\n");
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = write(stdin_fd_, buf.data() + done, buf.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(absl::StrCat("write to ", name_, " (pid ", pid_, ")"));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

void ChildProcess::CloseStdin() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  stdin_fd_ = -1;
}

absl::StatusOr<bool> ChildProcess::ReadMore(absl::Time deadline) {
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("no output from ", name_, " (pid ", pid_, ") in time"));
    }
    pollfd pfd{stdout_fd_, POLLIN, 0};
    const int pr = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000)));
    if (pr < 0 && errno != EINTR) return Errno("poll");
    if (pr <= 0) continue;
    char buf[16384];
    const ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(absl::StrCat("read from ", name_));
    pending_.append(buf, static_cast<size_t>(n));
    return n > 0;
  }
}

absl::StatusOr<std::string> ChildProcess::ReadLine(absl::Time deadline) {
  if (stdout_fd_ < 0) return absl::FailedPreconditionError(name_ + ": no stdout pipe");
  while (true) {
    const size_t nl = pending_.find('\n');
    if (nl != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      return line;
    }
    absl::StatusOr<bool> more = ReadMore(deadline);
    if (!more.ok()) return more.status();
    if (!*more) {
      return absl::UnavailableError(
          absl::StrCat(name_, " (pid ", pid_, ") closed its output (exited?)"));
    }
  }
}

absl::StatusOr<std::string> ChildProcess::ReadAll(absl::Time deadline) {
  if (stdout_fd_ < 0) return absl::FailedPreconditionError(name_ + ": no stdout pipe");
  while (true) {
    absl::StatusOr<bool> more = ReadMore(deadline);
    if (!more.ok()) return more.status();
    if (!*more) return std::exchange(pending_, std::string());
  }
}

std::optional<int> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (!Running()) return exit_status_;
    if (absl::Now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::optional<int> ChildProcess::Signal(int sig, absl::Duration timeout) {
  if (Running()) kill(pid_, sig);
  return Wait(timeout);
}

int ChildProcess::Terminate(absl::Duration grace) {
  if (!Running()) return exit_status_.value_or(0);
  if (grace > absl::ZeroDuration()) {
    kill(pid_, SIGTERM);
    if (std::optional<int> s = Wait(grace); s.has_value()) return *s;
  }
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  Reaped(status);
  return status;
}

pid_t ChildProcess::Release() {
  CloseFds();
  if (pid_ > 0 && !exit_status_.has_value()) UnregisterChild(pid_);
  exit_status_.reset();
  return std::exchange(pid_, -1);
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return absl::StrCat("status ", status);
}

absl::StatusOr<CommandResult> RunCommand(SpawnOptions options, absl::Duration timeout) {
  options.pipe_stdout = true;
  auto child = ChildProcess::Spawn(options);
  if (!child.ok()) return child.status();
  CommandResult r;
  const absl::Time deadline = absl::Now() + timeout;
  auto out = child->ReadAll(deadline);
  if (out.ok()) {
    r.output = *std::move(out);
    auto st = child->Wait(deadline - absl::Now());
    if (st.has_value()) {
      r.wait_status = *st;
      return r;
    }
  }
  r.timed_out = true;
  r.wait_status = child->Terminate(absl::Seconds(2));
  return r;
}

void InstallChildCleanupHandlers() {
  struct sigaction sa {};
  sa.sa_handler = KillChildrenAndExit;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
  // A child that dies while we write to its pipe must give us EPIPE, not kill us.
  signal(SIGPIPE, SIG_IGN);
}

bool ProcessAlive(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  // A zombie (exited, not yet reaped) counts as gone: /proc/PID/stat is "pid (comm) Z ...".
  const std::string stat = FileTail(absl::StrCat("/proc/", pid, "/stat"), std::string::npos);
  const size_t paren = stat.rfind(')');
  return !(paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z');
}

std::vector<pid_t> TerminateAll(const std::vector<pid_t>& pids, absl::Duration grace) {
  auto all_gone = [&] {
    bool any = false;
    for (pid_t pid : pids) {
      waitpid(pid, nullptr, WNOHANG);  // reaps our own children; fails harmlessly otherwise
      any = any || ProcessAlive(pid);
    }
    return !any;
  };
  for (pid_t pid : pids) {
    if (ProcessAlive(pid)) kill(pid, SIGTERM);
  }
  std::vector<pid_t> killed;
  if (WaitFor(all_gone, grace)) return killed;
  for (pid_t pid : pids) {
    if (ProcessAlive(pid)) {
      kill(pid, SIGKILL);
      killed.push_back(pid);
    }
  }
  WaitFor(all_gone, absl::Seconds(5));
  return killed;
}

absl::StatusOr<std::string> SelfExeDir() {
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return absl::InternalError(absl::StrCat("readlink /proc/self/exe: ", ec.message()));
  return exe.parent_path().string();
}

// ---------------------------------------------------------------------------------------------
// Servers

absl::StatusOr<ServerProcess> ServerProcess::Spawn(SpawnOptions o, const std::string& dir,
                                                   const std::string& name) {
  if (o.argv.empty()) return absl::InvalidArgumentError("no command");
  ServerProcess s;
  s.what_ = absl::StrCat(name, " (", std::filesystem::path(o.argv[0]).filename().string(), ")");
  s.ready_path_ = absl::StrCat(dir, "/", name, ".ready.json");
  s.log_path_ = absl::StrCat(dir, "/", name, ".log");
  std::filesystem::remove(s.ready_path_);
  if (o.argv[0].find('/') == std::string::npos) {
    o.argv[0] = absl::StrCat(KVTIER_BIN_DIR, "/", o.argv[0]);
  }
  o.argv.push_back("--ready-file=" + s.ready_path_);
  o.stdout_path = s.log_path_;
  o.stderr_path = "&1";
  o.append = true;
  o.pipe_stdin = o.pipe_stdout = false;
  absl::StatusOr<ChildProcess> child = ChildProcess::Spawn(o);
  if (!child.ok()) return child.status();
  s.process_ = std::move(*child);
  return s;
}

absl::StatusOr<ServerProcess> ServerProcess::Start(const std::string& binary,
                                                   const std::vector<std::string>& args,
                                                   const std::string& dir, const std::string& name,
                                                   const std::map<std::string, std::string>& env,
                                                   absl::Duration timeout) {
  SpawnOptions o;
  o.argv = {binary};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.env = env;
  o.stop_grace = absl::ZeroDuration();
  absl::StatusOr<ServerProcess> s = Spawn(std::move(o), dir, name);
  if (!s.ok()) return s.status();
  if (absl::Status st = s->AwaitReady(timeout); !st.ok()) return st;
  return s;
}

absl::Status ServerProcess::AwaitReady(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (std::ifstream f(ready_path_); f) {
      nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("grpc_port") && j["grpc_port"].is_number_integer()) {
        grpc_port_ = j["grpc_port"].get<int>();
        metrics_port_ = j.value("metrics_port", 0);
        return absl::OkStatus();
      }
    }
    if (!process_.Running()) {
      return absl::FailedPreconditionError(
          absl::StrCat(what_, " exited during start-up (",
                       DescribeWaitStatus(process_.Wait(absl::ZeroDuration()).value_or(0)),
                       "); its log ", log_path_, ":\n", FileTail(log_path_)));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(what_, " did not become ready within ",
                                                      absl::FormatDuration(timeout), "; its log ",
                                                      log_path_, ":\n", FileTail(log_path_)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string ServerProcess::log() const { return FileTail(log_path_, std::string::npos); }

absl::StatusOr<StoreProcess> StoreProcess::Spawn(const std::string& dir,
                                                 const StoreProcessOptions& o) {
  std::vector<std::string> args = {
      "--listen=127.0.0.1:" + std::to_string(o.grpc_port),
      o.metrics ? "--metrics-listen=127.0.0.1:0" : "--metrics-listen=off",
      "--pool-bytes=" + o.pool_bytes,
      "--slot-bytes=" + o.slot_bytes,
      "--reservation-timeout-ms=" + std::to_string(o.reservation_timeout_ms),
      "--lease-timeout-ms=" + std::to_string(o.lease_timeout_ms)};
  if (!o.spill_dir.empty()) {
    args.push_back("--spill-dir=" + o.spill_dir);
    args.push_back("--spill-capacity=" + o.spill_capacity);
  }
  SpawnOptions so;
  so.argv = {absl::StrCat(o.bin_dir.empty() ? KVTIER_BIN_DIR : o.bin_dir, "/kvtier-store")};
  so.argv.insert(so.argv.end(), args.begin(), args.end());
  so.argv.insert(so.argv.end(), o.security_args.begin(), o.security_args.end());
  so.argv.insert(so.argv.end(), o.extra_args.begin(), o.extra_args.end());
  so.env = o.env;
  so.stop_grace = o.stop_grace;
  so.new_session = o.detached;
  so.die_with_parent = !o.detached;
  StoreProcess s;
  absl::StatusOr<ServerProcess> server = ServerProcess::Spawn(std::move(so), dir, o.name);
  if (!server.ok()) return server.status();
  s.server_ = std::move(*server);
  s.start_timeout_ = o.start_timeout;
  return s;
}

absl::StatusOr<StoreProcess> StoreProcess::Start(const std::string& dir,
                                                 const StoreProcessOptions& options) {
  absl::StatusOr<StoreProcess> s = Spawn(dir, options);
  if (!s.ok()) return s.status();
  if (absl::Status st = s->AwaitReady(); !st.ok()) return st;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Ports, waits, files

absl::StatusOr<int> FreeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    absl::Status s = Errno("bind 127.0.0.1:0");
    close(fd);
    return s;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

std::string FileTail(const std::string& path, size_t max_bytes) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  if (s.size() > max_bytes) s = "..." + s.substr(s.size() - max_bytes);
  return s;
}

}  // namespace kvtier
