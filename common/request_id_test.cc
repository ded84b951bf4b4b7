#include "common/request_id.h"

#include <string>

#include "gtest/gtest.h"

namespace kvtier {
namespace {

TEST(RequestIdTest, Alphabet) {
  EXPECT_TRUE(IsValidRequestId("chatcmpl-0123abcdef"));
  EXPECT_TRUE(IsValidRequestId("a.b_c:d-E9"));
  EXPECT_TRUE(IsValidRequestId(std::string(64, 'x')));
  EXPECT_FALSE(IsValidRequestId(""));
  EXPECT_FALSE(IsValidRequestId(std::string(65, 'x')));
  EXPECT_TRUE(IsValidRequestId(std::string(65, 'x'), 80));
  for (const char* bad : {"a b", "a\nreq=forged", "a\"b", "a/b", "\xc3\xa9", "a;b", "a,b"}) {
    EXPECT_FALSE(IsValidRequestId(bad)) << bad;
  }
}

}  // namespace
}  // namespace kvtier
