#include "text/bpe.h"

#include <algorithm>
#include <queue>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "text/utf8.h"

namespace kvtier::text {
namespace {

// Words longer than this are not cached (a long whitespace run would pin memory).
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 16;

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

}  // namespace

std::string ByteLevelEncode(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) AppendUtf8(Bytes().to_char[static_cast<uint8_t>(c)], &out);
  return out;
}

std::optional<std::string> ByteLevelDecode(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const Utf8Char c = DecodeUtf8(text);
    if (!c.valid) return std::nullopt;
    auto it = Bytes().to_byte.find(c.code_point);
    if (it == Bytes().to_byte.end()) return std::nullopt;
    out.push_back(static_cast<char>(it->second));
    text.remove_prefix(c.length);
  }
  return out;
}

int ByteTokenRank(uint8_t byte) { return Bytes().rank[byte]; }

uint64_t BpeModel::PairKey(TokenId a, TokenId b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    absl::flat_hash_map<std::string, TokenId> vocab,
    absl::Span<const std::pair<std::string, std::string>> merges, const BpeOptions& options) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->vocab_ = std::move(vocab);
  m->ignore_merges_ = options.ignore_merges;
  m->fuse_unk_ = options.fuse_unk;
  m->byte_ids_.fill(-1);
  m->vocab_by_bytes_.reserve(m->vocab_.size());
  for (const auto& [token, id] : m->vocab_) {
    std::optional<std::string> bytes = ByteLevelDecode(token);
    if (!bytes.has_value() || bytes->empty()) continue;
    m->max_token_bytes_ = std::max(m->max_token_bytes_, bytes->size());
    m->vocab_by_bytes_.emplace(*bytes, id);
    if (bytes->size() == 1) m->byte_ids_[static_cast<uint8_t>((*bytes)[0])] = id;
  }
  m->all_bytes_ = std::find(m->byte_ids_.begin(), m->byte_ids_.end(), -1) == m->byte_ids_.end();
  if (options.unk_token.has_value()) {
    auto it = m->vocab_.find(*options.unk_token);
    if (it == m->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unk_token \"", *options.unk_token, "\" is not in the vocabulary"));
    }
    m->unk_id_ = it->second;
  }
  m->merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const auto& v = m->vocab_;
    auto a = v.find(left), b = v.find(right), ab = v.find(left + right);
    if (a == v.end() || b == v.end() || ab == v.end()) {
      const std::string& missing = a == v.end() ? left : (b == v.end() ? right : left + right);
      return absl::InvalidArgumentError(absl::StrCat("merge #", rank, " (\"", left, "\", \"", right,
                                                     "\") uses \"", missing,
                                                     "\", which is not in the vocabulary"));
    }
    m->merges_[PairKey(a->second, b->second)] = {static_cast<int32_t>(rank), ab->second};
  }
  return m;
}

void BpeModel::EncodeUncached(absl::string_view word, std::vector<TokenId>* out) const {
  struct Symbol {
    TokenId id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_unk = false;
  for (char c : word) {
    const TokenId id = byte_ids_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      last_unk = false;
    } else if (unk_id_.has_value()) {
      if (fuse_unk_ && last_unk) continue;
      last_unk = true;
    } else {
      continue;  // HF drops characters missing from a vocabulary without unk_token
    }
    const int n = static_cast<int>(symbols.size());
    symbols.push_back({id >= 0 ? id : *unk_id_, n - 1, n + 1, true});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // HF's word.rs: a heap of candidate merges ordered by (rank, position); stale entries are
  // recognized by re-checking the pair.
  struct Candidate {
    int32_t rank;
    int pos;
    TokenId new_id;
    bool operator<(const Candidate& o) const {  // "less" = lower priority
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto lookup = [&](TokenId a, TokenId b) -> const std::pair<int32_t, TokenId>* {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
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

size_t BpeModel::MinTokens(size_t bytes) const {
  return all_bytes_ ? (bytes + max_token_bytes_ - 1) / max_token_bytes_ : 0;
}

void BpeModel::Encode(absl::string_view word, std::vector<TokenId>* out) const {
  if (ignore_merges_) {
    if (auto it = vocab_by_bytes_.find(word); it != vocab_by_bytes_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&mu_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out->size();
  EncodeUncached(word, out);
  if (cacheable) {
    absl::MutexLock lock(&mu_);
    if (cache_.size() < kMaxCacheEntries) {
      cache_.emplace(std::string(word), std::vector<TokenId>(out->begin() + start, out->end()));
    }
  }
}

}  // namespace kvtier::text
