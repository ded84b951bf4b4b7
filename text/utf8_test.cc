#include "text/utf8.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kvtier::text {
namespace {

// The decoded (code point, length, valid, truncated) of the start of `s`, as a string for
// readable failures.
std::string Decoded(absl::string_view s) {
  const Utf8Char c = DecodeUtf8(s);
  return absl::StrCat(static_cast<uint32_t>(c.code_point), "/", c.length, c.valid ? " valid" : "",
                      c.truncated ? " truncated" : "");
}

TEST(Utf8Test, DecodesValidCharacters) {
  EXPECT_EQ(Decoded("A"), "65/1 valid");
  EXPECT_EQ(Decoded("\xc3\xa9x"), "233/2 valid");             // é
  EXPECT_EQ(Decoded("\xe6\x97\xa5"), "26085/3 valid");        // 日
  EXPECT_EQ(Decoded("\xf0\x9f\x98\x80"), "128512/4 valid");   // U+1F600
  EXPECT_EQ(Decoded("\xf4\x8f\xbf\xbf"), "1114111/4 valid");  // U+10FFFF
  EXPECT_EQ(Decoded(std::string("\0", 1)), "0/1 valid");
  EXPECT_EQ(Decoded(""), "0/0");
}

TEST(Utf8Test, InvalidSequencesSpanTheirMaximalSubpart) {
  EXPECT_EQ(Decoded("\x80"), "0/1");              // a lone continuation byte
  EXPECT_EQ(Decoded("\xc0\xaf"), "0/1");          // overlong lead bytes are never valid
  EXPECT_EQ(Decoded("\xe0\x80\x80"), "0/1");      // overlong 3-byte form
  EXPECT_EQ(Decoded("\xed\xa0\x80"), "0/1");      // a surrogate
  EXPECT_EQ(Decoded("\xf4\x90\x80\x80"), "0/1");  // above U+10FFFF
  EXPECT_EQ(Decoded("\xff"), "0/1");
  EXPECT_EQ(Decoded("\xe6\x97"
                    "A"),
            "0/2");                                 // a valid beginning, then not a continuation
  EXPECT_EQ(Decoded("\xe6\x97"), "0/2 truncated");  // cut by the end
  EXPECT_EQ(Decoded("\xf0\x9f"), "0/2 truncated");
}

TEST(Utf8Test, DecodesBackwards) {
  const std::string s = "a\xc3\xa9\xe6\x97\xa5";  // "aé日"
  EXPECT_EQ(DecodeUtf8Before(s, 6).code_point, U'日');
  EXPECT_EQ(DecodeUtf8Before(s, 6).length, 3);
  EXPECT_EQ(DecodeUtf8Before(s, 3).code_point, U'é');
  EXPECT_EQ(DecodeUtf8Before(s, 1).code_point, U'a');
  EXPECT_FALSE(DecodeUtf8Before(s, 2).valid);  // inside "é"
  EXPECT_FALSE(DecodeUtf8Before(s, 0).valid);
  EXPECT_FALSE(DecodeUtf8Before("\xa9", 1).valid);
  EXPECT_FALSE(DecodeUtf8Before("x\xe6\x97", 3).valid);
}

TEST(Utf8Test, ValidPrefix) {
  EXPECT_EQ(ValidUtf8Prefix("abc\xff"
                            "def"),
            3u);
  EXPECT_EQ(ValidUtf8Prefix("\xe6\x97\xa5\xe6\x9c\xac"), 6u);
  EXPECT_EQ(ValidUtf8Prefix("ab\xe6\x97"), 2u);
  EXPECT_EQ(ValidUtf8Prefix(""), 0u);
}

TEST(Utf8Test, Encodes) {
  std::string out;
  for (char32_t c : {U'A', U'é', U'日', U'\U0001F600'}) AppendUtf8(c, &out);
  EXPECT_EQ(out, "A\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80");
}

TEST(Utf8Test, Lossy) {
  EXPECT_EQ(Utf8Lossy("abc"), "abc");
  EXPECT_EQ(Utf8Lossy("a\xff"
                      "b"),
            "a\uFFFD"
            "b");
  EXPECT_EQ(Utf8Lossy("\xe6\x97"), "\uFFFD");  // truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(Utf8Lossy("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");  // a surrogate: three
}

TEST(Utf8Test, LossyHoldsBackACutCharacter) {
  std::string out;
  EXPECT_EQ(AppendUtf8Lossy("a\xe6\x97", /*hold_back_cut=*/true, &out), 1u);
  EXPECT_EQ(out, "a");
  out.clear();
  EXPECT_EQ(AppendUtf8Lossy("a\xe6\x97", /*hold_back_cut=*/false, &out), 3u);
  EXPECT_EQ(out, "a\uFFFD");
  // Bytes that can no longer complete a character are replaced, held back or not.
  out.clear();
  EXPECT_EQ(AppendUtf8Lossy("\xe6"
                            "A\xff",
                            /*hold_back_cut=*/true, &out),
            3u);
  EXPECT_EQ(out,
            "\uFFFD"
            "A\uFFFD");
}

TEST(Utf8Test, Nfc) {
  EXPECT_EQ(Nfc("plain ascii"), "plain ascii");
  EXPECT_EQ(Nfc("cafe\xcc\x81"), "caf\xc3\xa9");   // e + COMBINING ACUTE ACCENT -> U+00E9
  EXPECT_EQ(Nfc("\xe2\x84\xab"), "\xc3\x85");      // ANGSTROM SIGN -> U+00C5 (canonical)
  EXPECT_EQ(Nfc("\xef\xac\x81"), "\xef\xac\x81");  // the "fi" ligature: NFKC only
  // Invalid bytes stay where they are, between normalized runs.
  EXPECT_EQ(Nfc("e\xcc\x81\xff"
                "e\xcc\x81"),
            "\xc3\xa9\xff\xc3\xa9");
  EXPECT_EQ(Nfc("\xe6\x97"), "\xe6\x97");
}

}  // namespace
}  // namespace kvtier::text
