#include "router/http_task_queue.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace kvtier::router {
namespace {

TEST(BoundedTaskQueueTest, OverflowsThenWaits) {
  BoundedTaskQueue queue(/*threads=*/1, /*max_queued=*/1);
  absl::Notification release;
  std::atomic<int> done{0}, overflowed{0};
  auto job = [&] {
    return [&] {
      if (BoundedTaskQueue::Overflowing()) ++overflowed;
      release.WaitForNotification();
      ++done;
    };
  };
  queue.enqueue(job());  // runs on the HTTP thread
  absl::SleepFor(absl::Milliseconds(50));
  queue.enqueue(job());  // waits in the queue
  queue.enqueue(job());  // overflows
  EXPECT_TRUE([&] {
    for (int i = 0; i < 500 && overflowed == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
    return overflowed == 1;
  }());
  queue.enqueue(job());  // waits in the overflow queue
  // Both queues full: the next enqueue waits until a job ends.
  absl::Notification enqueued;
  std::thread accept([&] {
    queue.enqueue(job());
    enqueued.Notify();
  });
  EXPECT_FALSE(enqueued.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  release.Notify();
  EXPECT_TRUE(enqueued.WaitForNotificationWithTimeout(absl::Seconds(10)));
  accept.join();
  queue.shutdown();  // runs what is queued
  EXPECT_EQ(done, 5);
  EXPECT_GE(overflowed, 1);
  EXPECT_FALSE(BoundedTaskQueue::Overflowing());
}

}  // namespace
}  // namespace kvtier::router
