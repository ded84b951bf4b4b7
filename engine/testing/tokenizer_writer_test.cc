#include "engine/testing/tokenizer_writer.h"

#include <string>
#include <vector>

#include "engine/model_config.h"
#include "engine/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "text/bpe.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer.h"

namespace kvtier::testing {
namespace {

using ::testing::ElementsAre;
using text::ChatFormat;
using text::ChatMessage;
using text::Tokenizer;

// The id of the single-byte token of `c`.
int32_t B(char c) { return text::ByteTokenRank(static_cast<uint8_t>(c)); }

std::vector<int32_t> Enc(const Tokenizer& t, absl::string_view s) {
  absl::StatusOr<std::vector<int32_t>> ids = t.Encode(s);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

class TokenizerWriterTest : public TempDirTest {
 protected:
  static engine::ModelConfig Tiny() { return *engine::PresetConfig("tiny"); }
};

TEST_F(TokenizerWriterTest, SpecialIdsAreTheLastIds) {
  absl::StatusOr<SpecialTokenIds> l = TokenizerSpecialIds(ChatFormat::kLlama3, 4096);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->bos_id, 4091);
  EXPECT_THAT(l->eos_ids, ElementsAre(4092, 4095));
  EXPECT_EQ(l->pad_id, -1);
  absl::StatusOr<SpecialTokenIds> c = TokenizerSpecialIds(ChatFormat::kChatML, 4096);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->bos_id, 4093);
  EXPECT_THAT(c->eos_ids, ElementsAre(4095, 4093));
  EXPECT_EQ(c->pad_id, 4093);
  EXPECT_EQ(TokenizerSpecialIds(ChatFormat::kLlama3, 260).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DefaultChatFormat(*engine::PresetConfig("tiny-qwen2")), ChatFormat::kChatML);
  EXPECT_EQ(DefaultChatFormat(Tiny()), ChatFormat::kLlama3);
}

TEST_F(TokenizerWriterTest, Llama3WriteLoadRoundTrip) {
  absl::StatusOr<SpecialTokenIds> ids = WriteTokenizer(Tiny(), ChatFormat::kLlama3, dir_);
  ASSERT_TRUE(ids.ok()) << ids.status();
  absl::StatusOr<Tokenizer> t = Tokenizer::Load(dir_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 4096);
  EXPECT_EQ(t->IdOf("<|begin_of_text|>"), 4091);
  EXPECT_EQ(t->IdOf("<|end_of_text|>"), 4092);
  EXPECT_EQ(t->IdOf("<|start_header_id|>"), 4093);
  EXPECT_EQ(t->IdOf("<|end_header_id|>"), 4094);
  EXPECT_EQ(t->IdOf("<|eot_id|>"), 4095);
  EXPECT_EQ(t->bos_id(), ids->bos_id);
  EXPECT_THAT(t->eos_ids(), ElementsAre(4095));
  EXPECT_THAT(t->special_ids(), ElementsAre(4091, 4092, 4093, 4094, 4095));
  EXPECT_EQ(text::DetectChatFormat(t->chat_template()).value(), ChatFormat::kLlama3);
  for (int32_t id = 0; id < 4091; ++id) ASSERT_TRUE(t->IdToken(id).has_value()) << id;

  // The rendered chat encodes with the special tokens in place, starting with bos.
  const std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "Hello, cat!"}};
  const std::string prompt = text::RenderChat(ChatFormat::kLlama3, chat, true).value();
  const std::vector<int32_t> prompt_ids = Enc(*t, prompt);
  ASSERT_GE(prompt_ids.size(), 3u);
  EXPECT_EQ(prompt_ids[0], 4091);
  EXPECT_EQ(prompt_ids[1], 4093);
  EXPECT_EQ(t->Decode(prompt_ids), prompt);
  EXPECT_THAT(text::ChatStopTokenIds(ChatFormat::kLlama3, *t).value(), ElementsAre(4095));
  // HF `encode` adds bos through the TemplateProcessing post-processor.
  EXPECT_THAT(t->EncodeWithSpecialTokens("a").value(), ElementsAre(4091, B('a')));

  for (const std::string s : {"hello world", "12345 \xF0\x9F\x98\x80 \xff\xfe", "  \n\n x"}) {
    EXPECT_EQ(t->Decode(Enc(*t, s)), s);
  }
}

TEST_F(TokenizerWriterTest, ChatMLWriteLoadRoundTrip) {
  engine::ModelConfig config = *engine::PresetConfig("tiny-qwen2");
  absl::StatusOr<SpecialTokenIds> ids = WriteTokenizer(config, ChatFormat::kChatML, dir_);
  ASSERT_TRUE(ids.ok()) << ids.status();
  absl::StatusOr<Tokenizer> t = Tokenizer::Load(dir_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 4096);
  EXPECT_EQ(t->IdOf("<|endoftext|>"), 4093);
  EXPECT_EQ(t->IdOf("<|im_start|>"), 4094);
  EXPECT_EQ(t->IdOf("<|im_end|>"), 4095);
  EXPECT_EQ(t->bos_id(), std::nullopt);  // Qwen2 never prepends bos
  EXPECT_THAT(t->eos_ids(), ElementsAre(4095));
  EXPECT_EQ(text::DetectChatFormat(t->chat_template()).value(), ChatFormat::kChatML);
  EXPECT_THAT(t->EncodeWithSpecialTokens("a").value(), ElementsAre(B('a')));
  EXPECT_THAT(text::ChatStopTokenIds(ChatFormat::kChatML, *t).value(), ElementsAre(4095));
  // The NFC normalizer is in effect.
  EXPECT_EQ(t->Decode(Enc(*t, "cafe\xcc\x81")), "caf\xc3\xa9");
  const std::string prompt =
      text::RenderChat(ChatFormat::kChatML, {{"user", "Hi"}}, /*add_generation_prompt=*/true)
          .value();
  const std::vector<int32_t> prompt_ids = Enc(*t, prompt);
  EXPECT_EQ(prompt_ids[0], 4094);
  EXPECT_EQ(t->Decode(prompt_ids), prompt);
}

TEST_F(TokenizerWriterTest, VocabSizeIsExact) {
  for (int size : {262, 300, 1000, 20000}) {
    engine::ModelConfig config = Tiny();
    config.vocab_size = size;
    for (ChatFormat format : {ChatFormat::kLlama3, ChatFormat::kChatML}) {
      absl::StatusOr<TokenizerFiles> files = BuildTokenizerFiles(config, format);
      ASSERT_TRUE(files.ok()) << files.status();
      absl::StatusOr<Tokenizer> t =
          Tokenizer::FromJson(files->tokenizer_json, files->tokenizer_config_json);
      ASSERT_TRUE(t.ok()) << t.status();
      EXPECT_EQ(t->vocab_size(), size) << text::ChatFormatName(format);
      const nlohmann::json j = nlohmann::json::parse(files->tokenizer_json);
      EXPECT_EQ(j["model"]["vocab"].size() + j["added_tokens"].size(), static_cast<size_t>(size));
    }
  }
}

TEST_F(TokenizerWriterTest, CorpusCompresses) {
  absl::StatusOr<TokenizerFiles> files = BuildTokenizerFiles(Tiny(), ChatFormat::kLlama3);
  ASSERT_TRUE(files.ok()) << files.status();
  absl::StatusOr<Tokenizer> t = Tokenizer::FromJson(files->tokenizer_json);
  ASSERT_TRUE(t.ok()) << t.status();
  const absl::string_view corpus = TokenizerTrainingCorpus();
  EXPECT_GT(corpus.size(), 4000u);
  const std::vector<int32_t> ids = Enc(*t, corpus);
  EXPECT_LT(ids.size() * 3, corpus.size()) << ids.size() << " tokens for " << corpus.size();
  EXPECT_EQ(t->Decode(ids), corpus);
  // Text the trainer never saw still encodes and decodes.
  const std::string unseen = "Zebras quietly juggle xylophones near Qatar's fjords.";
  const std::vector<int32_t> unseen_ids = Enc(*t, unseen);
  EXPECT_LT(unseen_ids.size(), unseen.size());
  EXPECT_EQ(t->Decode(unseen_ids), unseen);
}

TEST_F(TokenizerWriterTest, Deterministic) {
  ASSERT_TRUE(WriteTokenizer(Tiny(), ChatFormat::kLlama3, dir_).ok());
  const std::string json1 = ReadFile(dir_ + "/tokenizer.json");
  const std::string config1 = ReadFile(dir_ + "/tokenizer_config.json");
  ASSERT_TRUE(WriteTokenizer(Tiny(), ChatFormat::kLlama3, dir_).ok());
  EXPECT_EQ(ReadFile(dir_ + "/tokenizer.json"), json1);
  EXPECT_EQ(ReadFile(dir_ + "/tokenizer_config.json"), config1);
  EXPECT_FALSE(json1.empty());
  // The HF schema fields.
  const nlohmann::json j = nlohmann::json::parse(json1);
  EXPECT_EQ(j["version"], "1.0");
  EXPECT_TRUE(j["truncation"].is_null());
  EXPECT_TRUE(j["padding"].is_null());
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["ignore_merges"], true);
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
            std::string(text::kLlama3SplitPattern));
  const nlohmann::json c = nlohmann::json::parse(config1);
  EXPECT_EQ(c["bos_token"], "<|begin_of_text|>");
  EXPECT_EQ(c["eos_token"], "<|eot_id|>");
  EXPECT_EQ(c["chat_template"], std::string(text::ChatTemplateText(ChatFormat::kLlama3)));
  EXPECT_EQ(c["added_tokens_decoder"]["4095"]["content"], "<|eot_id|>");
}

TEST_F(TokenizerWriterTest, MissingDirectoryIsAnError) {
  EXPECT_FALSE(WriteTokenizer(Tiny(), ChatFormat::kLlama3, dir_ + "/no/such/dir").ok());
}

}  // namespace
}  // namespace kvtier::testing
