#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvtier::engine {
namespace {

using Json = nlohmann::json;

// Ids beyond this are refused: a hostile file must not make us allocate gigabytes.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;
// Words longer than this are not cached (a long whitespace run would pin memory).
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 16;

// ---- UTF-8 and Unicode helpers ------------------------------------------------------------

// The UTF-8 sequence at the start of a string: `length` bytes, valid or not; `truncated` when
// the bytes are a valid prefix cut by the end of the string. An invalid sequence spans its
// maximal subpart (Unicode §3.9, Table 3-7), the unit lossy decoders replace by one U+FFFD.
struct Utf8Step {
  int length;
  bool valid;
  bool truncated;
};

Utf8Step NextUtf8(absl::string_view s) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return {1, true, false};
  int need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 == 0xE0) {
    need = 2;
    lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    need = 2;
  } else if (b0 == 0xED) {
    need = 2;
    hi = 0x9F;
  } else if (b0 == 0xF0) {
    need = 3;
    lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    need = 3;
  } else if (b0 == 0xF4) {
    need = 3;
    hi = 0x8F;
  } else {
    return {1, false, false};
  }
  for (int i = 1; i <= need; ++i) {
    if (static_cast<size_t>(i) >= s.size()) return {i, false, true};
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < lo || b > hi) return {i, false, false};
    lo = 0x80;
    hi = 0xBF;
  }
  return {need + 1, true, false};
}

// The code point of a valid sequence.
char32_t CodePoint(absl::string_view s, int length) {
  const auto b = [&](int i) { return static_cast<char32_t>(static_cast<uint8_t>(s[i])); };
  switch (length) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

constexpr absl::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Unicode White_Space (Rust's char::is_whitespace, which HF uses for lstrip/rstrip).
bool IsUnicodeWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Rust regex's Unicode \w ([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}], letters standing
// in for Alphabetic): HF's test for single_word added tokens.
bool IsWordChar(char32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// The valid character ending at `end` (exclusive), or nullopt.
std::optional<std::pair<char32_t, size_t>> CharBefore(absl::string_view s, size_t end) {
  if (end == 0) return std::nullopt;
  size_t begin = end - 1;
  while (begin > 0 && end - begin < 4 && (static_cast<uint8_t>(s[begin]) & 0xC0) == 0x80) {
    --begin;
  }
  const Utf8Step step = NextUtf8(s.substr(begin, end - begin));
  if (!step.valid || begin + step.length != end) return std::nullopt;
  return std::make_pair(CodePoint(s.substr(begin), step.length), begin);
}

std::optional<std::pair<char32_t, size_t>> CharAt(absl::string_view s, size_t pos) {
  if (pos >= s.size()) return std::nullopt;
  const Utf8Step step = NextUtf8(s.substr(pos));
  if (!step.valid) return std::nullopt;
  return std::make_pair(CodePoint(s.substr(pos), step.length), pos + step.length);
}

// NFC of `text`; runs of invalid UTF-8 are kept as they are (HF never sees them: Python
// strings are always valid).
std::string Nfc(absl::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; })) {
    return std::string(text);
  }
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size()) {
      const Utf8Step step = NextUtf8(text.substr(j));
      if (!step.valid) break;
      j += step.length;
    }
    if (j > i) {
      utf8proc_uint8_t* mapped = nullptr;
      const utf8proc_ssize_t n =
          utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + i),
                       static_cast<utf8proc_ssize_t>(j - i), &mapped,
                       static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (n >= 0) {
        out.append(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
      } else {
        absl::StrAppend(&out, text.substr(i, j - i));
      }
      std::free(mapped);
      i = j;
    }
    if (i < text.size()) {  // an invalid sequence
      const Utf8Step step = NextUtf8(text.substr(i));
      absl::StrAppend(&out, text.substr(i, step.length));
      i += step.length;
    }
  }
  return out;
}

// ---- GPT-2 byte-to-unicode table -----------------------------------------------------------

struct ByteTable {
  std::array<char32_t, 256> to_char;  // byte -> code point
  std::array<int, 256> rank;          // byte -> position in the table order
  absl::flat_hash_map<char32_t, uint8_t> to_byte;

  ByteTable() {
    int next = 0;
    std::array<bool, 256> direct{};
    for (int b = 0; b < 256; ++b) {
      direct[b] = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    }
    for (int b = 0; b < 256; ++b) {
      if (direct[b]) {
        to_char[b] = static_cast<char32_t>(b);
        rank[b] = next++;
      }
    }
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      if (!direct[b]) {
        to_char[b] = static_cast<char32_t>(256 + extra++);
        rank[b] = next++;
      }
    }
    for (int b = 0; b < 256; ++b) to_byte[to_char[b]] = static_cast<uint8_t>(b);
  }
};

const ByteTable& Bytes() {
  static const ByteTable* table = new ByteTable();
  return *table;
}

// ---- PCRE2 ---------------------------------------------------------------------------------

// A compiled pattern. Immutable, shared by all threads (match data is per call).
class Regex {
 public:
  static absl::StatusOr<std::shared_ptr<const Regex>> Compile(absl::string_view pattern,
                                                              bool literal) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    // PCRE2 refuses UCP (which only changes what \d, \s, \w and friends mean) with LITERAL.
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &error, &offset, nullptr);
    if (code == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("cannot compile the split regex at offset ",
                                                     offset, ": ", ErrorText(error)));
    }
    // JIT is an optimization only: on failure the interpreter runs.
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return std::shared_ptr<const Regex>(new Regex(code));
  }

  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls `fn(begin, end)` for each non-overlapping, non-empty match in `s`, in order. The regex
  // runs on each maximal valid UTF-8 run of `s` separately (validated once, so PCRE2 need not
  // check the subject on every call); invalid bytes never match and end up in the gaps, as in
  // PCRE2's own invalid-UTF mode, which the interpreter handles in quadratic time.
  absl::Status ForEachMatch(absl::string_view s,
                            absl::FunctionRef<absl::Status(size_t, size_t)> fn) const {
    if (s.empty()) return absl::OkStatus();
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    if (md == nullptr) return absl::ResourceExhaustedError("cannot allocate regex match data");
    uint32_t options = PCRE2_NO_UTF_CHECK;
    size_t run_begin = 0;
    while (run_begin < s.size()) {
      size_t run_end = run_begin;
      Utf8Step step{0, true, false};
      while (run_end < s.size()) {
        step = NextUtf8(s.substr(run_end));
        if (!step.valid) break;
        run_end += step.length;
      }
      const absl::string_view run = s.substr(run_begin, run_end - run_begin);
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(run.data());
      size_t offset = 0;
      while (offset < run.size()) {
        const int rc = pcre2_match(code_, subject, run.size(), offset, options, md.get(), nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && (options & PCRE2_NO_JIT) == 0) {
          options |= PCRE2_NO_JIT;  // the interpreter keeps its backtracking on the heap
          continue;
        }
        if (rc < 0) {
          return absl::ResourceExhaustedError(
              absl::StrCat("split regex failed on a ", run.size(), "-byte text: ", ErrorText(rc)));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        const size_t begin = ov[0], end = ov[1];
        if (end > begin) {
          KVTIER_RETURN_IF_ERROR(fn(run_begin + begin, run_begin + end));
          offset = end;
        } else {  // an empty match: step over one character
          offset = begin + 1;
          while (offset < run.size() && (static_cast<uint8_t>(run[offset]) & 0xC0) == 0x80) {
            ++offset;
          }
        }
      }
      run_begin = run_end;
      // Skip the invalid sequences up to the next valid character.
      while (run_begin < s.size()) {
        step = NextUtf8(s.substr(run_begin));
        if (step.valid) break;
        run_begin += step.length;
      }
    }
    return absl::OkStatus();
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  static std::string ErrorText(int error) {
    PCRE2_UCHAR buffer[256];
    if (pcre2_get_error_message(error, buffer, sizeof(buffer)) < 0) {
      return absl::StrCat("PCRE2 error ", error);
    }
    return std::string(reinterpret_cast<const char*>(buffer));
  }

  pcre2_code* code_;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// One pre-tokenizer step: ByteLevel (optional prefix space, then optionally the GPT-2 regex)
// or Split / Digits (a regex with a delimiter behavior).
struct PreTokenizerStep {
  bool prefix_space = false;
  std::shared_ptr<const Regex> regex;  // nullptr: no splitting
  SplitBehavior behavior = SplitBehavior::kIsolated;
};

// Receives each final piece of the pre-tokenizer; the view lives during the call only.
using PieceFn = absl::FunctionRef<absl::Status(absl::string_view)>;

// Applies steps[i..] to `piece`, streaming the resulting pieces to `emit` (no piece list is
// built: the Isolated split of a long prompt goes straight from the regex to the BPE).
absl::Status Walk(absl::Span<const PreTokenizerStep> steps, size_t i, absl::string_view piece,
                  PieceFn emit) {
  if (piece.empty()) return absl::OkStatus();
  if (i == steps.size()) return emit(piece);
  const PreTokenizerStep& step = steps[i];
  std::string prefixed;
  if (step.prefix_space && !absl::StartsWith(piece, " ")) {
    prefixed = absl::StrCat(" ", piece);
    piece = prefixed;
  }
  if (step.regex == nullptr) return Walk(steps, i + 1, piece, emit);
  auto next = [&](size_t begin, size_t end) {
    return Walk(steps, i + 1, piece.substr(begin, end - begin), emit);
  };
  if (step.behavior == SplitBehavior::kIsolated) {
    size_t prev = 0;
    KVTIER_RETURN_IF_ERROR(step.regex->ForEachMatch(piece, [&](size_t b, size_t e) {
      if (b > prev) KVTIER_RETURN_IF_ERROR(next(prev, b));
      prev = e;
      return next(b, e);
    }));
    return next(prev, piece.size());
  }

  // The other behaviors, on the list of gaps and matches as HF's find_matches makes it.
  struct Part {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  KVTIER_RETURN_IF_ERROR(step.regex->ForEachMatch(piece, [&](size_t b, size_t e) {
    if (b > prev) parts.push_back({prev, b, false});
    parts.push_back({b, e, true});
    prev = e;
    return absl::OkStatus();
  }));
  if (prev < piece.size()) parts.push_back({prev, piece.size(), false});
  std::vector<std::pair<size_t, size_t>> spans;
  switch (step.behavior) {
    case SplitBehavior::kIsolated:
      break;
    case SplitBehavior::kRemoved:
      for (const Part& p : parts) {
        if (!p.is_match) spans.emplace_back(p.begin, p.end);
      }
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.is_match && !previous_match && !spans.empty()) {
          spans.back().second = p.end;
        } else {
          spans.emplace_back(p.begin, p.end);
        }
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !spans.empty()) {
          spans.back().first = it->begin;
        } else {
          spans.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(spans.begin(), spans.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.is_match == previous_match && !spans.empty()) {
          spans.back().second = p.end;
        } else {
          spans.emplace_back(p.begin, p.end);
        }
        previous_match = p.is_match;
      }
      break;
    }
  }
  for (const auto& [b, e] : spans) KVTIER_RETURN_IF_ERROR(next(b, e));
  return absl::OkStatus();
}

// ---- JSON helpers (exception-free accessors) -----------------------------------------------

absl::Status Invalid(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", where, ": ", what));
}

const Json* Field(const Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<bool> BoolField(const Json& obj, const char* key, bool fallback,
                               absl::string_view where) {
  const Json* v = Field(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return Invalid(where, absl::StrCat("\"", key, "\" must be a boolean"));
  return v->get<bool>();
}

absl::StatusOr<std::string> StringField(const Json& obj, const char* key, absl::string_view where) {
  const Json* v = Field(obj, key);
  if (v == nullptr || !v->is_string()) {
    return Invalid(where, absl::StrCat("\"", key, "\" must be a string"));
  }
  return v->get<std::string>();
}

absl::StatusOr<int32_t> IdValue(const Json& v, absl::string_view where) {
  if (!v.is_number_integer()) return Invalid(where, "token ids must be integers");
  const int64_t id = v.get<int64_t>();
  if (id < 0 || id >= kMaxTokenId) {
    return Invalid(where, absl::StrCat("token id ", id, " is out of range"));
  }
  return static_cast<int32_t>(id);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return ss.str();
}

}  // namespace

// ---- Public byte-level helpers -------------------------------------------------------------

std::string ByteLevelEncode(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) AppendUtf8(Bytes().to_char[static_cast<uint8_t>(c)], &out);
  return out;
}

std::optional<std::string> ByteLevelDecode(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const Utf8Step step = NextUtf8(text.substr(i));
    if (!step.valid) return std::nullopt;
    auto it = Bytes().to_byte.find(CodePoint(text.substr(i), step.length));
    if (it == Bytes().to_byte.end()) return std::nullopt;
    out.push_back(static_cast<char>(it->second));
    i += step.length;
  }
  return out;
}

int ByteTokenRank(uint8_t byte) { return Bytes().rank[byte]; }

std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const Utf8Step step = NextUtf8(bytes.substr(i));
    absl::StrAppend(&out, step.valid ? bytes.substr(i, step.length) : kReplacementChar);
    i += step.length;
  }
  return out;
}

// ---- Tokenizer -----------------------------------------------------------------------------

struct Tokenizer::Impl {
  // Model (BPE).
  absl::flat_hash_map<std::string, int32_t> vocab;           // spelling -> id (model vocab)
  absl::flat_hash_map<std::string, int32_t> vocab_by_bytes;  // decoded bytes -> id
  std::array<int32_t, 256> byte_ids;                         // single-byte tokens, -1 = none
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // pair -> (rank, id)
  bool ignore_merges = false;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;

  // Per id: spelling, decoded bytes, kind.
  enum Kind : uint8_t { kNone, kModel, kAdded, kSpecial };
  std::vector<std::string> id_token;
  std::vector<std::string> id_bytes;
  std::vector<uint8_t> id_kind;

  std::vector<AddedToken> added;
  absl::flat_hash_map<std::string, int32_t> added_by_content;
  std::array<std::vector<int>, 256> added_by_first_byte;  // indices into `added`, longest first

  bool nfc = false;
  std::vector<PreTokenizerStep> steps;

  absl::Status post_status;  // OK when the post-processor is supported
  std::vector<int32_t> post_prefix, post_suffix;

  std::optional<int32_t> bos;
  std::vector<int32_t> eos;
  std::string chat_template;

  mutable absl::Mutex mu;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache ABSL_GUARDED_BY(mu);

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  absl::Status ParseModel(const Json& model);
  absl::Status ParseAddedTokens(const Json& added_tokens);
  absl::Status ParseNormalizer(const Json& normalizer);
  absl::Status ParsePreTokenizer(const Json& pre, bool* has_byte_level);
  absl::Status ParsePostProcessor(const Json& post);
  absl::Status ParseConfig(const Json& config);
  absl::Status BuildIdTables();

  // Normalizes `text` (no added tokens in it) and streams its pre-tokenized pieces to `emit`.
  absl::Status PreTokenize(absl::string_view text, PieceFn emit) const;
  void Bpe(absl::string_view word, std::vector<int32_t>* out) const;
  void BpeUncached(absl::string_view word, std::vector<int32_t>* out) const;
  absl::Status EncodeSegment(absl::string_view text, std::vector<int32_t>* out) const;
  // The leftmost-longest added token at or after *pos (HF's aho-corasick, LeftmostLongest),
  // its start in *pos; nullptr when none.
  const AddedToken* FindAddedToken(absl::string_view text, size_t* pos) const;
  absl::Status Encode(absl::string_view text, bool allow_special, std::vector<int32_t>* out) const;
};

absl::Status Tokenizer::Impl::ParseModel(const Json& model) {
  constexpr absl::string_view kWhere = "model";
  if (!model.is_object()) return Invalid(kWhere, "must be an object");
  const Json* type = Field(model, "type");
  if (type != nullptr && (!type->is_string() || type->get<std::string>() != "BPE")) {
    return absl::UnimplementedError(absl::StrCat("tokenizer.json: model type ", type->dump(),
                                                 " is not supported (only byte-level \"BPE\")"));
  }
  if (const Json* d = Field(model, "dropout"); d != nullptr) {
    if (!d->is_number()) return Invalid(kWhere, "\"dropout\" must be a number");
    if (d->get<double>() != 0.0) {
      return absl::UnimplementedError("tokenizer.json: BPE dropout is not supported");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const Json* v = Field(model, key); v != nullptr) {
      if (!v->is_string()) return Invalid(kWhere, absl::StrCat("\"", key, "\" must be a string"));
      if (!v->get<std::string>().empty()) {
        return absl::UnimplementedError(
            absl::StrCat("tokenizer.json: BPE \"", key, "\" is not supported"));
      }
    }
  }
  KVTIER_ASSIGN_OR_RETURN(bool byte_fallback, BoolField(model, "byte_fallback", false, kWhere));
  if (byte_fallback) {
    return absl::UnimplementedError(
        "tokenizer.json: BPE byte_fallback (SentencePiece-style vocabularies) is not supported");
  }
  KVTIER_ASSIGN_OR_RETURN(ignore_merges, BoolField(model, "ignore_merges", false, kWhere));
  KVTIER_ASSIGN_OR_RETURN(fuse_unk, BoolField(model, "fuse_unk", false, kWhere));

  const Json* v = Field(model, "vocab");
  if (v == nullptr || !v->is_object()) return Invalid(kWhere, "\"vocab\" must be an object");
  vocab.reserve(v->size());
  for (auto it = v->begin(); it != v->end(); ++it) {
    KVTIER_ASSIGN_OR_RETURN(int32_t id, IdValue(it.value(), "model.vocab"));
    vocab.emplace(it.key(), id);
  }
  byte_ids.fill(-1);
  vocab_by_bytes.reserve(vocab.size());
  for (const auto& [token, id] : vocab) {
    std::optional<std::string> bytes = ByteLevelDecode(token);
    if (!bytes.has_value() || bytes->empty()) continue;
    vocab_by_bytes.emplace(*bytes, id);
    if (bytes->size() == 1) byte_ids[static_cast<uint8_t>((*bytes)[0])] = id;
  }

  if (const Json* unk = Field(model, "unk_token"); unk != nullptr) {
    if (!unk->is_string()) return Invalid(kWhere, "\"unk_token\" must be a string");
    auto it = vocab.find(unk->get<std::string>());
    if (it == vocab.end()) {
      return Invalid(kWhere, absl::StrCat("unk_token \"", unk->get<std::string>(),
                                          "\" is not in the vocabulary"));
    }
    unk_id = it->second;
  }

  const Json* m = Field(model, "merges");
  if (m == nullptr) return absl::OkStatus();
  if (!m->is_array()) return Invalid(kWhere, "\"merges\" must be an array");
  merges.reserve(m->size());
  int32_t rank = 0;
  for (const Json& merge : *m) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string& s = merge.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Invalid(kWhere, absl::StrCat("merge #", rank, " \"", s,
                                            "\" is not two tokens separated by a space"));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return Invalid(kWhere, absl::StrCat("merge #", rank, " must be \"a b\" or [\"a\", \"b\"]"));
    }
    auto a = vocab.find(left), b = vocab.find(right), ab = vocab.find(left + right);
    if (a == vocab.end() || b == vocab.end() || ab == vocab.end()) {
      const std::string& missing =
          a == vocab.end() ? left : (b == vocab.end() ? right : left + right);
      return Invalid(kWhere,
                     absl::StrCat("merge #", rank, " (\"", left, "\", \"", right, "\") uses \"",
                                  missing, "\", which is not in the vocabulary"));
    }
    // A repeated pair keeps the later rank, as HF's map construction does.
    merges[PairKey(a->second, b->second)] = {rank, ab->second};
    ++rank;
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParseAddedTokens(const Json& added_tokens) {
  constexpr absl::string_view kWhere = "added_tokens";
  if (added_tokens.is_null()) return absl::OkStatus();
  if (!added_tokens.is_array()) return Invalid(kWhere, "must be an array");
  for (const Json& t : added_tokens) {
    if (!t.is_object()) return Invalid(kWhere, "entries must be objects");
    AddedToken token;
    const Json* id = Field(t, "id");
    if (id == nullptr) return Invalid(kWhere, "an entry has no \"id\"");
    KVTIER_ASSIGN_OR_RETURN(token.id, IdValue(*id, kWhere));
    KVTIER_ASSIGN_OR_RETURN(token.content, StringField(t, "content", kWhere));
    if (token.content.empty()) return Invalid(kWhere, "an entry has empty \"content\"");
    KVTIER_ASSIGN_OR_RETURN(token.special, BoolField(t, "special", false, kWhere));
    KVTIER_ASSIGN_OR_RETURN(token.lstrip, BoolField(t, "lstrip", false, kWhere));
    KVTIER_ASSIGN_OR_RETURN(token.rstrip, BoolField(t, "rstrip", false, kWhere));
    KVTIER_ASSIGN_OR_RETURN(token.single_word, BoolField(t, "single_word", false, kWhere));
    KVTIER_ASSIGN_OR_RETURN(token.normalized, BoolField(t, "normalized", false, kWhere));
    added_by_content[token.content] = token.id;
    added.push_back(std::move(token));
  }
  for (size_t i = 0; i < added.size(); ++i) {
    added_by_first_byte[static_cast<uint8_t>(added[i].content[0])].push_back(static_cast<int>(i));
  }
  for (auto& list : added_by_first_byte) {
    std::stable_sort(list.begin(), list.end(), [this](int a, int b) {
      return added[a].content.size() > added[b].content.size();
    });
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParseNormalizer(const Json& normalizer) {
  if (normalizer.is_null()) return absl::OkStatus();
  KVTIER_ASSIGN_OR_RETURN(std::string type, StringField(normalizer, "type", "normalizer"));
  if (type == "NFC") {
    nfc = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    const Json* list = Field(normalizer, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return Invalid("normalizer", "\"normalizers\" must be an array");
    }
    for (const Json& n : *list) KVTIER_RETURN_IF_ERROR(ParseNormalizer(n));
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.json: normalizer \"", type, "\" is not supported (only NFC)"));
}

absl::Status Tokenizer::Impl::ParsePreTokenizer(const Json& pre, bool* has_byte_level) {
  constexpr absl::string_view kWhere = "pre_tokenizer";
  if (pre.is_null()) return absl::OkStatus();
  KVTIER_ASSIGN_OR_RETURN(std::string type, StringField(pre, "type", kWhere));
  if (type == "Sequence") {
    const Json* list = Field(pre, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return Invalid(kWhere, "\"pretokenizers\" must be an array");
    }
    for (const Json& p : *list) KVTIER_RETURN_IF_ERROR(ParsePreTokenizer(p, has_byte_level));
    return absl::OkStatus();
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    *has_byte_level = true;
    KVTIER_ASSIGN_OR_RETURN(step.prefix_space, BoolField(pre, "add_prefix_space", true, kWhere));
    KVTIER_ASSIGN_OR_RETURN(bool use_regex, BoolField(pre, "use_regex", true, kWhere));
    if (use_regex) {
      KVTIER_ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2SplitPattern, false));
    }
  } else if (type == "Split") {
    KVTIER_ASSIGN_OR_RETURN(bool invert, BoolField(pre, "invert", false, kWhere));
    if (invert) return absl::UnimplementedError("tokenizer.json: inverted Split is not supported");
    const Json* pattern = Field(pre, "pattern");
    if (pattern == nullptr || !pattern->is_object()) {
      return Invalid(kWhere, "Split \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
    }
    if (const Json* re = Field(*pattern, "Regex"); re != nullptr && re->is_string()) {
      KVTIER_ASSIGN_OR_RETURN(step.regex, Regex::Compile(re->get<std::string>(), false));
    } else if (const Json* lit = Field(*pattern, "String"); lit != nullptr && lit->is_string()) {
      if (lit->get<std::string>().empty()) return Invalid(kWhere, "empty Split pattern");
      KVTIER_ASSIGN_OR_RETURN(step.regex, Regex::Compile(lit->get<std::string>(), true));
    } else {
      return Invalid(kWhere, "Split \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
    }
    KVTIER_ASSIGN_OR_RETURN(std::string behavior, StringField(pre, "behavior", kWhere));
    if (behavior == "Removed") {
      step.behavior = SplitBehavior::kRemoved;
    } else if (behavior == "Isolated") {
      step.behavior = SplitBehavior::kIsolated;
    } else if (behavior == "MergedWithPrevious") {
      step.behavior = SplitBehavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      step.behavior = SplitBehavior::kMergedWithNext;
    } else if (behavior == "Contiguous") {
      step.behavior = SplitBehavior::kContiguous;
    } else {
      return Invalid(kWhere, absl::StrCat("unknown Split behavior \"", behavior, "\""));
    }
  } else if (type == "Digits") {
    KVTIER_ASSIGN_OR_RETURN(bool individual, BoolField(pre, "individual_digits", false, kWhere));
    KVTIER_ASSIGN_OR_RETURN(step.regex, Regex::Compile(individual ? "\\p{N}" : "\\p{N}+", false));
  } else {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.json: pre_tokenizer \"", type,
                     "\" is not supported (only ByteLevel, Split, Digits and Sequence of them)"));
  }
  steps.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParsePostProcessor(const Json& post) {
  if (post.is_null()) return absl::OkStatus();
  KVTIER_ASSIGN_OR_RETURN(std::string type, StringField(post, "type", "post_processor"));
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "Sequence") {
    const Json* list = Field(post, "processors");
    if (list == nullptr || !list->is_array()) {
      return Invalid("post_processor", "\"processors\" must be an array");
    }
    for (const Json& p : *list) KVTIER_RETURN_IF_ERROR(ParsePostProcessor(p));
    return absl::OkStatus();
  }
  if (type == "TemplateProcessing") {
    const Json* single = Field(post, "single");
    const Json* specials = Field(post, "special_tokens");
    if (single == nullptr || !single->is_array()) {
      return Invalid("post_processor", "TemplateProcessing \"single\" must be an array");
    }
    bool seen_sequence = false;
    for (const Json& piece : *single) {
      if (Field(piece, "Sequence") != nullptr) {
        seen_sequence = true;
        continue;
      }
      const Json* special = Field(piece, "SpecialToken");
      if (special == nullptr) {
        return Invalid("post_processor", "TemplateProcessing pieces must be SpecialToken/Sequence");
      }
      KVTIER_ASSIGN_OR_RETURN(std::string name, StringField(*special, "id", "post_processor"));
      const Json* entry = specials == nullptr ? nullptr : Field(*specials, name.c_str());
      const Json* ids = entry == nullptr ? nullptr : Field(*entry, "ids");
      if (ids == nullptr || !ids->is_array()) {
        return Invalid("post_processor",
                       absl::StrCat("TemplateProcessing names \"", name, "\" without its ids"));
      }
      for (const Json& id : *ids) {
        KVTIER_ASSIGN_OR_RETURN(int32_t value, IdValue(id, "post_processor"));
        (seen_sequence ? post_suffix : post_prefix).push_back(value);
      }
    }
    return absl::OkStatus();
  }
  // Not needed by Encode: only EncodeWithSpecialTokens refuses.
  post_status = absl::UnimplementedError(
      absl::StrCat("tokenizer.json: post_processor \"", type, "\" is not supported"));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParseConfig(const Json& config) {
  auto token_id = [&](const char* key) -> absl::StatusOr<std::optional<int32_t>> {
    const Json* v = Field(config, key);
    if (v == nullptr) return std::optional<int32_t>();
    if (v->is_object()) v = Field(*v, "content");  // {"__type": "AddedToken", "content": ...}
    if (v == nullptr || !v->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer_config.json: \"", key, "\" must be a string or AddedToken"));
    }
    const std::string& content = v->get_ref<const std::string&>();
    if (auto it = added_by_content.find(content); it != added_by_content.end()) return it->second;
    if (auto it = vocab.find(content); it != vocab.end()) return it->second;
    return absl::InvalidArgumentError(absl::StrCat("tokenizer_config.json: ", key, " \"", content,
                                                   "\" is not a token of tokenizer.json"));
  };
  KVTIER_ASSIGN_OR_RETURN(bos, token_id("bos_token"));
  KVTIER_ASSIGN_OR_RETURN(std::optional<int32_t> eos_id, token_id("eos_token"));
  if (eos_id.has_value()) eos.push_back(*eos_id);

  if (const Json* t = Field(config, "chat_template"); t != nullptr) {
    if (t->is_string()) {
      chat_template = t->get<std::string>();
    } else if (t->is_array()) {
      // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
      for (const Json& entry : *t) {
        const Json* name = Field(entry, "name");
        const Json* text = Field(entry, "template");
        if (text == nullptr || !text->is_string()) continue;
        if (chat_template.empty() ||
            (name != nullptr && name->is_string() && name->get<std::string>() == "default")) {
          chat_template = text->get<std::string>();
        }
      }
    } else {
      return absl::InvalidArgumentError(
          "tokenizer_config.json: \"chat_template\" must be a string or a list");
    }
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::BuildIdTables() {
  int64_t size = 0;
  for (const auto& [token, id] : vocab) size = std::max<int64_t>(size, id + 1);
  for (const AddedToken& t : added) size = std::max<int64_t>(size, t.id + 1);
  id_token.assign(size, "");
  id_bytes.assign(size, "");
  id_kind.assign(size, kNone);
  for (const auto& [token, id] : vocab) {
    if (id_kind[id] != kNone) {
      return Invalid("model.vocab", absl::StrCat("id ", id, " is given to \"", token, "\" and \"",
                                                 id_token[id], "\""));
    }
    id_kind[id] = kModel;
    id_token[id] = token;
  }
  for (const AddedToken& t : added) {
    id_kind[t.id] = t.special ? kSpecial : kAdded;
    id_token[t.id] = t.content;
  }
  for (int64_t id = 0; id < size; ++id) {
    if (id_kind[id] == kNone) continue;
    // HF's ByteLevel decoder: a token whose characters are all in the byte table becomes those
    // bytes, any other token its own UTF-8 text.
    std::optional<std::string> bytes = ByteLevelDecode(id_token[id]);
    id_bytes[id] = bytes.has_value() ? *std::move(bytes) : id_token[id];
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::PreTokenize(absl::string_view text, PieceFn emit) const {
  if (text.empty()) return absl::OkStatus();
  if (!nfc) return Walk(steps, 0, text, emit);
  const std::string normalized = Nfc(text);
  return Walk(steps, 0, normalized, emit);
}

void Tokenizer::Impl::BpeUncached(absl::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_unk = false;
  for (char c : word) {
    const int32_t id = byte_ids[static_cast<uint8_t>(c)];
    if (id >= 0) {
      last_unk = false;
    } else if (unk_id.has_value()) {
      if (fuse_unk && last_unk) continue;
      last_unk = true;
    } else {
      continue;  // HF drops characters missing from a vocabulary without unk_token
    }
    const int n = static_cast<int>(symbols.size());
    symbols.push_back({id >= 0 ? id : *unk_id, n - 1, n + 1, true});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // HF's word.rs: a heap of candidate merges ordered by (rank, position); stale entries are
  // recognized by re-checking the pair.
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator<(const Candidate& o) const {  // "less" = lower priority
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto lookup = [&](int32_t a, int32_t b) -> const std::pair<int32_t, int32_t>* {
    auto it = merges.find(PairKey(a, b));
    return it == merges.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const auto* m = lookup(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->first, static_cast<int>(i), m->second});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    Symbol& right = symbols[cur.next];
    const auto* m = lookup(cur.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;
    cur.id = top.new_id;
    right.alive = false;
    cur.next = right.next;
    if (cur.next >= 0) symbols[cur.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const auto* p = lookup(symbols[cur.prev].id, cur.id)) {
        queue.push({p->first, cur.prev, p->second});
      }
    }
    if (cur.next >= 0) {
      if (const auto* n = lookup(cur.id, symbols[cur.next].id)) {
        queue.push({n->first, top.pos, n->second});
      }
    }
  }
  for (int i = 0; i >= 0; i = symbols[i].next) out->push_back(symbols[i].id);
}

void Tokenizer::Impl::Bpe(absl::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges) {
    if (auto it = vocab_by_bytes.find(word); it != vocab_by_bytes.end()) {
      out->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&mu);
    if (auto it = cache.find(word); it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out->size();
  BpeUncached(word, out);
  if (cacheable) {
    absl::MutexLock lock(&mu);
    if (cache.size() < kMaxCacheEntries) {
      cache.emplace(std::string(word), std::vector<int32_t>(out->begin() + start, out->end()));
    }
  }
}

absl::Status Tokenizer::Impl::EncodeSegment(absl::string_view text,
                                            std::vector<int32_t>* out) const {
  return PreTokenize(text, [&](absl::string_view piece) {
    Bpe(piece, out);
    return absl::OkStatus();
  });
}

const AddedToken* Tokenizer::Impl::FindAddedToken(absl::string_view text, size_t* pos) const {
  for (size_t i = *pos; i < text.size(); ++i) {
    // Candidates are sorted longest first.
    for (int index : added_by_first_byte[static_cast<uint8_t>(text[i])]) {
      if (absl::StartsWith(text.substr(i), added[index].content)) {
        *pos = i;
        return &added[index];
      }
    }
  }
  return nullptr;
}

absl::Status Tokenizer::Impl::Encode(absl::string_view text, bool allow_special,
                                     std::vector<int32_t>* out) const {
  size_t segment_start = 0;  // start of the text not yet encoded
  size_t pos = 0;            // where the search for the next added token resumes
  while (pos < text.size()) {
    size_t begin = pos;
    const AddedToken* token = FindAddedToken(text, &begin);
    if (token == nullptr) break;
    size_t end = begin + token->content.size();
    pos = end;
    // As in HF's find_matches, a match that is filtered out still consumes its span.
    if (token->special && !allow_special) continue;
    if (token->single_word) {
      const auto before = CharBefore(text, begin);
      const auto after = CharAt(text, end);
      if ((before.has_value() && IsWordChar(before->first)) ||
          (after.has_value() && IsWordChar(after->first))) {
        continue;
      }
    }
    if (token->lstrip) {
      while (begin > segment_start) {
        const auto c = CharBefore(text, begin);
        if (!c.has_value() || !IsUnicodeWhitespace(c->first) || c->second < segment_start) break;
        begin = c->second;
      }
    }
    if (token->rstrip) {
      while (end < text.size()) {
        const auto c = CharAt(text, end);
        if (!c.has_value() || !IsUnicodeWhitespace(c->first)) break;
        end = c->second;
      }
      pos = end;
    }
    KVTIER_RETURN_IF_ERROR(EncodeSegment(text.substr(segment_start, begin - segment_start), out));
    out->push_back(token->id);
    segment_start = end;
  }
  return EncodeSegment(text.substr(segment_start), out);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& model_dir) {
  KVTIER_ASSIGN_OR_RETURN(std::string json, ReadFile(model_dir + "/tokenizer.json"));
  std::string config;
  const std::string config_path = model_dir + "/tokenizer_config.json";
  if (std::ifstream(config_path).good()) {
    KVTIER_ASSIGN_OR_RETURN(config, ReadFile(config_path));
  }
  absl::StatusOr<Tokenizer> t = FromJson(json, config);
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat(model_dir, ": ", t.status().message()));
  }
  return t;
}

absl::StatusOr<Tokenizer> Tokenizer::FromJson(absl::string_view tokenizer_json,
                                              absl::string_view tokenizer_config_json) {
  auto impl = std::make_unique<Impl>();
  try {
    const Json root = Json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
    if (root.is_discarded() || !root.is_object()) {
      return absl::InvalidArgumentError("tokenizer.json: not a JSON object");
    }
    const Json* model = Field(root, "model");
    if (model == nullptr) return Invalid("model", "is missing");
    KVTIER_RETURN_IF_ERROR(impl->ParseModel(*model));
    if (const Json* added = Field(root, "added_tokens"); added != nullptr) {
      KVTIER_RETURN_IF_ERROR(impl->ParseAddedTokens(*added));
    }
    if (const Json* n = Field(root, "normalizer"); n != nullptr) {
      KVTIER_RETURN_IF_ERROR(impl->ParseNormalizer(*n));
    }
    bool has_byte_level = false;
    if (const Json* p = Field(root, "pre_tokenizer"); p != nullptr) {
      KVTIER_RETURN_IF_ERROR(impl->ParsePreTokenizer(*p, &has_byte_level));
    }
    if (!has_byte_level) {
      return absl::UnimplementedError(
          "tokenizer.json: the pre_tokenizer has no ByteLevel step; only byte-level BPE "
          "tokenizers are supported");
    }
    if (const Json* p = Field(root, "post_processor"); p != nullptr) {
      KVTIER_RETURN_IF_ERROR(impl->ParsePostProcessor(*p));
    }
    const Json* decoder = Field(root, "decoder");
    if (decoder == nullptr || !decoder->is_object() || Field(*decoder, "type") == nullptr ||
        *Field(*decoder, "type") != "ByteLevel") {
      return absl::UnimplementedError(absl::StrCat("tokenizer.json: decoder ",
                                                   decoder == nullptr ? "null" : decoder->dump(),
                                                   " is not supported (only ByteLevel)"));
    }
    KVTIER_RETURN_IF_ERROR(impl->BuildIdTables());
    if (!tokenizer_config_json.empty()) {
      const Json config = Json::parse(tokenizer_config_json, nullptr, false);
      if (config.is_discarded() || !config.is_object()) {
        return absl::InvalidArgumentError("tokenizer_config.json: not a JSON object");
      }
      KVTIER_RETURN_IF_ERROR(impl->ParseConfig(config));
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", e.what()));
  }
  return Tokenizer(std::move(impl));
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       bool allow_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  KVTIER_RETURN_IF_ERROR(impl_->Encode(text, allow_special, &ids));
  return ids;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeWithSpecialTokens(
    absl::string_view text) const {
  KVTIER_RETURN_IF_ERROR(impl_->post_status);
  std::vector<int32_t> ids = impl_->post_prefix;
  KVTIER_RETURN_IF_ERROR(impl_->Encode(text, true, &ids));
  ids.insert(ids.end(), impl_->post_suffix.begin(), impl_->post_suffix.end());
  return ids;
}

const std::string* Tokenizer::TokenBytes(int32_t id, bool skip_special) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_kind.size()) return nullptr;
  const uint8_t kind = impl_->id_kind[id];
  if (kind == Impl::kNone || (skip_special && kind == Impl::kSpecial)) return nullptr;
  return &impl_->id_bytes[id];
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (const std::string* bytes = TokenBytes(id, skip_special)) out.append(*bytes);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> Tokenizer::PreTokenize(absl::string_view text) const {
  std::vector<std::string> pieces;
  KVTIER_RETURN_IF_ERROR(impl_->PreTokenize(text, [&](absl::string_view piece) {
    pieces.emplace_back(piece);
    return absl::OkStatus();
  }));
  return pieces;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_kind.size()); }

std::optional<int32_t> Tokenizer::TokenId(absl::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<absl::string_view> Tokenizer::IdToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_kind.size() ||
      impl_->id_kind[id] == Impl::kNone) {
    return std::nullopt;
  }
  return absl::string_view(impl_->id_token[id]);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_kind.size() &&
         impl_->id_kind[id] == Impl::kSpecial;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }

std::vector<int32_t> Tokenizer::special_ids() const {
  std::vector<int32_t> ids;
  for (const AddedToken& t : impl_->added) {
    if (t.special) ids.push_back(t.id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->eos; }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

// ---- StreamDecoder -------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer* tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::Push(int32_t id) {
  if (const std::string* bytes = tokenizer_->TokenBytes(id, skip_special_)) {
    pending_.append(*bytes);
  }
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const Utf8Step step = NextUtf8(absl::string_view(pending_).substr(i));
    if (step.truncated) break;  // wait for the rest of the character
    if (step.valid) {
      out.append(pending_, i, step.length);
    } else {
      absl::StrAppend(&out, kReplacementChar);
    }
    i += step.length;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out = Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace kvtier::engine
