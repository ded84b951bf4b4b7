#include "text/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvtier::text {
namespace {

using ::testing::HasSubstr;

std::string Render(ChatFormat format, const std::vector<ChatMessage>& messages, bool gen) {
  absl::StatusOr<std::string> s = RenderChat(format, messages, gen);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : "";
}

// Expected strings are what transformers' apply_chat_template(tokenize=False) renders with the
// reference models' templates (ChatTemplateText).
TEST(ChatTemplateTest, Llama3) {
  const std::vector<ChatMessage> chat = {{"system", "You are terse."},
                                         {"user", "Hi there"},
                                         {"assistant", "Hello."},
                                         {"user", "How are you?"}};
  EXPECT_EQ(Render(ChatFormat::kLlama3, chat, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse."
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(Render(ChatFormat::kLlama3, {{"user", "Hi"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

TEST(ChatTemplateTest, Llama3TrimsContent) {
  // `message['content'] | trim` is Python's str.strip(): Unicode whitespace at both ends.
  EXPECT_EQ(Render(ChatFormat::kLlama3, {{"user", " \n\t Hi  there \r\n\xE3\x80\x80"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi  there<|eot_id|>");
  EXPECT_EQ(Render(ChatFormat::kLlama3, {{"user", "   "}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>");
}

TEST(ChatTemplateTest, ChatMLAddsQwen2DefaultSystem) {
  EXPECT_EQ(Render(ChatFormat::kChatML, {{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // An explicit system message replaces the default; content is not trimmed.
  EXPECT_EQ(Render(ChatFormat::kChatML,
                   {{"system", "Be brief."}, {"user", " Hi \n"}, {"assistant", "Hello"}}, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi \n<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n");
  // A system message that is not first does not count.
  EXPECT_THAT(Render(ChatFormat::kChatML, {{"user", "a"}, {"system", "b"}}, false),
              ::testing::StartsWith("<|im_start|>system\nYou are a helpful assistant."));
}

TEST(ChatTemplateTest, EmptyConversationRendersLikeHf) {
  EXPECT_EQ(Render(ChatFormat::kLlama3, {}, true),
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(Render(ChatFormat::kChatML, {}, true), "<|im_start|>assistant\n");
  EXPECT_EQ(Render(ChatFormat::kChatML, {}, false), "");
}

TEST(ChatTemplateTest, RejectsUnknownRoles) {
  for (ChatFormat format : {ChatFormat::kLlama3, ChatFormat::kChatML}) {
    absl::StatusOr<std::string> s = RenderChat(format, {{"user", "x"}, {"tool", "y"}}, true);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("tool"));
  }
}

TEST(ChatTemplateTest, DetectAndParseFormats) {
  EXPECT_EQ(DetectChatFormat(ChatTemplateText(ChatFormat::kLlama3)).value(), ChatFormat::kLlama3);
  EXPECT_EQ(DetectChatFormat(ChatTemplateText(ChatFormat::kChatML)).value(), ChatFormat::kChatML);
  EXPECT_EQ(DetectChatFormat("{{ '[INST] ' + message['content'] }}").status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(DetectChatFormat("").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ParseChatFormat("llama3").value(), ChatFormat::kLlama3);
  EXPECT_EQ(ParseChatFormat("chatml").value(), ChatFormat::kChatML);
  EXPECT_EQ(ParseChatFormat("mistral").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatFormatName(ChatFormat::kLlama3), "llama3");
  EXPECT_EQ(ChatFormatName(ChatFormat::kChatML), "chatml");
  EXPECT_EQ(ChatEndOfTurnToken(ChatFormat::kLlama3), "<|eot_id|>");
  EXPECT_EQ(ChatEndOfTurnToken(ChatFormat::kChatML), "<|im_end|>");
}

}  // namespace
}  // namespace kvtier::text
