#include "router/http_task_queue.h"

#include <utility>

namespace kvtier::router {
namespace {

thread_local bool overflowing = false;

}  // namespace

BoundedTaskQueue::BoundedTaskQueue(int threads, int max_queued)
    : max_queued_(static_cast<size_t>(max_queued)) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(false); });
  threads_.emplace_back([this] { Work(true); });
}

BoundedTaskQueue::~BoundedTaskQueue() { shutdown(); }

bool BoundedTaskQueue::Overflowing() { return overflowing; }

void BoundedTaskQueue::enqueue(std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.size() < max_queued_ || overflow_.size() < max_queued_;
  };
  mu_.Await(absl::Condition(&room));
  (queue_.size() < max_queued_ ? queue_ : overflow_).push_back(std::move(fn));
}

void BoundedTaskQueue::shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void BoundedTaskQueue::Work(bool overflow) {
  overflowing = overflow;
  std::deque<std::function<void()>>& queue = overflow ? overflow_ : queue_;
  for (;;) {
    std::function<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue.empty() || shutdown_; };
      mu_.Await(absl::Condition(&ready));
      if (queue.empty()) return;  // shut down and drained
      fn = std::move(queue.front());
      queue.pop_front();
    }
    fn();
  }
}

}  // namespace kvtier::router
