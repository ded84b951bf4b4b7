// Byte-level BPE (docs/engine.md, "Tokenizer and chat templates"): GPT-2's byte-to-unicode
// table, which spells every byte as one printable character (the spelling of byte-level
// vocabularies and merges), and the BPE model that merges the bytes of one pre-tokenized piece
// into token ids, as Hugging Face tokenizers' BPE does (a heap of candidate merges by rank, then
// position).
//
// The byte-level functions are thread-safe. BpeModel is immutable after Create except for an
// internal, mutex-guarded cache of encoded words: safe for concurrent use without external
// synchronization. It is not movable; Create hands it out in a unique_ptr.
#ifndef KVTIER_TEXT_BPE_H_
#define KVTIER_TEXT_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kvtier/token.h"

namespace kvtier::text {

// GPT-2's byte-to-unicode table: every byte maps to one printable character (the printable
// Latin-1 bytes to themselves, the others to U+0100..U+0143: space is "Ġ", newline "Ċ").
// Returns the UTF-8 text of the mapped characters.
std::string ByteLevelEncode(absl::string_view bytes);
// The inverse: nullopt when `text` holds a character outside the table (or is not UTF-8).
std::optional<std::string> ByteLevelDecode(absl::string_view text);
// The id GPT-2/Llama-3/Qwen2 vocabularies give the single-byte token of `byte` (0..255): its
// position in the table's order ('!' = 0, ..., 'Ġ' = 220).
int ByteTokenRank(uint8_t byte);

struct BpeOptions {
  // Emit a piece that is a whole vocabulary entry as that token without merging (Llama-3).
  // Default: false.
  bool ignore_merges = false;
  // The token (its vocabulary spelling) of bytes the vocabulary lacks; nullopt drops them, as
  // HF does. Default: nullopt.
  std::optional<std::string> unk_token;
  // Consecutive unknown bytes give one unk_token. Default: false.
  bool fuse_unk = false;
};

class BpeModel {
 public:
  // `vocab` maps token spellings (byte-level characters) to ids; `merges` are pairs of
  // spellings in rank order (a repeated pair keeps the later rank, as HF does).
  // InvalidArgument when a merge uses a token, or makes one, that `vocab` lacks, or when the
  // unk_token is not in `vocab`; the message names the merge or token.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      absl::flat_hash_map<std::string, TokenId> vocab,
      absl::Span<const std::pair<std::string, std::string>> merges, const BpeOptions& options);

  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Appends the ids of `word`, the raw bytes of one pre-tokenized piece. The work is
  // O(n log n) in the word's n bytes.
  void Encode(absl::string_view word, std::vector<TokenId>* out) const;
  // The fewest ids Encode can give for a word of `bytes` bytes: each token stands for at most
  // the longest vocabulary entry's bytes (0 when some byte has no token, so bytes may be
  // dropped or fused into one unk_token).
  size_t MinTokens(size_t bytes) const;

  // Spelling -> id.
  const absl::flat_hash_map<std::string, TokenId>& vocab() const { return vocab_; }

 private:
  BpeModel() = default;
  static uint64_t PairKey(TokenId a, TokenId b);
  void EncodeUncached(absl::string_view word, std::vector<TokenId>* out) const;

  absl::flat_hash_map<std::string, TokenId> vocab_;
  absl::flat_hash_map<std::string, TokenId> vocab_by_bytes_;  // decoded bytes -> id
  std::array<TokenId, 256> byte_ids_;                         // single-byte tokens, -1 = none
  size_t max_token_bytes_ = 1;  // the longest vocabulary entry, in bytes
  bool all_bytes_ = false;      // every byte has a single-byte token
  absl::flat_hash_map<uint64_t, std::pair<int32_t, TokenId>> merges_;  // pair -> (rank, id)
  bool ignore_merges_ = false;
  std::optional<TokenId> unk_id_;
  bool fuse_unk_ = false;

  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<std::string, std::vector<TokenId>> cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::text

#endif  // KVTIER_TEXT_BPE_H_
