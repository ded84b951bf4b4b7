// The progress line of long benchmark runs (bench/bench_util.h).
#include "bench/bench_util.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::bench {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;

std::string Contents(FILE* f) {
  std::rewind(f);
  std::string out;
  char buf[256];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) out.append(buf, n);
  return out;
}

TEST(ProgressTest, PrintsEveryInterval) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  std::atomic<int64_t> done{0};
  {
    Progress p(
        "serve on", 0.1,
        [&] {
          return ProgressCounts{done += 10, 1, "3 faults"};
        },
        f);
    std::this_thread::sleep_for(std::chrono::milliseconds(350));
  }
  const std::string out = Contents(f);
  std::fclose(f);
  EXPECT_THAT(out, HasSubstr("serve on t=0s: 10 done, 1 failed, "));
  EXPECT_THAT(out, ContainsRegex("serve on t=0s: 20 done, 1 failed, [0-9.]+/s, 3 faults\n"));
  EXPECT_GE(std::count(out.begin(), out.end(), '\n'), 2);
}

TEST(ProgressTest, ZeroIntervalIsOff) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  int calls = 0;
  {
    Progress p(
        "x", 0, [&] { return ProgressCounts{++calls}; }, f);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(Contents(f), "");
  std::fclose(f);
}

}  // namespace
}  // namespace kvtier::bench
