#include "common/log_limiter.h"

#include <algorithm>
#include <memory>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"

namespace kvtier {
namespace {

using ::testing::HasSubstr;

// Captures what spdlog's default logger writes during the test.
class LogLimiterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = spdlog::default_logger();
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    sink->set_pattern("%v");
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", sink));
  }
  void TearDown() override { spdlog::set_default_logger(saved_); }

  int Lines() const {
    const std::string s = out_.str();
    return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
  }

  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> saved_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
};

TEST_F(LogLimiterTest, FirstPerIntervalIsWrittenTheRestCounted) {
  LogLimiter limiter(absl::Seconds(10), [this] { return now_; });
  for (int i = 0; i < 1000; ++i) limiter.Log(spdlog::level::warn, "failure {}", i);
  EXPECT_EQ(Lines(), 1);
  EXPECT_THAT(out_.str(), HasSubstr("failure 0"));
  EXPECT_EQ(limiter.left_out(), 999u);

  now_ += absl::Seconds(11);
  limiter.Log(spdlog::level::warn, "failure {}", 1000);
  EXPECT_EQ(Lines(), 2);
  EXPECT_THAT(out_.str(), HasSubstr("failure 1000 [999 more like this in the last 10s]"));
  EXPECT_EQ(limiter.left_out(), 0u);

  // A quiet interval: the next line has nothing to report as left out.
  now_ += absl::Seconds(30);
  limiter.Log(spdlog::level::warn, "failure {}", 1001);
  EXPECT_EQ(Lines(), 3);
  EXPECT_THAT(out_.str(), testing::EndsWith("failure 1001\n"));
}

TEST_F(LogLimiterTest, EachCallSiteOfTheMacroHasItsOwnLimiter) {
  for (int i = 0; i < 100; ++i) {
    KVTIER_LOG_LIMITED(warn, "site a {}", i);
    KVTIER_LOG_LIMITED(err, "site b {}", i);
  }
  EXPECT_EQ(Lines(), 2);
  EXPECT_THAT(out_.str(), HasSubstr("site a 0"));
  EXPECT_THAT(out_.str(), HasSubstr("site b 0"));
}

}  // namespace
}  // namespace kvtier
