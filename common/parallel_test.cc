#include "common/parallel.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

TEST(ParallelForTest, CallsEveryIndexExactlyOnce) {
  for (int threads : {0, 1, 2, 4, 16}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{3}, size_t{1000}}) {
      std::vector<std::atomic<int>> calls(n);
      ParallelFor(n, threads, [&](size_t i) { calls[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(calls[i].load(), 1) << threads << " " << n;
    }
  }
}

TEST(ParallelForTest, UsesSeveralThreadsAndOnlyTheCallersWhenAskedForOne) {
  auto thread_ids = [](int threads) {
    absl::Mutex mu;
    std::set<std::thread::id> ids;
    ParallelFor(64, threads, [&](size_t) {
      absl::MutexLock lock(&mu);
      ids.insert(std::this_thread::get_id());
      // Hold the index a little so one thread cannot take them all before the others start.
      absl::SleepFor(absl::Milliseconds(1));
    });
    return ids;
  };
  const std::set<std::thread::id> one = thread_ids(1);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(*one.begin(), std::this_thread::get_id());
  EXPECT_GT(thread_ids(4).size(), 1u);
}

}  // namespace
}  // namespace kvtier
