// Byte-level BPE tokenizer reading Hugging Face `tokenizer.json` files, as shipped with
// Llama-3 and Qwen2 (and GPT-2-style tokenizers): this file parses tokenizer.json and
// tokenizer_config.json, matches added/special tokens and runs the pipeline of the other text/
// parts: the NFC normalizer (text/utf8.h), the pre-tokenizer (text/pre_tokenizer.h), BPE and
// the ByteLevel decoder (text/bpe.h). See docs/engine.md, "Tokenizer and chat templates";
// text/stream_decoder.h turns ids into text for streaming.
//
// Tokenizer is move-only and owns all its parts; it is immutable after loading except for the
// BPE's internal, mutex-guarded cache of encoded words: it is safe for concurrent use from any
// thread without external synchronization.
#ifndef KVTIER_TEXT_TOKENIZER_H_
#define KVTIER_TEXT_TOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kvtier/token.h"

namespace kvtier::text {

// One entry of tokenizer.json's "added_tokens".
struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // the match also swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // matches only when not inside a word
  bool normalized = false;   // recorded; matching is always on the raw text
};

// The max_tokens of an Encode without a limit.
inline constexpr size_t kNoTokenLimit = std::numeric_limits<size_t>::max();

// One piece of a text to encode with EncodePieces: plain text, or one special token spelled out
// (a chat template's marker, text/chat_template.h).
struct TextPiece {
  std::string text;
  bool special = false;
};

class Tokenizer {
 public:
  // Reads `model_dir`/tokenizer.json and, when present, `model_dir`/tokenizer_config.json
  // (bos_token, eos_token, chat_template). NotFound without tokenizer.json; otherwise as
  // FromJson.
  static absl::StatusOr<Tokenizer> Load(const std::string& model_dir);
  // Parses tokenizer.json text (and optionally tokenizer_config.json text; "" = none).
  // InvalidArgument for malformed JSON or an inconsistent vocabulary/merges; Unimplemented for
  // a model, normalizer, pre-tokenizer or decoder this class does not implement (anything but
  // byte-level BPE), always with a message naming the field.
  static absl::StatusOr<Tokenizer> FromJson(absl::string_view tokenizer_json,
                                            absl::string_view tokenizer_config_json = "");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of `text`, like HF `encode(text, add_special_tokens=False)`: added tokens are
  // matched literally first (leftmost-longest; special ones only when `allow_special`, else
  // they are encoded as plain text), the rest is normalized, pre-tokenized and BPE-merged.
  // Any bytes are accepted (invalid UTF-8 is byte-level encoded too). Errors when the regex
  // engine fails (e.g. resource limits): Internal / ResourceExhausted; and OutOfRange once the
  // text is known to need more than `max_tokens` tokens: encoding stops there, and a word
  // (pre-tokenized piece) whose bytes alone need more tokens than are left is refused before
  // it is merged, so the work stays bounded by `max_tokens` however long the text
  // (docs/serving.md, "Limits").
  absl::StatusOr<std::vector<TokenId>> Encode(absl::string_view text, bool allow_special = true,
                                              size_t max_tokens = kNoTokenLimit) const;
  // Encode plus the post-processor's tokens (HF `encode(text)` with add_special_tokens=True):
  // Llama-3's TemplateProcessing prepends <|begin_of_text|>; ByteLevel or no post-processor
  // adds nothing. Unimplemented for other post-processors. `max_tokens` as in Encode (the
  // post-processor's tokens count).
  absl::StatusOr<std::vector<TokenId>> EncodeWithSpecialTokens(
      absl::string_view text, size_t max_tokens = kNoTokenLimit) const;
  // The ids of `pieces` concatenated: each special piece is its special token (InvalidArgument
  // when it is not exactly one special added token), text pieces are encoded with special
  // tokens off (Encode with allow_special false: text that spells a special token stays
  // text, as HF's split_special_tokens), each on its own, as HF splits a text at its special
  // tokens (whitespace next to a special token with lstrip/rstrip is dropped, as there).
  // Errors and `max_tokens` as in Encode.
  absl::StatusOr<std::vector<TokenId>> EncodePieces(absl::Span<const TextPiece> pieces,
                                                    size_t max_tokens = kNoTokenLimit) const;
  // The bytes of `ids` concatenated (added tokens as their text). Unknown ids are skipped, as
  // HF does; with `skip_special`, special tokens too. The result is raw bytes: it may hold
  // invalid or incomplete UTF-8 (HF would substitute U+FFFD); use StreamDecoder
  // (text/stream_decoder.h) or Utf8Lossy (text/utf8.h) for text.
  std::string Decode(absl::Span<const TokenId> ids, bool skip_special = false) const;
  // The normalized, pre-tokenized pieces (raw bytes, before byte-level mapping) of a text
  // with no added tokens in it. For tests and for the tokenizer trainer.
  absl::StatusOr<std::vector<std::string>> PreTokenize(absl::string_view text) const;

  // One more than the largest id (model vocabulary plus added tokens): HF `len(tokenizer)`.
  int32_t vocab_size() const;
  // The most bytes one token stands for (added tokens included): a text of more than
  // `max_token_bytes() * n` bytes cannot encode to n tokens, unless NFC composition or an added
  // token's stripping swallows bytes.
  size_t max_token_bytes() const;
  // The id of a token in its vocabulary spelling ("Ġworld", "<|eot_id|>"), added tokens
  // included.
  std::optional<TokenId> IdOf(absl::string_view token) const;
  // The vocabulary spelling of `id`; nullopt for an id no token has.
  std::optional<absl::string_view> IdToken(TokenId id) const;
  // True for added tokens marked "special".
  bool IsSpecial(TokenId id) const;
  const std::vector<AddedToken>& added_tokens() const;
  // Ids of all special added tokens, ascending.
  std::vector<TokenId> special_ids() const;

  // From tokenizer_config.json: bos_token (nullopt when null or absent), eos_token (empty
  // when absent), chat_template ("" when absent; for a list of named templates, "default").
  std::optional<TokenId> bos_id() const;
  const std::vector<TokenId>& eos_ids() const;
  const std::string& chat_template() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  // Decoded bytes of one id, or nullptr when the id is unknown or skipped.
  const std::string* TokenBytes(TokenId id, bool skip_special) const;

  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::text

#endif  // KVTIER_TEXT_TOKENIZER_H_
