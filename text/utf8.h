// UTF-8 and Unicode normalization for the text library (docs/engine.md, "Tokenizer and chat
// templates"): the repository's one UTF-8 decoder (strict: no overlongs, surrogates or code
// points above U+10FFFF; an invalid sequence spans its maximal subpart, the unit that Python's
// errors="replace" and Rust's from_utf8_lossy replace by one U+FFFD), lossy conversion to valid
// UTF-8, and NFC. Encoding and NFC are utf8proc's.
//
// Free functions over byte strings; thread-safe.
#ifndef KVTIER_TEXT_UTF8_H_
#define KVTIER_TEXT_UTF8_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace kvtier::text {

inline constexpr absl::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// One UTF-8 sequence of a byte string.
struct Utf8Char {
  char32_t code_point = 0;  // when valid
  int length = 0;           // bytes: the character's, or its maximal invalid subpart's
  bool valid = false;
  bool truncated = false;  // not valid, but a valid beginning cut by the end of the string
};

// The sequence at the start of `s`; length 0 (and not valid) when `s` is empty.
Utf8Char DecodeUtf8(absl::string_view s);
// The character that ends at byte `end` of `s`: valid (with its length, so it starts at
// end - length) only when the bytes before `end` end with a complete valid character.
Utf8Char DecodeUtf8Before(absl::string_view s, size_t end);

// The length of the longest valid UTF-8 prefix of `s`.
size_t ValidUtf8Prefix(absl::string_view s);

// Appends the UTF-8 encoding of code point `c` (a valid scalar value) to `out`.
void AppendUtf8(char32_t c, std::string* out);

// Appends `bytes` to `out` with every invalid sequence replaced by U+FFFD and returns the bytes
// consumed: all of them, except that with `hold_back_cut` a character cut by the end of `bytes`
// (a truncated sequence) is left unconsumed, for more bytes to complete.
size_t AppendUtf8Lossy(absl::string_view bytes, bool hold_back_cut, std::string* out);
// `bytes` with every invalid sequence replaced by U+FFFD.
std::string Utf8Lossy(absl::string_view bytes);

// The NFC normalization of `text` (Unicode canonical composition); invalid sequences are kept
// as they are between the normalized valid runs.
std::string Nfc(absl::string_view text);

}  // namespace kvtier::text

#endif  // KVTIER_TEXT_UTF8_H_
