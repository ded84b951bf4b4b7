#include "text/stream_decoder.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "text/bpe.h"

namespace kvtier::text {
namespace {

// The id of the single-byte token of `c`.
int32_t B(char c) { return ByteTokenRank(static_cast<uint8_t>(c)); }

constexpr int32_t kEot = 256;

// A byte-level tokenizer of the 256 byte tokens (no merges) and the special token <|eot_id|>.
Tokenizer ByteTokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteLevelEncode(std::string(1, static_cast<char>(b)))] = B(b);
  const nlohmann::json json = {
      {"added_tokens", {{{"id", kEot}, {"content", "<|eot_id|>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  absl::StatusOr<Tokenizer> t = Tokenizer::FromJson(json.dump());
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

TEST(StreamDecoderTest, HoldsBackSplitCharacters) {
  const Tokenizer t = ByteTokenizer();
  StreamDecoder d(&t);
  EXPECT_EQ(d.Push(B('h')), "h");
  // "é" (C3 A9) arrives as two byte tokens.
  EXPECT_EQ(d.Push(B('\xc3')), "");
  EXPECT_EQ(d.Push(B('\xa9')), "\xc3\xa9");
  // A 4-byte emoji over four tokens.
  const std::string emoji = "\xF0\x9F\x98\x80";
  std::string out;
  for (size_t i = 0; i < emoji.size(); ++i) {
    const std::string piece = d.Push(B(emoji[i]));
    if (i + 1 < emoji.size()) {
      EXPECT_EQ(piece, "");
    }
    out += piece;
  }
  EXPECT_EQ(out, emoji);
  // An impossible byte is replaced at once; a cut character at the end by Flush.
  EXPECT_EQ(d.Push(B('\xff')), "\uFFFD");
  EXPECT_EQ(d.Push(B('\xe6')), "");
  EXPECT_EQ(d.Push(B('a')),
            "\uFFFD"
            "a");
  EXPECT_EQ(d.Push(B('\xe6')), "");
  EXPECT_EQ(d.Flush(), "\uFFFD");
  EXPECT_EQ(d.Flush(), "");
}

TEST(StreamDecoderTest, MatchesDecodeOnValidText) {
  const Tokenizer t = ByteTokenizer();
  const std::string text = "hello 日本語 world \xF0\x9F\x98\x80<|eot_id|>!";
  const std::vector<int32_t> ids = t.Encode(text).value();
  ASSERT_EQ(ids[ids.size() - 2], kEot);
  StreamDecoder skipping(&t, /*skip_special=*/true);
  StreamDecoder keeping(&t);
  std::string skipped, kept;
  for (int32_t id : ids) {
    skipped += skipping.Push(id);
    kept += keeping.Push(id);
  }
  skipped += skipping.Flush();
  kept += keeping.Flush();
  EXPECT_EQ(skipped, "hello 日本語 world \xF0\x9F\x98\x80!");
  EXPECT_EQ(kept, text);
  // Unknown ids add nothing.
  EXPECT_EQ(keeping.Push(-1) + keeping.Push(100000) + keeping.Flush(), "");
}

}  // namespace
}  // namespace kvtier::text
