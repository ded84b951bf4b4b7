#include "router/api_keys.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"

namespace kvtier::router {
namespace {

std::string Digest(absl::string_view key) {
  Sha256 h;
  h.Update(key.data(), key.size());
  const BlockKey d = h.Final();
  return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}

bool IsTenantName(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') {
      return false;
    }
  }
  return !s.empty();
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("api_keys_file ", path, ": cannot be read"));
  std::string text(kMaxFileBytes + 1, '\0');
  f.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(f.gcount()));
  if (text.size() > kMaxFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("api_keys_file ", path, ": larger than ", kMaxFileBytes, " bytes"));
  }
  return Parse(text, absl::StrCat("api_keys_file ", path));
}

absl::StatusOr<ApiKeys> ApiKeys::Parse(absl::string_view text, absl::string_view source) {
  ApiKeys keys;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(source, " line ", line_no, ": ", why));
    };
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) return bad("expected 'KEY TENANT'");
    if (fields[0].size() < kMinKeyBytes) {
      return bad(absl::StrCat("the key is shorter than ", kMinKeyBytes, " characters"));
    }
    if (!IsTenantName(fields[1])) {
      return bad("a tenant is made of letters, digits, '_', '.' and '-'");
    }
    if (!keys.tenants_.emplace(Digest(fields[0]), std::string(fields[1])).second) {
      return bad("the key is listed twice");
    }
  }
  if (keys.tenants_.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no key"));
  return keys;
}

std::optional<std::string> ApiKeys::Tenant(absl::string_view authorization) const {
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWith(authorization, kBearer)) return std::nullopt;
  // Found by the SHA-256 of the key: the lookup's timing tells nothing about the keys.
  auto it = tenants_.find(Digest(absl::StripAsciiWhitespace(authorization.substr(kBearer.size()))));
  if (it == tenants_.end()) return std::nullopt;
  return it->second;
}

}  // namespace kvtier::router
