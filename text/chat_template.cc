#include "text/chat_template.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "text/utf8.h"

namespace kvtier::text {
namespace {

// Meta-Llama-3-8B-Instruct's tokenizer_config.json "chat_template".
constexpr absl::string_view kLlama3Template =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

// Qwen2-7B-Instruct's tokenizer_config.json "chat_template".
constexpr absl::string_view kChatMLTemplate =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

constexpr absl::string_view kQwen2DefaultSystem = "You are a helpful assistant.";

// Python's str.isspace() for one code point (what Jinja's `trim` filter strips).
bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Jinja's `trim`: Python's str.strip() (Unicode whitespace at both ends).
absl::string_view PythonStrip(absl::string_view s) {
  while (!s.empty()) {
    const Utf8Char c = DecodeUtf8(s);
    if (!c.valid || !IsPythonSpace(c.code_point)) break;
    s.remove_prefix(c.length);
  }
  while (!s.empty()) {
    const Utf8Char c = DecodeUtf8Before(s, s.size());
    if (!c.valid || !IsPythonSpace(c.code_point)) break;
    s.remove_suffix(c.length);
  }
  return s;
}

absl::Status CheckRoles(absl::Span<const ChatMessage> messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has role \"", role,
                                                     "\"; expected system, user or assistant"));
    }
  }
  return absl::OkStatus();
}

// Appends markers and text to a piece list, joining adjacent text.
class PieceWriter {
 public:
  PieceWriter& Marker(absl::string_view marker) {
    pieces_.push_back({std::string(marker), true});
    return *this;
  }
  PieceWriter& Text(absl::string_view text) {
    if (text.empty()) return *this;
    if (pieces_.empty() || pieces_.back().special) pieces_.push_back({"", false});
    pieces_.back().text.append(text.data(), text.size());
    return *this;
  }
  std::vector<TextPiece> Take() { return std::move(pieces_); }

 private:
  std::vector<TextPiece> pieces_;
};

}  // namespace

absl::StatusOr<std::vector<TextPiece>> RenderChatPieces(ChatFormat format,
                                                        absl::Span<const ChatMessage> messages,
                                                        bool add_generation_prompt) {
  if (absl::Status s = CheckRoles(messages); !s.ok()) return s;
  PieceWriter w;
  switch (format) {
    case ChatFormat::kLlama3:
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0) w.Marker("<|begin_of_text|>");
        w.Marker("<|start_header_id|>").Text(messages[i].role).Marker("<|end_header_id|>");
        w.Text("\n\n").Text(PythonStrip(messages[i].content)).Marker("<|eot_id|>");
      }
      if (add_generation_prompt) {
        w.Marker("<|start_header_id|>").Text("assistant").Marker("<|end_header_id|>").Text("\n\n");
      }
      return w.Take();
    case ChatFormat::kChatML:
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0 && messages[0].role != "system") {
          w.Marker("<|im_start|>").Text("system\n").Text(kQwen2DefaultSystem);
          w.Marker("<|im_end|>").Text("\n");
        }
        w.Marker("<|im_start|>").Text(messages[i].role).Text("\n").Text(messages[i].content);
        w.Marker("<|im_end|>").Text("\n");
      }
      if (add_generation_prompt) w.Marker("<|im_start|>").Text("assistant\n");
      return w.Take();
  }
  return absl::InvalidArgumentError("unknown chat format");
}

absl::StatusOr<std::string> RenderChat(ChatFormat format, absl::Span<const ChatMessage> messages,
                                       bool add_generation_prompt) {
  absl::StatusOr<std::vector<TextPiece>> pieces =
      RenderChatPieces(format, messages, add_generation_prompt);
  if (!pieces.ok()) return pieces.status();
  std::string out;
  for (const TextPiece& p : *pieces) out.append(p.text);
  return out;
}

absl::StatusOr<std::vector<TokenId>> EncodeChat(const Tokenizer& tokenizer, ChatFormat format,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt, size_t max_tokens) {
  absl::StatusOr<std::vector<TextPiece>> pieces =
      RenderChatPieces(format, messages, add_generation_prompt);
  if (!pieces.ok()) return pieces.status();
  return tokenizer.EncodePieces(*pieces, max_tokens);
}

absl::StatusOr<ChatFormat> DetectChatFormat(absl::string_view chat_template) {
  if (absl::StrContains(chat_template, "<|start_header_id|>")) return ChatFormat::kLlama3;
  if (absl::StrContains(chat_template, "<|im_start|>")) return ChatFormat::kChatML;
  return absl::UnimplementedError(
      chat_template.empty()
          ? "the model has no chat template; choose a chat format (llama3 or chatml)"
          : "the model's chat template is neither Llama-3 nor ChatML; choose a chat format "
            "(llama3 or chatml)");
}

absl::StatusOr<ChatFormat> ParseChatFormat(absl::string_view name) {
  if (name == "llama3") return ChatFormat::kLlama3;
  if (name == "chatml") return ChatFormat::kChatML;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat format \"", name, "\" (known: llama3, chatml)"));
}

absl::string_view ChatFormatName(ChatFormat format) {
  return format == ChatFormat::kLlama3 ? "llama3" : "chatml";
}

absl::string_view ChatTemplateText(ChatFormat format) {
  return format == ChatFormat::kLlama3 ? kLlama3Template : kChatMLTemplate;
}

absl::string_view ChatEndOfTurnToken(ChatFormat format) {
  return format == ChatFormat::kLlama3 ? "<|eot_id|>" : "<|im_end|>";
}

absl::StatusOr<std::vector<TokenId>> ChatStopTokenIds(ChatFormat format,
                                                      const Tokenizer& tokenizer) {
  const absl::string_view end_of_turn = ChatEndOfTurnToken(format);
  std::optional<TokenId> id = tokenizer.IdOf(end_of_turn);
  if (!id.has_value()) {
    return absl::NotFoundError(absl::StrCat("the tokenizer has no ", end_of_turn, " token (",
                                            ChatFormatName(format), " chat format)"));
  }
  std::vector<TokenId> ids = tokenizer.eos_ids();
  ids.push_back(*id);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace kvtier::text
