#include "text/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "text/bpe.h"
#include "text/pre_tokenizer.h"
#include "text/utf8.h"

namespace kvtier::text {
namespace {

using Json = nlohmann::json;

// Ids beyond this are refused: a hostile file must not make us allocate gigabytes.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;
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

// `text` without the Unicode whitespace at its start (`leading`) or its end.
absl::string_view StripWhitespace(absl::string_view text, bool leading) {
  while (!text.empty()) {
    const Utf8Char c = leading ? DecodeUtf8(text) : DecodeUtf8Before(text, text.size());
    if (!c.valid || !IsUnicodeWhitespace(c.code_point)) break;
    if (leading) {
      text.remove_prefix(c.length);
    } else {
      text.remove_suffix(c.length);
    }
  }
  return text;
}

absl::Status TooMany(size_t max_tokens) {
  return absl::OutOfRangeError(absl::StrCat("the text is more than ", max_tokens, " tokens"));
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

absl::StatusOr<TokenId> IdValue(const Json& v, absl::string_view where) {
  if (!v.is_number_integer()) return Invalid(where, "token ids must be integers");
  const int64_t id = v.get<int64_t>();
  if (id < 0 || id >= kMaxTokenId) {
    return Invalid(where, absl::StrCat("token id ", id, " is out of range"));
  }
  return static_cast<TokenId>(id);
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

// ---- Tokenizer -----------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> bpe;

  // Per id: spelling, decoded bytes, kind.
  enum Kind : uint8_t { kNone, kModel, kAdded, kSpecial };
  std::vector<std::string> id_token;
  std::vector<std::string> id_bytes;
  std::vector<uint8_t> id_kind;
  size_t max_token_bytes = 1;

  std::vector<AddedToken> added;
  absl::flat_hash_map<std::string, TokenId> added_by_content;
  std::array<std::vector<int>, 256> added_by_first_byte;  // indices into `added`, longest first

  bool nfc = false;
  PreTokenizer pre_tokenizer;

  absl::Status post_status;  // OK when the post-processor is supported
  std::vector<TokenId> post_prefix, post_suffix;

  std::optional<TokenId> bos;
  std::vector<TokenId> eos;
  std::string chat_template;

  absl::Status ParseModel(const Json& model);
  absl::Status ParseAddedTokens(const Json& added_tokens);
  absl::Status ParseNormalizer(const Json& normalizer);
  absl::Status ParsePreTokenizer(const Json& pre, bool* has_byte_level);
  absl::Status ParsePostProcessor(const Json& post);
  absl::Status ParseConfig(const Json& config);
  absl::Status BuildIdTables();

  // Normalizes and pre-tokenizes `text` (no added tokens in it) and appends the BPE ids of its
  // pieces; OutOfRange (TooMany) once `out` would hold more than `max_tokens` ids.
  absl::Status EncodeSegment(absl::string_view text, size_t max_tokens,
                             std::vector<TokenId>* out) const;
  // The leftmost-longest added token at or after *pos (HF's aho-corasick, LeftmostLongest),
  // its start in *pos; nullptr when none.
  const AddedToken* FindAddedToken(absl::string_view text, size_t* pos) const;
  // The added token spelled `content`, or nullptr.
  const AddedToken* AddedByContent(absl::string_view content) const;
  absl::Status Encode(absl::string_view text, bool allow_special, size_t max_tokens,
                      std::vector<TokenId>* out) const;
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
  BpeOptions options;
  KVTIER_ASSIGN_OR_RETURN(options.ignore_merges, BoolField(model, "ignore_merges", false, kWhere));
  KVTIER_ASSIGN_OR_RETURN(options.fuse_unk, BoolField(model, "fuse_unk", false, kWhere));
  if (const Json* unk = Field(model, "unk_token"); unk != nullptr) {
    if (!unk->is_string()) return Invalid(kWhere, "\"unk_token\" must be a string");
    options.unk_token = unk->get<std::string>();
  }

  const Json* v = Field(model, "vocab");
  if (v == nullptr || !v->is_object()) return Invalid(kWhere, "\"vocab\" must be an object");
  absl::flat_hash_map<std::string, TokenId> vocab;
  vocab.reserve(v->size());
  for (auto it = v->begin(); it != v->end(); ++it) {
    KVTIER_ASSIGN_OR_RETURN(TokenId id, IdValue(it.value(), "model.vocab"));
    vocab.emplace(it.key(), id);
  }

  std::vector<std::pair<std::string, std::string>> merges;
  if (const Json* m = Field(model, "merges"); m != nullptr) {
    if (!m->is_array()) return Invalid(kWhere, "\"merges\" must be an array");
    merges.reserve(m->size());
    for (const Json& merge : *m) {
      const size_t rank = merges.size();
      if (merge.is_string()) {
        const std::string& s = merge.get_ref<const std::string&>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return Invalid(kWhere, absl::StrCat("merge #", rank, " \"", s,
                                              "\" is not two tokens separated by a space"));
        }
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
      } else {
        return Invalid(kWhere, absl::StrCat("merge #", rank, " must be \"a b\" or [\"a\", \"b\"]"));
      }
    }
  }
  absl::StatusOr<std::unique_ptr<BpeModel>> model_or =
      BpeModel::Create(std::move(vocab), merges, options);
  if (!model_or.ok()) return Invalid(kWhere, model_or.status().message());
  bpe = *std::move(model_or);
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
  if (type == "ByteLevel") {
    *has_byte_level = true;
    KVTIER_ASSIGN_OR_RETURN(bool prefix_space, BoolField(pre, "add_prefix_space", true, kWhere));
    KVTIER_ASSIGN_OR_RETURN(bool use_regex, BoolField(pre, "use_regex", true, kWhere));
    return pre_tokenizer.AddByteLevel(prefix_space, use_regex);
  }
  if (type == "Digits") {
    KVTIER_ASSIGN_OR_RETURN(bool individual, BoolField(pre, "individual_digits", false, kWhere));
    return pre_tokenizer.AddDigits(individual);
  }
  if (type != "Split") {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.json: pre_tokenizer \"", type,
                     "\" is not supported (only ByteLevel, Split, Digits and Sequence of them)"));
  }
  KVTIER_ASSIGN_OR_RETURN(bool invert, BoolField(pre, "invert", false, kWhere));
  if (invert) return absl::UnimplementedError("tokenizer.json: inverted Split is not supported");
  constexpr absl::string_view kBadPattern =
      "Split \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}";
  const Json* pattern = Field(pre, "pattern");
  if (pattern == nullptr || !pattern->is_object()) return Invalid(kWhere, kBadPattern);
  const Json* re = Field(*pattern, "Regex");
  const Json* lit = Field(*pattern, "String");
  const bool literal = re == nullptr || !re->is_string();
  if (literal && (lit == nullptr || !lit->is_string())) return Invalid(kWhere, kBadPattern);
  KVTIER_ASSIGN_OR_RETURN(std::string behavior_name, StringField(pre, "behavior", kWhere));
  static const auto* const kBehaviors = new absl::flat_hash_map<std::string, SplitBehavior>({
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous},
  });
  auto behavior = kBehaviors->find(behavior_name);
  if (behavior == kBehaviors->end()) {
    return Invalid(kWhere, absl::StrCat("unknown Split behavior \"", behavior_name, "\""));
  }
  const absl::Status added = pre_tokenizer.AddSplit(
      (literal ? lit : re)->get_ref<const std::string&>(), literal, behavior->second);
  return added.ok() ? added : Invalid(kWhere, added.message());
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
        KVTIER_ASSIGN_OR_RETURN(TokenId value, IdValue(id, "post_processor"));
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
  auto token_id = [&](const char* key) -> absl::StatusOr<std::optional<TokenId>> {
    const Json* v = Field(config, key);
    if (v == nullptr) return std::optional<TokenId>();
    if (v->is_object()) v = Field(*v, "content");  // {"__type": "AddedToken", "content": ...}
    if (v == nullptr || !v->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer_config.json: \"", key, "\" must be a string or AddedToken"));
    }
    const std::string& content = v->get_ref<const std::string&>();
    if (auto it = added_by_content.find(content); it != added_by_content.end()) return it->second;
    if (auto it = bpe->vocab().find(content); it != bpe->vocab().end()) return it->second;
    return absl::InvalidArgumentError(absl::StrCat("tokenizer_config.json: ", key, " \"", content,
                                                   "\" is not a token of tokenizer.json"));
  };
  KVTIER_ASSIGN_OR_RETURN(bos, token_id("bos_token"));
  KVTIER_ASSIGN_OR_RETURN(std::optional<TokenId> eos_id, token_id("eos_token"));
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
  const absl::flat_hash_map<std::string, TokenId>& vocab = bpe->vocab();
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
    max_token_bytes = std::max(max_token_bytes, id_bytes[id].size());
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::EncodeSegment(absl::string_view text, size_t max_tokens,
                                            std::vector<TokenId>* out) const {
  if (text.empty()) return absl::OkStatus();
  auto merge = [&](absl::string_view piece) {
    // A word too long for the tokens left is refused before its O(n log n) merge.
    if (bpe->MinTokens(piece.size()) > max_tokens - out->size()) return TooMany(max_tokens);
    bpe->Encode(piece, out);
    return out->size() > max_tokens ? TooMany(max_tokens) : absl::OkStatus();
  };
  if (!nfc) return pre_tokenizer.Split(text, merge);
  return pre_tokenizer.Split(Nfc(text), merge);
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

const AddedToken* Tokenizer::Impl::AddedByContent(absl::string_view content) const {
  auto it = added_by_content.find(content);
  if (it == added_by_content.end()) return nullptr;
  for (const AddedToken& t : added) {
    if (t.id == it->second) return &t;
  }
  return nullptr;
}

absl::Status Tokenizer::Impl::Encode(absl::string_view text, bool allow_special, size_t max_tokens,
                                     std::vector<TokenId>* out) const {
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
      const Utf8Char before = DecodeUtf8Before(text, begin);
      const Utf8Char after = DecodeUtf8(text.substr(end));
      if ((before.valid && IsWordChar(before.code_point)) ||
          (after.valid && IsWordChar(after.code_point))) {
        continue;
      }
    }
    if (token->lstrip) {
      begin = segment_start +
              StripWhitespace(text.substr(segment_start, begin - segment_start), false).size();
    }
    if (token->rstrip) {
      end = text.size() - StripWhitespace(text.substr(end), true).size();
      pos = end;
    }
    KVTIER_RETURN_IF_ERROR(
        EncodeSegment(text.substr(segment_start, begin - segment_start), max_tokens, out));
    if (out->size() >= max_tokens) return TooMany(max_tokens);
    out->push_back(token->id);
    segment_start = end;
  }
  return EncodeSegment(text.substr(segment_start), max_tokens, out);
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

absl::StatusOr<std::vector<TokenId>> Tokenizer::Encode(absl::string_view text, bool allow_special,
                                                       size_t max_tokens) const {
  std::vector<TokenId> ids;
  ids.reserve(std::min(text.size() / 3, max_tokens) + 1);
  KVTIER_RETURN_IF_ERROR(impl_->Encode(text, allow_special, max_tokens, &ids));
  return ids;
}

absl::StatusOr<std::vector<TokenId>> Tokenizer::EncodeWithSpecialTokens(absl::string_view text,
                                                                        size_t max_tokens) const {
  KVTIER_RETURN_IF_ERROR(impl_->post_status);
  const std::vector<TokenId>& prefix = impl_->post_prefix;
  const std::vector<TokenId>& suffix = impl_->post_suffix;
  if (prefix.size() + suffix.size() > max_tokens) return TooMany(max_tokens);
  std::vector<TokenId> ids = prefix;
  KVTIER_RETURN_IF_ERROR(impl_->Encode(text, true, max_tokens - suffix.size(), &ids));
  ids.insert(ids.end(), suffix.begin(), suffix.end());
  return ids;
}

absl::StatusOr<std::vector<TokenId>> Tokenizer::EncodePieces(absl::Span<const TextPiece> pieces,
                                                             size_t max_tokens) const {
  std::vector<TokenId> ids;
  // The marker's added token next to text piece i (nullptr when none).
  auto marker = [&](size_t i) -> const AddedToken* {
    return i < pieces.size() && pieces[i].special ? impl_->AddedByContent(pieces[i].text) : nullptr;
  };
  for (size_t i = 0; i < pieces.size(); ++i) {
    const TextPiece& piece = pieces[i];
    if (piece.special) {
      const AddedToken* token = marker(i);
      if (token == nullptr || !token->special) {
        return absl::InvalidArgumentError(
            absl::StrCat("\"", piece.text, "\" is not a special token of the tokenizer"));
      }
      if (ids.size() >= max_tokens) return TooMany(max_tokens);
      ids.push_back(token->id);
      continue;
    }
    absl::string_view text = piece.text;
    if (const AddedToken* before = i > 0 ? marker(i - 1) : nullptr; before && before->rstrip) {
      text = StripWhitespace(text, /*leading=*/true);
    }
    if (const AddedToken* after = marker(i + 1); after && after->lstrip) {
      text = StripWhitespace(text, /*leading=*/false);
    }
    KVTIER_RETURN_IF_ERROR(impl_->Encode(text, /*allow_special=*/false, max_tokens, &ids));
  }
  return ids;
}

const std::string* Tokenizer::TokenBytes(TokenId id, bool skip_special) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_kind.size()) return nullptr;
  const uint8_t kind = impl_->id_kind[id];
  if (kind == Impl::kNone || (skip_special && kind == Impl::kSpecial)) return nullptr;
  return &impl_->id_bytes[id];
}

std::string Tokenizer::Decode(absl::Span<const TokenId> ids, bool skip_special) const {
  std::string out;
  for (TokenId id : ids) {
    if (const std::string* bytes = TokenBytes(id, skip_special)) out.append(*bytes);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> Tokenizer::PreTokenize(absl::string_view text) const {
  if (!impl_->nfc) return impl_->pre_tokenizer.Pieces(text);
  return impl_->pre_tokenizer.Pieces(Nfc(text));
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_kind.size()); }

size_t Tokenizer::max_token_bytes() const { return impl_->max_token_bytes; }

std::optional<TokenId> Tokenizer::IdOf(absl::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) {
    return it->second;
  }
  const absl::flat_hash_map<std::string, TokenId>& vocab = impl_->bpe->vocab();
  if (auto it = vocab.find(token); it != vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<absl::string_view> Tokenizer::IdToken(TokenId id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_kind.size() ||
      impl_->id_kind[id] == Impl::kNone) {
    return std::nullopt;
  }
  return absl::string_view(impl_->id_token[id]);
}

bool Tokenizer::IsSpecial(TokenId id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_kind.size() &&
         impl_->id_kind[id] == Impl::kSpecial;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }

std::vector<TokenId> Tokenizer::special_ids() const {
  std::vector<TokenId> ids;
  for (const AddedToken& t : impl_->added) {
    if (t.special) ids.push_back(t.id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::optional<TokenId> Tokenizer::bos_id() const { return impl_->bos; }
const std::vector<TokenId>& Tokenizer::eos_ids() const { return impl_->eos; }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

}  // namespace kvtier::text
