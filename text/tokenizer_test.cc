#include "text/tokenizer.h"

#include <algorithm>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "text/bpe.h"
#include "text/pre_tokenizer.h"
#include "text/stream_decoder.h"
#include "text/utf8.h"

namespace kvtier::text {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::ordered_json;

// The id of the single-byte token of `c` in every tokenizer built here.
int32_t B(char c) { return ByteTokenRank(static_cast<uint8_t>(c)); }

Json PreTokenizer(absl::string_view pattern) {
  return {{"type", "Sequence"},
          {"pretokenizers", Json::array({{{"type", "Split"},
                                          {"pattern", {{"Regex", pattern}}},
                                          {"behavior", "Isolated"},
                                          {"invert", false}},
                                         {{"type", "ByteLevel"},
                                          {"add_prefix_space", false},
                                          {"trim_offsets", true},
                                          {"use_regex", false}}})}};
}

// A hand-made byte-level BPE tokenizer.json: the 256 byte tokens (GPT-2 order), then one token
// per merge (raw-byte pairs) with ids 256, 257, ..., then `extra` vocabulary entries.
struct Spec {
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> extra;
  std::vector<std::pair<std::string, bool>> added;  // content, special; ids follow the vocab
  Json pre_tokenizer = PreTokenizer(kLlama3SplitPattern);
  Json normalizer = nullptr;
  Json post_processor = nullptr;
  bool ignore_merges = false;
  bool merges_as_pairs = false;
};

Json MakeJson(const Spec& spec) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) {
    vocab[ByteLevelEncode(std::string(1, static_cast<char>(b)))] =
        ByteTokenRank(static_cast<uint8_t>(b));
  }
  int32_t next = 256;
  Json merges = Json::array();
  for (const auto& [a, b] : spec.merges) {
    const std::string left = ByteLevelEncode(a), right = ByteLevelEncode(b);
    if (spec.merges_as_pairs) {
      merges.push_back(Json::array({left, right}));
    } else {
      merges.push_back(left + " " + right);
    }
    if (!vocab.contains(left + right)) vocab[left + right] = next++;
  }
  for (const std::string& e : spec.extra) vocab[ByteLevelEncode(e)] = next++;
  Json added = Json::array();
  for (const auto& [content, special] : spec.added) {
    added.push_back({{"id", next++},
                     {"content", content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", spec.normalizer},
          {"pre_tokenizer", spec.pre_tokenizer},
          {"post_processor", spec.post_processor},
          {"decoder",
           {{"type", "ByteLevel"},
            {"add_prefix_space", true},
            {"trim_offsets", true},
            {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", spec.ignore_merges},
            {"vocab", vocab},
            {"merges", merges}}}};
}

Tokenizer Make(const Spec& spec, absl::string_view config = "") {
  absl::StatusOr<Tokenizer> t = Tokenizer::FromJson(MakeJson(spec).dump(), config);
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

// "hello" = 259, " world" = 264 (see the ids in the comments).
Spec HelloWorldSpec() {
  Spec spec;
  spec.merges = {{"h", "e"},       // 256 "he"
                 {"l", "l"},       // 257 "ll"
                 {"he", "ll"},     // 258 "hell"
                 {"hell", "o"},    // 259 "hello"
                 {" ", "w"},       // 260 "Ġw"
                 {"o", "r"},       // 261 "or"
                 {" w", "or"},     // 262 "Ġwor"
                 {"l", "d"},       // 263 "ld"
                 {" wor", "ld"}};  // 264 "Ġworld"
  spec.added = {{"<|begin_of_text|>", true}, {"<|eot_id|>", true}, {"<extra>", false}};
  return spec;
}

std::vector<int32_t> Enc(const Tokenizer& t, absl::string_view text, bool allow_special = true) {
  absl::StatusOr<std::vector<int32_t>> ids = t.Encode(text, allow_special);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

std::vector<std::string> Pieces(const Tokenizer& t, absl::string_view text) {
  absl::StatusOr<std::vector<std::string>> p = t.PreTokenize(text);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : std::vector<std::string>{};
}

// ---- Encoding --------------------------------------------------------------------------------

TEST(TokenizerTest, KnownMergesGiveExactIds) {
  Tokenizer t = Make(HelloWorldSpec());
  EXPECT_EQ(t.vocab_size(), 265 + 3);
  EXPECT_THAT(Enc(t, "hello world"), ElementsAre(259, 264));
  EXPECT_THAT(Enc(t, "hello worlds"), ElementsAre(259, 264, B('s')));
  EXPECT_THAT(Enc(t, "held"), ElementsAre(256, 263));
  EXPECT_THAT(Enc(t, "hello\nworld"), ElementsAre(259, B('\n'), B('w'), 261, 263));
  EXPECT_THAT(Enc(t, ""), ElementsAre());
  EXPECT_EQ(t.IdOf("Ġworld"), 264);
  EXPECT_EQ(t.IdOf("hello"), 259);
  EXPECT_EQ(t.IdOf("nope"), std::nullopt);
  EXPECT_EQ(t.IdToken(264), "Ġworld");
  EXPECT_EQ(t.IdToken(265), "<|begin_of_text|>");
  EXPECT_EQ(t.IdToken(100000), std::nullopt);
  EXPECT_EQ(t.IdToken(-1), std::nullopt);
}

TEST(TokenizerTest, MergesAsPairsEqualMergesAsStrings) {
  Spec strings = HelloWorldSpec();
  Spec pairs = HelloWorldSpec();
  pairs.merges_as_pairs = true;
  const std::string text = "hello world, held the world";
  EXPECT_EQ(Enc(Make(strings), text), Enc(Make(pairs), text));
}

TEST(TokenizerTest, PreTokenizerStepsFromJson) {
  // Each pre_tokenizer type and field of tokenizer.json becomes its step (text/pre_tokenizer.h).
  Spec qwen;
  qwen.pre_tokenizer = PreTokenizer(kQwen2SplitPattern);
  EXPECT_THAT(Pieces(Make(qwen), "x 12345"), ElementsAre("x", " ", "1", "2", "3", "4", "5"));
  Spec gpt2;
  gpt2.pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_THAT(Pieces(Make(gpt2), "Hello world's 12345  x"),
              ElementsAre("Hello", " world", "'s", " 12345", " ", " x"));
  gpt2.pre_tokenizer["add_prefix_space"] = true;
  EXPECT_THAT(Pieces(Make(gpt2), "Hello"), ElementsAre(" Hello"));
  gpt2.pre_tokenizer.erase("add_prefix_space");  // HF's default: true
  EXPECT_THAT(Pieces(Make(gpt2), "Hello"), ElementsAre(" Hello"));
  Spec steps;
  steps.pre_tokenizer = {
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array({{{"type", "Split"},
                     {"pattern", {{"String", "-"}}},
                     {"behavior", "MergedWithNext"},
                     {"invert", false}},
                    {{"type", "Digits"}, {"individual_digits", true}},
                    {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  EXPECT_THAT(Pieces(Make(steps), "a-b12"), ElementsAre("a", "-b", "1", "2"));
}

TEST(TokenizerTest, NfcNormalizer) {
  Spec spec;
  spec.normalizer = {{"type", "NFC"}};
  Tokenizer t = Make(spec);
  // "e" + COMBINING ACUTE ACCENT becomes U+00E9.
  EXPECT_EQ(t.Decode(Enc(t, "cafe\xcc\x81")), "caf\xc3\xa9");
  // Invalid bytes pass through untouched next to normalized text.
  EXPECT_EQ(t.Decode(Enc(t, "e\xcc\x81\xff")), "\xc3\xa9\xff");
  Spec nfkc;
  nfkc.normalizer = {{"type", "NFKC"}};
  absl::StatusOr<Tokenizer> bad = Tokenizer::FromJson(MakeJson(nfkc).dump());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnimplemented);
}

TEST(TokenizerTest, RoundTrips) {
  Tokenizer t = Make(HelloWorldSpec());
  const std::vector<std::string> texts = {
      "hello world",
      "The quick brown fox jumps over the lazy dog. 1234567890!",
      "emoji \xF0\x9F\x98\x80 and CJK \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
      "invalid \xff\xfe\x80 bytes \xc3 and a cut \xe6\x97",
      "  whitespace   runs\t\t\n\n\n   \r\n end  ",
      "numbers 3.14159 and -42 and 100000000",
      std::string("nul \0 byte", 10),
  };
  for (const std::string& s : texts) {
    EXPECT_EQ(t.Decode(Enc(t, s)), s) << s;
  }
}

TEST(TokenizerTest, SpecialTokensOnlyWhenAllowed) {
  Tokenizer t = Make(HelloWorldSpec());
  const int32_t bot = 265, eot = 266, extra = 267;
  EXPECT_THAT(Enc(t, "<|begin_of_text|>hello<|eot_id|>"), ElementsAre(bot, 259, eot));
  EXPECT_THAT(Enc(t, "hello world<|eot_id|>"), ElementsAre(259, 264, eot));
  const std::vector<int32_t> plain = Enc(t, "hello<|eot_id|>", /*allow_special=*/false);
  EXPECT_THAT(plain, Not(::testing::Contains(eot)));
  EXPECT_EQ(t.Decode(plain), "hello<|eot_id|>");
  // A non-special added token is matched either way.
  EXPECT_THAT(Enc(t, "<extra>hello", false), ElementsAre(extra, 259));
  EXPECT_TRUE(t.IsSpecial(eot));
  EXPECT_FALSE(t.IsSpecial(extra));
  EXPECT_FALSE(t.IsSpecial(259));
  EXPECT_THAT(t.special_ids(), ElementsAre(bot, eot));
  EXPECT_EQ(t.Decode(std::vector<int32_t>{bot, 259, eot}), "<|begin_of_text|>hello<|eot_id|>");
  EXPECT_EQ(t.Decode(std::vector<int32_t>{bot, 259, eot}, /*skip_special=*/true), "hello");
  EXPECT_EQ(t.Decode(std::vector<int32_t>{259, -5, 99999, 264}), "hello world");
}

TEST(TokenizerTest, EncodeStopsPastMaxTokens) {
  Tokenizer t = Make(HelloWorldSpec());
  EXPECT_THAT(Enc(t, "hello world<|eot_id|>"), ElementsAre(259, 264, 266));
  EXPECT_TRUE(t.Encode("hello world<|eot_id|>", true, 3).ok());
  EXPECT_EQ(t.Encode("hello world<|eot_id|>", true, 2).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Encode("hello world", true, 1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Encode("hello", true, 0).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(t.Encode("", true, 0).ok());
}

// The bytes of a word bound its tokens from below: a word that cannot fit in the tokens left is
// refused before BPE merges it (issue #10: an 8 MiB word took 5.6 s to merge).
TEST(TokenizerTest, LongWordPastMaxTokensIsRefusedBeforeMerging) {
  Tokenizer t = Make(HelloWorldSpec());
  EXPECT_EQ(t.max_token_bytes(), 17u);  // "<|begin_of_text|>"
  // Refusing an 8 MiB word takes less than merging a word a quarter of its size (the scan
  // that finds the word is some 20 times cheaper than merging it).
  const std::string word(8 << 20, 'l');
  absl::Time start = absl::Now();
  EXPECT_EQ(t.Encode(word, true, 1000).status().code(), absl::StatusCode::kOutOfRange);
  const absl::Duration refused = absl::Now() - start;
  start = absl::Now();
  EXPECT_TRUE(t.Encode(absl::string_view(word).substr(0, word.size() / 4)).ok());
  const absl::Duration merged = absl::Now() - start;
  EXPECT_LT(refused, merged);
  std::cerr << "8 MiB word refused in " << refused << "; a 2 MiB word merged in " << merged << "\n";
  // A word that can fit is merged as before.
  EXPECT_EQ(Enc(t, std::string(10, 'l')).size(), 5u);
  EXPECT_TRUE(t.Encode(std::string(10, 'l'), true, 5).ok());
}

TEST(TokenizerTest, EncodePiecesKeepsSpecialTokensOutOfText) {
  Tokenizer t = Make(HelloWorldSpec());
  const int32_t bot = 265, eot = 266, extra = 267;
  const std::vector<TextPiece> pieces = {
      {"<|begin_of_text|>", true}, {"hello<|eot_id|> world<extra>", false}, {"<|eot_id|>", true}};
  absl::StatusOr<std::vector<TokenId>> ids = t.EncodePieces(pieces);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->front(), bot);
  EXPECT_EQ(ids->back(), eot);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), eot), 1);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), extra), 1);  // not special: matched
  EXPECT_EQ(t.Decode(*ids), "<|begin_of_text|>hello<|eot_id|> world<extra><|eot_id|>");
  EXPECT_EQ(t.EncodePieces(pieces, ids->size() - 1).status().code(), absl::StatusCode::kOutOfRange);
  // A marker must be exactly one special token.
  EXPECT_EQ(t.EncodePieces({{"<extra>", true}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.EncodePieces({{"hello", true}}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerTest, EncodePiecesStripsAsTheMarkersDo) {
  Json json = MakeJson(HelloWorldSpec());
  json["added_tokens"][1]["lstrip"] = true;  // <|eot_id|>
  json["added_tokens"][1]["rstrip"] = true;
  absl::StatusOr<Tokenizer> t = Tokenizer::FromJson(json.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<std::vector<TokenId>> ids =
      t->EncodePieces({{"hello  ", false}, {"<|eot_id|>", true}, {"  world", false}});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, Enc(*t, "hello  <|eot_id|>  world"));
  EXPECT_THAT(*ids, ElementsAre(259, 266, B('w'), 261, 263));
}

TEST(TokenizerTest, AddedTokenStripping) {
  Json json = MakeJson(HelloWorldSpec());
  json["added_tokens"][2]["lstrip"] = true;  // <extra>
  json["added_tokens"][2]["rstrip"] = true;
  absl::StatusOr<Tokenizer> t = Tokenizer::FromJson(json.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(Enc(*t, "hello  <extra>  world"), ElementsAre(259, 267, B('w'), 261, 263));
}

TEST(TokenizerTest, SingleWordAddedTokens) {
  Json json = MakeJson(HelloWorldSpec());
  json["added_tokens"][2]["content"] = "<mask>";
  json["added_tokens"][2]["single_word"] = true;
  absl::StatusOr<Tokenizer> t = Tokenizer::FromJson(json.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  const int32_t mask = 267;
  // HF's own test case: only standalone occurrences are matched (not "A<mask>", "<mask>ony").
  const std::vector<int32_t> ids = Enc(*t, "<mask> My name <mask> A<mask> <mask>ony <mask>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), mask), 3);
  EXPECT_EQ(ids.front(), mask);
  EXPECT_EQ(ids.back(), mask);
  EXPECT_EQ(t->Decode(ids), "<mask> My name <mask> A<mask> <mask>ony <mask>");
}

TEST(TokenizerTest, PostProcessorAddsBos) {
  Spec spec = HelloWorldSpec();
  spec.post_processor = {
      {"type", "TemplateProcessing"},
      {"single", Json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {265}}}}}}};
  Tokenizer t = Make(spec);
  absl::StatusOr<std::vector<int32_t>> ids = t.EncodeWithSpecialTokens("hello");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(265, 259));
  EXPECT_THAT(Enc(t, "hello"), ElementsAre(259));
  // The post-processor's tokens count against max_tokens.
  EXPECT_TRUE(t.EncodeWithSpecialTokens("hello", 2).ok());
  EXPECT_EQ(t.EncodeWithSpecialTokens("hello", 1).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(TokenizerTest, ConfigGivesBosEosAndTemplate) {
  const std::string config = R"({
    "bos_token": "<|begin_of_text|>",
    "eos_token": {"__type": "AddedToken", "content": "<|eot_id|>", "special": true},
    "chat_template": [{"name": "tool_use", "template": "x"},
                      {"name": "default", "template": "{{ '<|im_start|>' }}"}]
  })";
  Tokenizer t = Make(HelloWorldSpec(), config);
  EXPECT_EQ(t.bos_id(), 265);
  EXPECT_THAT(t.eos_ids(), ElementsAre(266));
  EXPECT_EQ(t.chat_template(), "{{ '<|im_start|>' }}");

  Tokenizer none = Make(HelloWorldSpec(), R"({"bos_token": null})");
  EXPECT_EQ(none.bos_id(), std::nullopt);
  EXPECT_TRUE(none.eos_ids().empty());
  EXPECT_EQ(none.chat_template(), "");

  absl::StatusOr<Tokenizer> bad =
      Tokenizer::FromJson(MakeJson(HelloWorldSpec()).dump(), R"({"eos_token": "<nope>"})");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("<nope>"));
}

TEST(TokenizerTest, LongWhitespaceRun) {
  Tokenizer t = Make(HelloWorldSpec());
  const std::string text = "a" + std::string(200000, ' ') + "b\n" + std::string(50000, '\n');
  EXPECT_EQ(t.Decode(Enc(t, text)), text);
}

TEST(TokenizerTest, ConcurrentEncodeIsConsistent) {
  Tokenizer t = Make(HelloWorldSpec());
  const std::string text = "hello world, the world said hello to the other world 123456";
  const std::vector<int32_t> expected = Enc(t, text);
  std::vector<std::thread> threads;
  std::vector<char> same(4, 0);  // not vector<bool>: its elements share words
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      bool ok = true;
      for (int k = 0; k < 200; ++k) ok = ok && t.Encode(text).value() == expected;
      same[i] = ok;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_THAT(same, ::testing::Each(1));
}

// ---- Errors ----------------------------------------------------------------------------------

TEST(TokenizerErrorTest, MalformedAndUnsupportedFiles) {
  auto code = [](const std::string& json) { return Tokenizer::FromJson(json).status().code(); };
  EXPECT_EQ(code("{not json"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("[]"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code("{}"), absl::StatusCode::kInvalidArgument);

  Json json = MakeJson(HelloWorldSpec());
  Json j = json;
  j["model"]["type"] = "WordPiece";
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kUnimplemented);
  j = json;
  j["model"]["merges"].push_back("Ġw nothere");
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["model"]["merges"].push_back("onlyone");
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["model"]["vocab"]["a"] = "seven";
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["model"]["vocab"]["zz"] = 3;  // id 3 is taken
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["model"]["vocab"]["big"] = 1LL << 40;
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kUnimplemented);
  j = json;
  j["pre_tokenizer"] = nullptr;
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kUnimplemented);
  j = json;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"String", ""}};
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Neither", "x"}};
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true;
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kUnimplemented);
  j = json;
  j["model"]["unk_token"] = "<nope>";
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);
  j = json;
  j["decoder"] = nullptr;
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kUnimplemented);
  j = json;
  j["model"]["byte_fallback"] = true;
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kUnimplemented);
  j = json;
  j["added_tokens"][0]["content"] = 5;
  EXPECT_EQ(code(j.dump()), absl::StatusCode::kInvalidArgument);

  // Truncations of a valid file never crash.
  const std::string text = json.dump();
  for (size_t n = 0; n < text.size(); n += 97) (void)Tokenizer::FromJson(text.substr(0, n));
}

TEST(TokenizerErrorTest, RandomInputsNeverCrash) {
  std::mt19937 rng(7);
  Tokenizer t = Make(HelloWorldSpec());
  // Random bytes, biased towards the bytes of special tokens and UTF-8 lead bytes.
  const std::string alphabet = "<|>_eotid \n\xc3\xa9\xe6\xf0\x9f\xff hello";
  for (int i = 0; i < 300; ++i) {
    std::string text;
    const int n = static_cast<int>(rng() % 64);
    for (int k = 0; k < n; ++k) {
      text.push_back(rng() % 2 ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng()));
    }
    EXPECT_EQ(t.Decode(Enc(t, text, /*allow_special=*/false)), text);
    const std::vector<int32_t> ids = Enc(t, text);
    EXPECT_EQ(t.Decode(ids), text);
    StreamDecoder d(&t);
    std::string streamed;
    for (int32_t id : ids) streamed += d.Push(id);
    streamed += d.Flush();
    EXPECT_EQ(streamed, Utf8Lossy(text));
  }
  // Random single-byte edits of a valid file load or fail cleanly.
  const std::string json = MakeJson(HelloWorldSpec()).dump();
  for (int i = 0; i < 300; ++i) {
    std::string mutated = json;
    const std::string edits = "{}[]\":,0a -";
    mutated[rng() % mutated.size()] = edits[rng() % edits.size()];
    absl::StatusOr<Tokenizer> m = Tokenizer::FromJson(mutated);
    if (m.ok()) (void)m->Encode("hello world <|eot_id|>");
  }
}

TEST(TokenizerErrorTest, LoadNeedsTokenizerJson) {
  absl::StatusOr<Tokenizer> t = Tokenizer::Load("/nonexistent/kvtier/model");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvtier::text
