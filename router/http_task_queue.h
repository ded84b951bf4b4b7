// The router's httplib task queue (docs/serving.md, "Limits"): the connections the listen thread
// accepted, waiting for an HTTP thread, with a bound. `threads` threads serve a queue of at most
// `max_queued` connections. A connection that finds it full goes to an overflow queue of the same
// bound, served by one more thread on which Overflowing() is true: the router reads each
// request's (bounded) body there and answers 429 at once, so an overloaded router still answers
// quickly instead of letting connections pile up. When both queues are full, enqueue waits: the
// listen thread stops accepting and the kernel's listen backlog holds the next connections.
//
// httplib 0.11.4 (Debian 12) has no bounded queue of its own; httplib owns this object through
// Server::new_task_queue. Thread-safe: enqueue runs on the listen thread, the jobs on the queue's
// threads; shutdown (from httplib, after the listener closed) runs the queued jobs and joins.
#ifndef KVTIER_ROUTER_HTTP_TASK_QUEUE_H_
#define KVTIER_ROUTER_HTTP_TASK_QUEUE_H_

#include <httplib.h>

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvtier::router {

class BoundedTaskQueue : public httplib::TaskQueue {
 public:
  // Starts `threads` + 1 threads. `threads` and `max_queued` must be positive.
  BoundedTaskQueue(int threads, int max_queued);
  ~BoundedTaskQueue() override;  // shutdown()s
  BoundedTaskQueue(const BoundedTaskQueue&) = delete;
  BoundedTaskQueue& operator=(const BoundedTaskQueue&) = delete;

  // Queues `fn` (one connection) where there is room; waits while both queues are full.
  void enqueue(std::function<void()> fn) override;
  // Runs every queued job, then joins the threads. Idempotent.
  void shutdown() override;

  // True on the overflow thread (a connection that found every HTTP thread busy and the queue
  // full).
  static bool Overflowing();

 private:
  void Work(bool overflow);

  const size_t max_queued_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> overflow_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // the last one serves overflow_
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_HTTP_TASK_QUEUE_H_
