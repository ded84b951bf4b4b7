// The pre-tokenizer of byte-level BPE tokenizers (docs/engine.md, "Tokenizer and chat
// templates"): splits (normalized) text into the pieces BPE merges within, as Hugging Face
// tokenizers' ByteLevel, Split and Digits pre-tokenizers do, with regexes on PCRE2 in UTF + UCP
// mode (JIT-compiled when possible). Any bytes are accepted: a regex runs on each valid UTF-8
// run separately and invalid bytes end up in the gaps between matches.
//
// A PreTokenizer is built by its Add* calls on one thread and is then immutable: Split may run
// on any number of threads at once (the regexes are shared, match data is per call). Copyable.
#ifndef KVTIER_TEXT_PRE_TOKENIZER_H_
#define KVTIER_TEXT_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::text {

// The split regexes of the published tokenizers (tokenizer.json pre_tokenizer patterns).
// Llama-3: digits in groups of up to three. Qwen2: single digits. GPT-2: the pattern the
// ByteLevel pre-tokenizer applies itself when `use_regex` is true.
inline constexpr absl::string_view kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr absl::string_view kQwen2SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr absl::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// What a Split step does with the matches of its pattern (HF's SplitDelimiterBehavior): drop
// them, keep each as a piece of its own, join each to the piece before or after it, or join
// runs of consecutive matches (and of consecutive gaps) into one piece.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class SplitRegex;  // a compiled pattern, defined in pre_tokenizer.cc

class PreTokenizer {
 public:
  // Receives each final piece; the view lives during the call only.
  using PieceFn = absl::FunctionRef<absl::Status(absl::string_view)>;

  // HF ByteLevel: prefixes a space to a piece that does not start with one (add_prefix_space),
  // then isolates the matches of kGpt2SplitPattern (use_regex).
  absl::Status AddByteLevel(bool add_prefix_space, bool use_regex);
  // HF Split on `pattern`, a regex or, with `literal`, a plain string. InvalidArgument when the
  // regex does not compile or the string is empty.
  absl::Status AddSplit(absl::string_view pattern, bool literal, SplitBehavior behavior);
  // HF Digits: isolates runs of digits, or single digits with `individual_digits`.
  absl::Status AddDigits(bool individual_digits);

  // Applies the steps in order to `text` and calls `emit` with each non-empty final piece, in
  // text order (no piece list is built: pieces stream from the regex to `emit`). With no steps,
  // `text` is the one piece. Returns the first error of `emit`, or ResourceExhausted when the
  // regex engine fails (its resource limits).
  absl::Status Split(absl::string_view text, PieceFn emit) const;
  // The pieces as a list.
  absl::StatusOr<std::vector<std::string>> Pieces(absl::string_view text) const;

 private:
  struct Step {
    bool prefix_space = false;
    std::shared_ptr<const SplitRegex> regex;  // nullptr: no splitting
    SplitBehavior behavior = SplitBehavior::kIsolated;
  };

  absl::Status Walk(size_t i, absl::string_view piece, PieceFn emit) const;

  std::vector<Step> steps_;
};

}  // namespace kvtier::text

#endif  // KVTIER_TEXT_PRE_TOKENIZER_H_
