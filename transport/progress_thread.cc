#include "transport/progress_thread.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log_limiter.h"
#include "spdlog/spdlog.h"

namespace kvtier::transport {

absl::StatusOr<std::unique_ptr<ProgressThread>> ProgressThread::Start(UcxWorker* worker) {
  auto t = std::unique_ptr<ProgressThread>(new ProgressThread());
  t->worker_ = worker;
  int efd = -1;
  ucs_status_t st = ucp_worker_get_efd(worker->handle(), &efd);
  if (st != UCS_OK) return UcsToStatus(st, "ucp_worker_get_efd");
  t->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  t->wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->epoll_fd_ < 0 || t->wake_fd_ < 0) {
    return absl::InternalError(absl::StrCat("epoll/eventfd: ", std::strerror(errno)));
  }
  for (int fd : {efd, t->wake_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(t->epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::InternalError(absl::StrCat("epoll_ctl: ", std::strerror(errno)));
    }
  }
  t->thread_ = std::thread([p = t.get()] { p->Run(); });
  return t;
}

ProgressThread::~ProgressThread() {
  Stop();
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void ProgressThread::Stop() {
  if (!thread_.joinable()) return;
  stop_.store(true);
  uint64_t one = 1;
  ssize_t n = write(wake_fd_, &one, sizeof(one));
  (void)n;
  thread_.join();
}

void ProgressThread::Run() {
  epoll_event events[2];
  while (!stop_.load(std::memory_order_relaxed)) {
    while (worker_->Progress()) {
    }
    passes_.fetch_add(1, std::memory_order_release);
    ucs_status_t st = ucp_worker_arm(worker_->handle());
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (st != UCS_OK) {
      KVTIER_LOG_LIMITED(err, "ucp_worker_arm: {}", ucs_status_string(st));
      // Fall back to a slow poll rather than spinning or stopping service.
      usleep(1000);
      continue;
    }
    int n = epoll_wait(epoll_fd_, events, 2, /*timeout_ms=*/1000);
    if (n < 0 && errno != EINTR) {
      KVTIER_LOG_LIMITED(err, "epoll_wait: {}", std::strerror(errno));
      usleep(1000);
    }
  }
}

}  // namespace kvtier::transport
