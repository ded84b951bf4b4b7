#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace kvtier {

void ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn) {
  const size_t t = std::min(n, static_cast<size_t>(std::max(threads, 1)));
  if (t <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> helpers;
  helpers.reserve(t - 1);
  for (size_t k = 1; k < t; ++k) helpers.emplace_back(work);
  work();
  for (std::thread& h : helpers) h.join();
}

}  // namespace kvtier
