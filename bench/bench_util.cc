#include "bench/bench_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
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

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace kvtier::bench {

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

int64_t MonoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

void SleepUntilNs(int64_t t_ns) {
  timespec ts;
  ts.tv_sec = t_ns / 1000000000;
  ts.tv_nsec = t_ns % 1000000000;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

absl::StatusOr<std::string> SelfExeDir() {
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return absl::InternalError(absl::StrCat("readlink /proc/self/exe: ", ec.message()));
  return exe.parent_path().string();
}

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

// ---------------------------------------------------------------------------------------------
// TouchedBuffer, memcpy anchor

absl::StatusOr<std::unique_ptr<TouchedBuffer>> TouchedBuffer::Create(size_t bytes, uint8_t fill) {
  if (bytes == 0) return absl::InvalidArgumentError("empty buffer");
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Errno(absl::StrCat("mmap ", bytes, " bytes"));
  (void)madvise(p, bytes, MADV_HUGEPAGE);  // a hint; fine if THP is off
  std::memset(p, fill, bytes);
  return std::unique_ptr<TouchedBuffer>(new TouchedBuffer(static_cast<uint8_t*>(p), bytes));
}

TouchedBuffer::~TouchedBuffer() { munmap(data_, size_); }

absl::StatusOr<MemcpyGbps> MeasureMemcpy(size_t bytes, size_t chunk, int reps) {
  if (chunk == 0 || chunk > bytes) chunk = bytes;
  auto src = TouchedBuffer::Create(bytes, 0x11);
  if (!src.ok()) return src.status();
  auto dst = TouchedBuffer::Create(bytes, 0x22);
  if (!dst.ok()) return dst.status();
  uint8_t* const s = (*src)->data();
  uint8_t* const d = (*dst)->data();
  MemcpyGbps best;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    int64_t t0 = MonoNowNs();
    std::memcpy(d, s, bytes);
    int64_t t1 = MonoNowNs();
    best.whole = std::max(best.whole, static_cast<double>(bytes) / static_cast<double>(t1 - t0));
    t0 = MonoNowNs();
    for (size_t off = 0; off < bytes; off += chunk) {
      std::memcpy(d + off, s + off, std::min(chunk, bytes - off));
    }
    t1 = MonoNowNs();
    best.chunked =
        std::max(best.chunked, static_cast<double>(bytes) / static_cast<double>(t1 - t0));
  }
  // Read the result back so the copies cannot be optimised away.
  volatile uint8_t sink = d[bytes - 1];
  (void)sink;
  return best;  // bytes per ns == GB/s
}

absl::StatusOr<uint64_t> MemAvailableBytes() {
  std::ifstream f("/proc/meminfo");
  std::string name, unit;
  uint64_t kib = 0;
  while (f >> name >> kib) {
    std::getline(f, unit);
    if (name == "MemAvailable:") return kib * 1024;
  }
  return absl::UnavailableError("no MemAvailable in /proc/meminfo");
}

// ---------------------------------------------------------------------------------------------
// TempDir

absl::StatusOr<std::unique_ptr<TempDir>> TempDir::Create(absl::string_view prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/", prefix, "XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) return Errno(absl::StrCat("mkdtemp ", templ));
  return std::unique_ptr<TempDir>(new TempDir(templ));
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

// ---------------------------------------------------------------------------------------------
// Subprocess

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Spawn(const SpawnOptions& o) {
  if (o.argv.empty()) return absl::InvalidArgumentError("no command");
  // Environment: ours, with o.env overriding same-named entries.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view kv(*e);
    const absl::string_view name = kv.substr(0, kv.find('='));
    const bool overridden = std::any_of(o.env.begin(), o.env.end(), [&](const std::string& x) {
      return absl::string_view(x).substr(0, x.find('=')) == name;
    });
    if (!overridden) env_strings.emplace_back(kv);
  }
  env_strings.insert(env_strings.end(), o.env.begin(), o.env.end());
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

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (o.pipe_stdin) posix_spawn_file_actions_adddup2(&actions, in_pipe[0], STDIN_FILENO);
  if (o.pipe_stdout) {
    posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  } else if (!o.stdout_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, o.stdout_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
  }
  if (o.stderr_path == "&1") {
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  } else if (!o.stderr_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, o.stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
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
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

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
  auto p = std::unique_ptr<Subprocess>(new Subprocess());
  p->pid_ = pid;
  p->name_ = std::filesystem::path(o.argv[0]).filename().string();
  if (o.pipe_stdin) {
    close(in_pipe[0]);
    p->stdin_fd_ = in_pipe[1];
  }
  if (o.pipe_stdout) {
    close(out_pipe[1]);
    p->stdout_fd_ = out_pipe[0];
  }
  return p;
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !exit_status_.has_value()) Terminate();
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

void Subprocess::Reaped(int status) {
  exit_status_ = status;
  UnregisterChild(pid_);
}

bool Subprocess::Running() {
  if (exit_status_.has_value()) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) Reaped(status);
  return !exit_status_.has_value();
}

absl::Status Subprocess::WriteLine(absl::string_view line) {
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

void Subprocess::CloseStdin() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  stdin_fd_ = -1;
}

absl::StatusOr<std::string> Subprocess::ReadLine(absl::Time deadline) {
  if (stdout_fd_ < 0) return absl::FailedPreconditionError(name_ + ": no stdout pipe");
  while (true) {
    const size_t nl = pending_.find('\n');
    if (nl != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      return line;
    }
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("no answer from ", name_, " (pid ", pid_, ") in time"));
    }
    pollfd pfd{stdout_fd_, POLLIN, 0};
    const int pr = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000)));
    if (pr < 0 && errno != EINTR) return Errno("poll");
    if (pr <= 0) continue;
    char buf[4096];
    const ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(absl::StrCat("read from ", name_));
    if (n == 0) {
      return absl::UnavailableError(
          absl::StrCat(name_, " (pid ", pid_, ") closed its output (exited?)"));
    }
    pending_.append(buf, static_cast<size_t>(n));
  }
}

absl::StatusOr<std::string> Subprocess::ReadAll(absl::Time deadline) {
  if (stdout_fd_ < 0) return absl::FailedPreconditionError(name_ + ": no stdout pipe");
  std::string out = std::move(pending_);
  pending_.clear();
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      return absl::DeadlineExceededError(absl::StrCat(name_, " (pid ", pid_, ") timed out"));
    }
    pollfd pfd{stdout_fd_, POLLIN, 0};
    const int pr = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000)));
    if (pr < 0 && errno != EINTR) return Errno("poll");
    if (pr <= 0) continue;
    char buf[16384];
    const ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(absl::StrCat("read from ", name_));
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

std::optional<int> Subprocess::Wait(absl::Time deadline) {
  while (true) {
    if (!Running()) return exit_status_;
    if (absl::Now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

int Subprocess::Terminate(absl::Duration grace) {
  if (!Running()) return *exit_status_;
  kill(pid_, SIGTERM);
  if (auto s = Wait(absl::Now() + grace); s.has_value()) return *s;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  Reaped(status);
  return status;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return absl::StrCat("status ", status);
}

absl::StatusOr<CommandResult> RunCommand(SpawnOptions options, absl::Duration timeout) {
  options.pipe_stdout = true;
  auto child = Subprocess::Spawn(options);
  if (!child.ok()) return child.status();
  CommandResult r;
  const absl::Time deadline = absl::Now() + timeout;
  auto out = (*child)->ReadAll(deadline);
  if (out.ok()) {
    r.output = *std::move(out);
    auto st = (*child)->Wait(deadline);
    if (st.has_value()) {
      r.wait_status = *st;
      return r;
    }
  }
  r.timed_out = true;
  r.wait_status = (*child)->Terminate(absl::Seconds(2));
  return r;
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

void InstallChildCleanupHandlers() {
  struct sigaction sa {};
  sa.sa_handler = KillChildrenAndExit;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
  // A child that dies while we write to its pipe must give us EPIPE, not kill us.
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace kvtier::bench
