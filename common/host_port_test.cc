#include "common/host_port.h"

#include "gtest/gtest.h"

namespace kvtier {
namespace {

TEST(HostPortTest, SplitsAtTheLastColon) {
  absl::StatusOr<HostPort> hp = ParseHostPort("127.0.0.1:50051");
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 50051);
  hp = ParseHostPort("[::1]:0");
  ASSERT_TRUE(hp.ok()) << hp.status();
  EXPECT_EQ(hp->host, "[::1]");
  EXPECT_EQ(hp->port, 0);
}

TEST(HostPortTest, RejectsWhatIsNoEndpoint) {
  for (const char* bad : {"", "localhost", ":80", "h:", "h:x", "h:-1", "h:65536", "off"}) {
    absl::StatusOr<HostPort> hp = ParseHostPort(bad);
    EXPECT_EQ(hp.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ParseHostPort("h:70000").status().message().find("'h:70000'"), std::string::npos);
}

}  // namespace
}  // namespace kvtier
