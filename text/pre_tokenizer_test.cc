#include "text/pre_tokenizer.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::text {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<std::string> Pieces(const PreTokenizer& p, absl::string_view text) {
  absl::StatusOr<std::vector<std::string>> pieces = p.Pieces(text);
  EXPECT_TRUE(pieces.ok()) << pieces.status();
  return pieces.ok() ? *pieces : std::vector<std::string>{};
}

PreTokenizer Split(absl::string_view pattern, SplitBehavior behavior, bool literal = false) {
  PreTokenizer p;
  EXPECT_TRUE(p.AddSplit(pattern, literal, behavior).ok());
  return p;
}

TEST(PreTokenizerTest, Llama3Pattern) {
  PreTokenizer p = Split(kLlama3SplitPattern, SplitBehavior::kIsolated);
  // The published pattern: contraction alternatives first, an optional non-letter before a
  // letter run, digits in groups of up to three, " " alone before a digit (\s+(?!\S) cannot end
  // before "1", so \s+ takes the single space), and newline runs together.
  EXPECT_THAT(Pieces(p, "Hello world's 12345 test\n\n"),
              ElementsAre("Hello", " world", "'s", " ", "123", "45", " test", "\n\n"));
  EXPECT_THAT(Pieces(p, "I'M  fine!!\n  ok"),
              ElementsAre("I", "'M", " ", " fine", "!!\n", " ", " ok"));
  EXPECT_THAT(Pieces(p, "1234567"), ElementsAre("123", "456", "7"));
  EXPECT_THAT(Pieces(p, "日本語 text"), ElementsAre("日本語", " text"));
}

TEST(PreTokenizerTest, Qwen2PatternAndGpt2ByteLevel) {
  EXPECT_THAT(Pieces(Split(kQwen2SplitPattern, SplitBehavior::kIsolated), "x 12345"),
              ElementsAre("x", " ", "1", "2", "3", "4", "5"));
  PreTokenizer gpt2;
  ASSERT_TRUE(gpt2.AddByteLevel(/*add_prefix_space=*/false, /*use_regex=*/true).ok());
  EXPECT_THAT(Pieces(gpt2, "Hello world's 12345  x"),
              ElementsAre("Hello", " world", "'s", " 12345", " ", " x"));
  PreTokenizer prefixed;
  ASSERT_TRUE(prefixed.AddByteLevel(/*add_prefix_space=*/true, /*use_regex=*/true).ok());
  EXPECT_THAT(Pieces(prefixed, "Hello"), ElementsAre(" Hello"));
  EXPECT_THAT(Pieces(prefixed, " Hello"), ElementsAre(" Hello"));
  PreTokenizer no_regex;
  ASSERT_TRUE(no_regex.AddByteLevel(/*add_prefix_space=*/true, /*use_regex=*/false).ok());
  EXPECT_THAT(Pieces(no_regex, "Hello world"), ElementsAre(" Hello world"));
}

// The example of HF tokenizers' SplitDelimiterBehavior documentation.
TEST(PreTokenizerTest, SplitBehaviors) {
  const std::string text = "the-final--countdown";
  EXPECT_THAT(Pieces(Split("-", SplitBehavior::kRemoved), text),
              ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(Pieces(Split("-", SplitBehavior::kIsolated), text),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(Pieces(Split("-", SplitBehavior::kMergedWithPrevious), text),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(Pieces(Split("-", SplitBehavior::kMergedWithNext), text),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_THAT(Pieces(Split("-", SplitBehavior::kContiguous), text),
              ElementsAre("the", "-", "final", "--", "countdown"));
}

TEST(PreTokenizerTest, LiteralPatternsAndDigits) {
  // A literal "." is not the regex "." (which would remove everything).
  EXPECT_THAT(Pieces(Split(".", SplitBehavior::kRemoved, /*literal=*/true), "a.b.c"),
              ElementsAre("a", "b", "c"));
  EXPECT_THAT(Pieces(Split(".", SplitBehavior::kRemoved), "a.b.c"), IsEmpty());
  PreTokenizer runs;
  ASSERT_TRUE(runs.AddDigits(/*individual_digits=*/false).ok());
  EXPECT_THAT(Pieces(runs, "ab123c4"), ElementsAre("ab", "123", "c", "4"));
  PreTokenizer single;
  ASSERT_TRUE(single.AddDigits(/*individual_digits=*/true).ok());
  EXPECT_THAT(Pieces(single, "ab123c4"), ElementsAre("ab", "1", "2", "3", "c", "4"));
}

TEST(PreTokenizerTest, StepsApplyInOrderToEachPiece) {
  PreTokenizer p;
  ASSERT_TRUE(p.AddSplit(",", /*literal=*/true, SplitBehavior::kRemoved).ok());
  ASSERT_TRUE(p.AddByteLevel(/*add_prefix_space=*/true, /*use_regex=*/false).ok());
  EXPECT_THAT(Pieces(p, "a,b c"), ElementsAre(" a", " b c"));
  EXPECT_THAT(Pieces(PreTokenizer(), "no steps"), ElementsAre("no steps"));
  EXPECT_THAT(Pieces(p, ""), IsEmpty());
}

TEST(PreTokenizerTest, InvalidBytesFallInTheGaps) {
  PreTokenizer p = Split(kLlama3SplitPattern, SplitBehavior::kIsolated);
  EXPECT_THAT(Pieces(p,
                     "ab\xff\xfe"
                     "cd \xe6\x97"),
              ElementsAre("ab", "\xff\xfe", "cd", " ", "\xe6\x97"));
  // Every byte comes back, in order.
  const std::string text = "x\x80y \xc3(\xed\xa0\x80z";
  std::string joined;
  for (const std::string& piece : Pieces(p, text)) joined += piece;
  EXPECT_EQ(joined, text);
}

TEST(PreTokenizerTest, BadPatternsAndEmitErrors) {
  PreTokenizer p;
  EXPECT_EQ(p.AddSplit("(unclosed", false, SplitBehavior::kIsolated).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.AddSplit("", /*literal=*/true, SplitBehavior::kIsolated).code(),
            absl::StatusCode::kInvalidArgument);
  // The first error of the callback ends the split and is returned.
  PreTokenizer words = Split(" ", SplitBehavior::kRemoved, /*literal=*/true);
  int calls = 0;
  const absl::Status st = words.Split("a b c", [&](absl::string_view) {
    ++calls;
    return calls == 2 ? absl::CancelledError("stop") : absl::OkStatus();
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace kvtier::text
