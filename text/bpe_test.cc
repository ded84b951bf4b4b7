#include "text/bpe.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::text {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Merges = std::vector<std::pair<std::string, std::string>>;

// The id of the single-byte token of `c` in the vocabularies built here.
int32_t B(char c) { return ByteTokenRank(static_cast<uint8_t>(c)); }

// The 256 byte tokens (GPT-2 order), then one token per merge of raw-byte pairs (ids 256, 257,
// ... for the merges that make a new token), then `extra` raw-byte entries.
absl::flat_hash_map<std::string, int32_t> Vocab(const Merges& merges,
                                                const std::vector<std::string>& extra = {}) {
  absl::flat_hash_map<std::string, int32_t> vocab;
  for (int b = 0; b < 256; ++b) vocab[ByteLevelEncode(std::string(1, static_cast<char>(b)))] = B(b);
  int32_t next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(ByteLevelEncode(a + b))) vocab[ByteLevelEncode(a + b)] = next++;
  }
  for (const std::string& e : extra) vocab[ByteLevelEncode(e)] = next++;
  return vocab;
}

// `merges` spelled as byte-level tokens.
Merges Spelled(const Merges& merges) {
  Merges out;
  for (const auto& [a, b] : merges) out.emplace_back(ByteLevelEncode(a), ByteLevelEncode(b));
  return out;
}

std::unique_ptr<BpeModel> Make(const Merges& merges, const std::vector<std::string>& extra = {},
                               const BpeOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<BpeModel>> m =
      BpeModel::Create(Vocab(merges, extra), Spelled(merges), options);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

std::vector<int32_t> Enc(const BpeModel& m, absl::string_view word) {
  std::vector<int32_t> ids;
  m.Encode(word, &ids);
  return ids;
}

TEST(ByteLevelTest, Gpt2Mapping) {
  EXPECT_EQ(ByteLevelEncode(" "), "Ġ");
  EXPECT_EQ(ByteLevelEncode("\n"), "Ċ");
  EXPECT_EQ(ByteLevelEncode("\t"), "ĉ");
  EXPECT_EQ(ByteLevelEncode("a!~"), "a!~");
  EXPECT_EQ(ByteLevelEncode(" world"), "Ġworld");
  EXPECT_EQ(ByteLevelEncode("\xc3\xa9"), "Ã©");  // "é" as two byte characters
  EXPECT_EQ(ByteTokenRank('!'), 0);
  EXPECT_EQ(ByteTokenRank(' '), 220);  // GPT-2's id of "Ġ"
  EXPECT_EQ(ByteTokenRank('\n'), 198);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(ByteLevelDecode(ByteLevelEncode(all)), all);
  EXPECT_EQ(ByteLevelDecode("a b"), std::nullopt);  // a real space is not a byte character
  EXPECT_EQ(ByteLevelDecode("\xff"), std::nullopt);
}

TEST(BpeModelTest, MergeRanksDecideTheOrder) {
  // 256 "bc", 257 "ab"
  EXPECT_THAT(Enc(*Make({{"b", "c"}, {"a", "b"}}), "abc"), ElementsAre(B('a'), 256));
  // 256 "ab", 257 "bc"
  EXPECT_THAT(Enc(*Make({{"a", "b"}, {"b", "c"}}), "abc"), ElementsAre(256, B('c')));
  // Equal ranks resolve leftmost first: "aaa" -> "aa" "a".
  std::unique_ptr<BpeModel> aa = Make({{"a", "a"}});
  EXPECT_THAT(Enc(*aa, "aaa"), ElementsAre(256, B('a')));
  EXPECT_THAT(Enc(*aa, "aaaa"), ElementsAre(256, 256));
  // Merges chain: "hello" through "he", "ll", "hell".
  std::unique_ptr<BpeModel> hello = Make({{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}});
  EXPECT_THAT(Enc(*hello, "hello"), ElementsAre(259));
  EXPECT_THAT(Enc(*hello, "helo"), ElementsAre(256, B('l'), B('o')));
  EXPECT_THAT(Enc(*hello, ""), ElementsAre());
  // The cached result of a word is the computed one.
  EXPECT_THAT(Enc(*hello, "hello"), ElementsAre(259));
}

TEST(BpeModelTest, RepeatedMergeKeepsTheLaterRank) {
  // "bc" is listed first and again last: its rank is the last one, so "ab" (rank 1) wins.
  std::unique_ptr<BpeModel> m = Make({{"b", "c"}, {"a", "b"}, {"b", "c"}});  // 256 "bc", 257 "ab"
  EXPECT_THAT(Enc(*m, "abc"), ElementsAre(257, B('c')));
}

TEST(BpeModelTest, IgnoreMergesEmitsWholeWords) {
  // "xyz" (id 256) is in the vocabulary, but no merge leads to it.
  EXPECT_THAT(Enc(*Make({}, {"xyz"}), "xyz"), ElementsAre(B('x'), B('y'), B('z')));
  BpeOptions options;
  options.ignore_merges = true;
  std::unique_ptr<BpeModel> m = Make({}, {"xyz"}, options);
  EXPECT_THAT(Enc(*m, "xyz"), ElementsAre(256));
  EXPECT_THAT(Enc(*m, "xyzz"), ElementsAre(B('x'), B('y'), B('z'), B('z')));
}

TEST(BpeModelTest, BytesMissingFromTheVocabulary) {
  // A vocabulary of "a", "b" and "<unk>" only.
  auto make = [](const BpeOptions& options) {
    absl::flat_hash_map<std::string, int32_t> vocab = {{"a", 0}, {"b", 1}, {"<unk>", 2}};
    absl::StatusOr<std::unique_ptr<BpeModel>> m = BpeModel::Create(vocab, {}, options);
    EXPECT_TRUE(m.ok()) << m.status();
    return *std::move(m);
  };
  EXPECT_THAT(Enc(*make({}), "axyb"), ElementsAre(0, 1));  // dropped, as HF does
  BpeOptions unk;
  unk.unk_token = "<unk>";
  EXPECT_THAT(Enc(*make(unk), "axyb"), ElementsAre(0, 2, 2, 1));
  unk.fuse_unk = true;
  EXPECT_THAT(Enc(*make(unk), "axybz"), ElementsAre(0, 2, 1, 2));
}

TEST(BpeModelTest, CreateRejectsInconsistentInput) {
  auto error = [](const Merges& merges, const BpeOptions& options = {}) {
    absl::StatusOr<std::unique_ptr<BpeModel>> m =
        BpeModel::Create(Vocab({{"a", "b"}}), Spelled(merges), options);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(m.status().message());
  };
  // The second merge makes "abc", which the vocabulary lacks.
  EXPECT_THAT(error({{"a", "b"}, {"ab", "c"}}), HasSubstr("merge #1 (\"ab\", \"c\") uses \"abc\""));
  EXPECT_THAT(error({{"xy", "z"}}), HasSubstr("uses \"xy\""));  // an unknown left token
  BpeOptions unk;
  unk.unk_token = "<unk>";
  EXPECT_THAT(error({}, unk), HasSubstr("<unk>"));
}

}  // namespace
}  // namespace kvtier::text
