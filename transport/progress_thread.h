// Event-driven progress for a UCX worker that serves one-sided traffic (the store's).
//
// Transports that emulate RMA with active messages (tcp) need the target to call progress.
// The thread progresses until idle, arms the worker (ucp_worker_arm) and sleeps in epoll on the
// worker's event fd, so an idle store costs no CPU (it wakes at least once a second). An
// eventfd wakes it for Stop(). passes() counts the times it found nothing left to progress:
// once it has grown by 2 since a moment, everything the worker had received by then (a put
// waiting in a socket buffer while the process was stopped) has been applied.
//
// Ownership: borrows the worker, which must outlive the thread; once started, no other thread
// may use the worker until Stop() returns. Start/Stop from the owning thread.
#ifndef KVTIER_TRANSPORT_PROGRESS_THREAD_H_
#define KVTIER_TRANSPORT_PROGRESS_THREAD_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "transport/ucx.h"

namespace kvtier::transport {

class ProgressThread {
 public:
  static absl::StatusOr<std::unique_ptr<ProgressThread>> Start(UcxWorker* worker);
  ~ProgressThread();  // Stops.
  ProgressThread(const ProgressThread&) = delete;
  ProgressThread& operator=(const ProgressThread&) = delete;

  // Wakes and joins the thread. Idempotent.
  void Stop();

  // Progress loops ended with nothing left to do (any thread may read it).
  uint64_t passes() const { return passes_.load(std::memory_order_acquire); }

 private:
  ProgressThread() = default;
  void Run();

  UcxWorker* worker_ = nullptr;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> passes_{0};
  std::thread thread_;
};

}  // namespace kvtier::transport

#endif  // KVTIER_TRANSPORT_PROGRESS_THREAD_H_
