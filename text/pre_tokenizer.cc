#include "text/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "text/utf8.h"

namespace kvtier::text {

// A compiled pattern. Immutable, shared by all threads (match data is per call).
class SplitRegex {
 public:
  static absl::StatusOr<std::shared_ptr<const SplitRegex>> Compile(absl::string_view pattern,
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
    return std::shared_ptr<const SplitRegex>(new SplitRegex(code));
  }

  ~SplitRegex() { pcre2_code_free(code_); }
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

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
      const absl::string_view run = s.substr(run_begin, ValidUtf8Prefix(s.substr(run_begin)));
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
      run_begin += run.size();
      // Skip the invalid sequences up to the next valid character.
      while (run_begin < s.size()) {
        const Utf8Char c = DecodeUtf8(s.substr(run_begin));
        if (c.valid) break;
        run_begin += c.length;
      }
    }
    return absl::OkStatus();
  }

 private:
  explicit SplitRegex(pcre2_code* code) : code_(code) {}
  static std::string ErrorText(int error) {
    PCRE2_UCHAR buffer[256];
    if (pcre2_get_error_message(error, buffer, sizeof(buffer)) < 0) {
      return absl::StrCat("PCRE2 error ", error);
    }
    return std::string(reinterpret_cast<const char*>(buffer));
  }

  pcre2_code* code_;
};

absl::Status PreTokenizer::AddByteLevel(bool add_prefix_space, bool use_regex) {
  Step step;
  step.prefix_space = add_prefix_space;
  if (use_regex) {
    KVTIER_ASSIGN_OR_RETURN(step.regex, SplitRegex::Compile(kGpt2SplitPattern, false));
  }
  steps_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status PreTokenizer::AddSplit(absl::string_view pattern, bool literal,
                                    SplitBehavior behavior) {
  if (literal && pattern.empty()) return absl::InvalidArgumentError("empty Split pattern");
  Step step;
  KVTIER_ASSIGN_OR_RETURN(step.regex, SplitRegex::Compile(pattern, literal));
  step.behavior = behavior;
  steps_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status PreTokenizer::AddDigits(bool individual_digits) {
  return AddSplit(individual_digits ? "\\p{N}" : "\\p{N}+", false, SplitBehavior::kIsolated);
}

absl::Status PreTokenizer::Split(absl::string_view text, PieceFn emit) const {
  return Walk(0, text, emit);
}

absl::StatusOr<std::vector<std::string>> PreTokenizer::Pieces(absl::string_view text) const {
  std::vector<std::string> pieces;
  KVTIER_RETURN_IF_ERROR(Split(text, [&](absl::string_view piece) {
    pieces.emplace_back(piece);
    return absl::OkStatus();
  }));
  return pieces;
}

// Applies steps_[i..] to `piece`, streaming the resulting pieces to `emit` (the Isolated split
// of a long prompt goes straight from the regex to the caller).
absl::Status PreTokenizer::Walk(size_t i, absl::string_view piece, PieceFn emit) const {
  if (piece.empty()) return absl::OkStatus();
  if (i == steps_.size()) return emit(piece);
  const Step& step = steps_[i];
  std::string prefixed;
  if (step.prefix_space && !absl::StartsWith(piece, " ")) {
    prefixed = absl::StrCat(" ", piece);
    piece = prefixed;
  }
  if (step.regex == nullptr) return Walk(i + 1, piece, emit);
  auto next = [&](size_t begin, size_t end) {
    return Walk(i + 1, piece.substr(begin, end - begin), emit);
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

}  // namespace kvtier::text
