#include "text/utf8.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace kvtier::text {

Utf8Char DecodeUtf8(absl::string_view s) {
  if (s.empty()) return {};
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return {b0, 1, true, false};
  // The lead byte gives the length, the payload bits and the range of the second byte
  // (which excludes overlongs, surrogates and values above U+10FFFF).
  int need;
  char32_t c;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    c = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    c = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    c = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {0, 1, false, false};
  }
  for (int i = 1; i <= need; ++i) {
    if (static_cast<size_t>(i) >= s.size()) return {0, i, false, true};
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < lo || b > hi) return {0, i, false, false};
    c = (c << 6) | (b & 0x3F);
    lo = 0x80;
    hi = 0xBF;
  }
  return {c, need + 1, true, false};
}

Utf8Char DecodeUtf8Before(absl::string_view s, size_t end) {
  if (end == 0 || end > s.size()) return {};
  size_t begin = end - 1;
  while (begin > 0 && end - begin < 4 && (static_cast<uint8_t>(s[begin]) & 0xC0) == 0x80) {
    --begin;
  }
  const Utf8Char c = DecodeUtf8(s.substr(begin, end - begin));
  if (!c.valid || begin + c.length != end) return {0, 1, false, false};
  return c;
}

size_t ValidUtf8Prefix(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const Utf8Char c = DecodeUtf8(s.substr(i));
    if (!c.valid) break;
    i += c.length;
  }
  return i;
}

void AppendUtf8(char32_t c, std::string* out) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buf);
  out->append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

size_t AppendUtf8Lossy(absl::string_view bytes, bool hold_back_cut, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    const Utf8Char c = DecodeUtf8(bytes.substr(i));
    if (c.truncated && hold_back_cut) break;
    absl::StrAppend(out, c.valid ? bytes.substr(i, c.length) : kReplacementChar);
    i += c.length;
  }
  return i;
}

std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  AppendUtf8Lossy(bytes, /*hold_back_cut=*/false, &out);
  return out;
}

std::string Nfc(absl::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; })) {
    return std::string(text);
  }
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const size_t valid = ValidUtf8Prefix(text);
    if (valid > 0) {
      utf8proc_uint8_t* mapped = nullptr;
      const utf8proc_ssize_t n =
          utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                       static_cast<utf8proc_ssize_t>(valid), &mapped,
                       static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (n >= 0) {
        out.append(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
      } else {
        absl::StrAppend(&out, text.substr(0, valid));
      }
      std::free(mapped);
      text.remove_prefix(valid);
    }
    if (!text.empty()) {  // an invalid sequence
      const int length = DecodeUtf8(text).length;
      absl::StrAppend(&out, text.substr(0, length));
      text.remove_prefix(length);
    }
  }
  return out;
}

}  // namespace kvtier::text
