// libFuzzer target: tokenizing what a client sends (text/tokenizer.h, text/stream_decoder.h,
// text/chat_template.h) with the tokenizers `kvtier-model init` writes (Llama-3 and ChatML
// styles, engine/testing/tokenizer_writer.h). The first byte picks the tokenizer and whether
// special tokens are recognised, the rest is the text. Checks: every id is below vocab_size;
// with the Llama-3 tokenizer (no normalizer) decoding gives back the exact bytes; streaming
// detokenization gives the same text as decoding at once; a user message with this content
// encodes through the chat template (text/chat_template.h EncodeChat, the router's path) with no
// more special tokens than an empty one.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "engine/model_config.h"
#include "engine/testing/tokenizer_writer.h"
#include "fuzz/fuzz_util.h"
#include "text/chat_template.h"
#include "text/stream_decoder.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace kvtier::text {
namespace {

const Tokenizer& Get(ChatFormat format) {
  static const Tokenizer* tokenizers[2] = {};
  const Tokenizer*& tok = tokenizers[static_cast<int>(format)];
  if (tok == nullptr) {
    absl::StatusOr<engine::ModelConfig> config = engine::PresetConfig("tiny");
    if (!config.ok()) std::abort();
    absl::StatusOr<testing::TokenizerFiles> files = testing::BuildTokenizerFiles(*config, format);
    if (!files.ok()) std::abort();
    absl::StatusOr<Tokenizer> t =
        Tokenizer::FromJson(files->tokenizer_json, files->tokenizer_config_json);
    if (!t.ok()) std::abort();
    tok = new Tokenizer(*std::move(t));
  }
  return *tok;
}

void CheckIds(const Tokenizer& tok, const std::vector<TokenId>& ids) {
  for (TokenId id : ids) {
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  }
}

void Check(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const ChatFormat format = (data[0] & 1) != 0 ? ChatFormat::kChatML : ChatFormat::kLlama3;
  const bool allow_special = (data[0] & 2) != 0;
  const absl::string_view text = fuzz::AsText(data + 1, size - 1);
  const Tokenizer& tok = Get(format);

  absl::StatusOr<std::vector<TokenId>> ids = tok.Encode(text, allow_special);
  if (!ids.ok()) return;  // the regex engine's limits
  CheckIds(tok, *ids);
  const std::string decoded = tok.Decode(*ids);
  if (format == ChatFormat::kLlama3 && decoded != text) std::abort();

  StreamDecoder stream(&tok);
  std::string streamed;
  for (TokenId id : *ids) streamed += stream.Push(id);
  streamed += stream.Flush();
  if (streamed != Utf8Lossy(decoded)) std::abort();

  // The router's path: a user message through the chat template. Its content is text: it adds
  // no special token to those of an empty message, whatever it spells.
  const ChatMessage message{"user", std::string(text)};
  absl::StatusOr<std::vector<TokenId>> chat = EncodeChat(tok, format, {&message, 1}, true);
  if (!chat.ok()) std::abort();
  CheckIds(tok, *chat);
  const ChatMessage empty{"user", ""};
  absl::StatusOr<std::vector<TokenId>> bare = EncodeChat(tok, format, {&empty, 1}, true);
  if (!bare.ok()) std::abort();
  auto specials = [&tok](const std::vector<TokenId>& ids) {
    return std::count_if(ids.begin(), ids.end(), [&tok](TokenId id) { return tok.IsSpecial(id); });
  };
  if (specials(*chat) != specials(*bare)) std::abort();
}

}  // namespace
}  // namespace kvtier::text

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::text::Check(data, size);
  return 0;
}
