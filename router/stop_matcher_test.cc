#include "router/stop_matcher.h"

#include "gtest/gtest.h"

namespace kvtier::router {
namespace {

// Pushes `pieces` and returns everything emitted (Flush included unless stopped).
std::string PushAll(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) out += m.Push(p);
  out += m.Flush();
  return out;
}

TEST(StopMatcherTest, NoStops) {
  StopMatcher m({});
  EXPECT_EQ(m.Push("abc"), "abc");
  EXPECT_EQ(PushAll(m, {"d", "e"}), "de");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcherTest, WithinOnePiece) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.Push("abSTOPcd"), "ab");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.Push("more"), "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, AcrossPiecesHoldsBackPrefix) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.Push("abS"), "ab");  // "S" may start STOP
  EXPECT_EQ(m.Push("T"), "");
  EXPECT_EQ(m.Push("O"), "");
  EXPECT_EQ(m.Push("Pxyz"), "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcherTest, FalseStartIsReleased) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.Push("ST"), "");
  EXPECT_EQ(m.Push("x"), "STx");
  EXPECT_EQ(m.Push("ST"), "");
  EXPECT_EQ(m.Flush(), "ST");  // the end of the stream releases held-back text
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcherTest, OverlappingPrefixes) {
  // "aab" inside "aaab": the held-back part must restart correctly.
  StopMatcher m({"aab"});
  EXPECT_EQ(PushAll(m, {"a", "a", "a", "b", "c"}), "a");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcherTest, EarliestOfSeveralWins) {
  StopMatcher m({"world", "lo"});
  EXPECT_EQ(PushAll(m, {"hel", "lo wor", "ld"}), "hel");
  StopMatcher n({"\n\n", "END"});
  EXPECT_EQ(PushAll(n, {"one\n", "two E", "N", "D three"}), "one\ntwo ");
}

TEST(StopMatcherTest, OneCharacterPerPiece) {
  const std::string text = "the quick brown fox jumps";
  for (const char* stop : {"quick", "fox j", "s", "the"}) {
    StopMatcher m({stop});
    std::vector<std::string> pieces;
    for (char c : text) pieces.push_back(std::string(1, c));
    EXPECT_EQ(PushAll(m, pieces), text.substr(0, text.find(stop))) << stop;
    EXPECT_TRUE(m.stopped());
  }
}

}  // namespace
}  // namespace kvtier::router
