// Chat templates: turn a conversation into the prompt text a chat model was trained on, byte for
// byte what Hugging Face's `apply_chat_template` renders with the model's Jinja template, for the
// two formats kvtier serves (no Jinja interpreter: each format is implemented directly):
//
//  - kLlama3 (Meta-Llama-3-*-Instruct, the 3.0 template): "<|begin_of_text|>" then per message
//    "<|start_header_id|>{role}<|end_header_id|>\n\n{content | trim}<|eot_id|>"; the generation
//    prompt is "<|start_header_id|>assistant<|end_header_id|>\n\n". Llama-3.1's template (which
//    adds "Cutting Knowledge Date" lines to the system message) is not reproduced.
//  - kChatML (Qwen2-*-Instruct): per message "<|im_start|>{role}\n{content}<|im_end|>\n", with
//    Qwen2's default system message "You are a helpful assistant." when the first message is not
//    a system message; the generation prompt is "<|im_start|>assistant\n".
//
// A rendered conversation is a list of pieces: the template's markers (its special tokens, spelled
// out) and text (the template's own text and the messages' content). EncodeChat encodes the
// markers as special tokens and everything else as text, so a message that spells a special
// token cannot forge a turn (docs/serving.md, "Tokenization").
//
// See docs/engine.md, "Tokenizer and chat templates". Free functions over value types;
// thread-safe.
#ifndef KVTIER_TEXT_CHAT_TEMPLATE_H_
#define KVTIER_TEXT_CHAT_TEMPLATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "text/tokenizer.h"

namespace kvtier::text {

enum class ChatFormat { kLlama3, kChatML };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// The prompt of `messages` as pieces: markers (special) and text, adjacent text joined. With
// `add_generation_prompt`, ends with the header that makes the model answer as the assistant.
// InvalidArgument for a role other than system/user/assistant. An empty conversation renders as
// HF does (just the generation prompt, if asked for).
absl::StatusOr<std::vector<TextPiece>> RenderChatPieces(ChatFormat format,
                                                        absl::Span<const ChatMessage> messages,
                                                        bool add_generation_prompt);
// The pieces joined: the text HF's `apply_chat_template(tokenize=False)` renders.
absl::StatusOr<std::string> RenderChat(ChatFormat format, absl::Span<const ChatMessage> messages,
                                       bool add_generation_prompt);
// The token ids of the rendered conversation (Tokenizer::EncodePieces): the markers as their
// special tokens, the rest as text, so that special-token text inside a message is encoded as
// text (HF's split_special_tokens behaviour for content). For a conversation without such text
// the ids equal those of RenderChat's text encoded with special tokens allowed. Errors of
// RenderChatPieces, and of EncodePieces (OutOfRange past `max_tokens`).
absl::StatusOr<std::vector<TokenId>> EncodeChat(const Tokenizer& tokenizer, ChatFormat format,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt,
                                                size_t max_tokens = kNoTokenLimit);

// The format of a tokenizer_config.json "chat_template": one mentioning "<|start_header_id|>" is
// kLlama3, one mentioning "<|im_start|>" kChatML; anything else is Unimplemented.
absl::StatusOr<ChatFormat> DetectChatFormat(absl::string_view chat_template);
// "llama3" or "chatml" (a command-line flag); InvalidArgument otherwise.
absl::StatusOr<ChatFormat> ParseChatFormat(absl::string_view name);
// "llama3" or "chatml".
absl::string_view ChatFormatName(ChatFormat format);

// The Hugging Face Jinja template text of the format, as in the reference models'
// tokenizer_config.json (Meta-Llama-3-8B-Instruct, Qwen2-7B-Instruct).
absl::string_view ChatTemplateText(ChatFormat format);
// The token that ends an assistant turn: "<|eot_id|>" or "<|im_end|>".
absl::string_view ChatEndOfTurnToken(ChatFormat format);
// The ids that should stop generation in this format: the end-of-turn token plus the
// tokenizer's eos tokens, ascending, without duplicates. NotFound when the tokenizer lacks
// the end-of-turn token.
absl::StatusOr<std::vector<TokenId>> ChatStopTokenIds(ChatFormat format,
                                                      const Tokenizer& tokenizer);

}  // namespace kvtier::text

#endif  // KVTIER_TEXT_CHAT_TEMPLATE_H_
