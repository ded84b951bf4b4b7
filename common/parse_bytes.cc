#include "common/parse_bytes.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kvtier {

absl::StatusOr<uint64_t> ParseBytes(absl::string_view text) {
  absl::string_view s = absl::StripAsciiWhitespace(text);
  size_t i = 0;
  while (i < s.size() && (absl::ascii_isdigit(s[i]) || s[i] == '.')) ++i;
  double number = 0;
  if (i == 0 || !absl::SimpleAtod(s.substr(0, i), &number)) {
    return absl::InvalidArgumentError(absl::StrCat("not a size: '", text, "'"));
  }
  std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s.substr(i)));
  double mult = 1;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kib" || unit == "kb") {
    mult = 1024.0;
  } else if (unit == "m" || unit == "mib" || unit == "mb") {
    mult = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gib" || unit == "gb") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "tib" || unit == "tb") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown size unit in '", text, "'"));
  }
  return static_cast<uint64_t>(std::llround(number * mult));
}

std::string FormatBytes(uint64_t bytes) {
  static const char* const kUnits[] = {"", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (unit < 4 && bytes != 0 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrCat(bytes, kUnits[unit]);
}

}  // namespace kvtier
