#include "engine/testing/tokenizer_writer.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/testing/model_writer.h"
#include "nlohmann/json.hpp"
#include "text/bpe.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer.h"

namespace kvtier::testing {

using engine::Architecture;
using engine::ModelConfig;
using text::ByteLevelEncode;
using text::ByteTokenRank;
using text::ChatFormat;

namespace {

using OrderedJson = nlohmann::ordered_json;

// Written for kvtier; free to use. Plain sentences about everyday things, with numbers,
// contractions, punctuation and a few accented words so every part of the split regex is used.
constexpr absl::string_view kCorpus = R"(The cat sat on the warm windowsill and watched the rain.
It was a grey morning, and the weather report said the storm would last until the evening.
The old computer in the corner hummed quietly while it copied files from one disk to another.
A computer is a machine that follows instructions. It reads numbers, adds them, compares them
and stores the results in memory. Modern computers do billions of these small steps every second.
The cat didn't care about any of that. She cared about the bird on the fence and the sound of
the kettle in the kitchen, because the kettle meant breakfast was coming.

When the sun came out at 11:30, the streets dried quickly. People opened their windows, and the
smell of wet grass filled the house. The temperature rose from 12 degrees to 21 degrees in just
three hours. "It's going to be a beautiful afternoon," said the man who lived next door.
He was carrying a ladder, a bucket and a long brush, because he wanted to clean his gutters
before the next storm arrived on Thursday.

Programs are written in languages that people can read. A compiler translates the program into
the instructions the processor understands. If the program has a bug, the computer will still do
exactly what it was told, which is often not what the programmer meant. Good programmers test
their code, read it twice, and ask a friend to review it. They write small functions with clear
names, and they keep notes about why the code works the way it does.

The weather in the mountains changes quickly. In the morning the sky may be clear and blue, and
by noon thick clouds can cover the peaks. Hikers carry a warm jacket, water, a map and a little
food, even on a short walk. The wind is stronger on the ridge than in the valley, and the snow
stays on the northern slopes until June. In winter the temperature can fall to minus 20 degrees.

Our family has two cats and one dog. The cats are called Pepper and Miso; the dog is called
Biscuit. Pepper is black with white paws, and Miso is orange and very lazy. Biscuit loves long
walks in the park, but he is afraid of the vacuum cleaner. Every evening at 6 o'clock the cats
sit by the door and wait for their dinner. They know the time better than any clock.

Networks connect computers to each other. A message is cut into small packets, each packet
travels on its own, and the receiver puts them back together in the right order. If a packet is
lost, it is sent again. This is why a video call can freeze for a moment and then continue.
Data centers hold thousands of servers in long rows, cooled by cold air and sometimes by water.
A single rack can use as much power as twenty houses.

It rained again on Friday. The river rose by 40 centimeters, and the small bridge near the mill
was closed for a day. Children stood at the edge of the water and threw sticks into the current
to see whose stick would reach the second bridge first. The winner was a girl of 7 who had chosen
a thin, straight stick and thrown it into the middle of the river, where the water ran fastest.

How do you make a good cup of tea? Boil fresh water, warm the pot, add one spoon of tea for each
person and one for the pot, and pour the water while it is still bubbling. Wait four or five
minutes. Some people add milk, some add lemon, and some add honey. The cat, of course, prefers
milk without the tea. In the café on the corner they serve a naïve little cake with it, and the
owner's résumé lists thirty years of baking.

Memory in a computer is organized in bytes. A byte holds eight bits, and each bit is either zero
or one. Text is stored as a sequence of numbers: the letter A is 65, the letter a is 97, and a
space is 32. Characters from other languages, such as 日本語 or Ελληνικά, need more than one byte
each. The tokenizer of a language model cuts text into pieces called tokens, and each token is a
number from a fixed vocabulary. Common words get a token of their own; rare words are split into
smaller pieces, and in the worst case into single bytes.

The forecast for the weekend: sunny on Saturday with a high of 24 degrees, clouds on Sunday, and
a 60% chance of showers in the afternoon. Winds will be light, from the south-west, at 10 to 15
kilometers per hour. The pollen count is high, so people with allergies should keep their windows
closed. Next week will be cooler, with rain on Monday and Tuesday and frost possible at night.

The cat woke up, stretched, and walked slowly across the keyboard. The screen filled with the
letters jjjjjjjkkkkkkk and a long row of semicolons. The program didn't crash, but the document
now had a strange new paragraph in the middle. "Who wrote this?" asked the editor the next day.
Nobody answered. The cat was asleep again, on the printer this time, where the paper was warm.

Questions and answers:
Q: What is the capital of France? A: Paris.
Q: How many days are in a week? A: Seven.
Q: What is 12 times 12? A: 144.
Q: Why is the sky blue? A: Because air scatters blue light more than red light.
Q: What do cats like? A: Sleep, food, sunshine, boxes and being in the way.

def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

int main() {
  int total = 0;
  for (int i = 0; i < 100; ++i) total += i;
  return total == 4950 ? 0 : 1;
}

The library opens at 9:00 and closes at 17:30 on weekdays. On Saturdays it closes at 13:00, and
on Sundays it is closed. Books can be borrowed for three weeks and renewed twice. The reading
room on the first floor is quiet, and the computers there can be used for one hour at a time.
There is a small garden behind the building, with benches under an old apple tree, where the
librarian's cat sleeps in the afternoon sun.
)";

// The special tokens of each format, in id order (they take the last ids of the vocabulary).
std::vector<std::string> SpecialTokens(ChatFormat format) {
  if (format == ChatFormat::kLlama3) {
    return {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"};
  }
  return {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
}

OrderedJson PreTokenizerJson(ChatFormat format) {
  const bool llama3 = format == ChatFormat::kLlama3;
  OrderedJson split = {
      {"type", "Split"},
      {"pattern", {{"Regex", llama3 ? text::kLlama3SplitPattern : text::kQwen2SplitPattern}}},
      {"behavior", "Isolated"},
      {"invert", false}};
  OrderedJson byte_level = {{"type", "ByteLevel"},
                            {"add_prefix_space", false},
                            {"trim_offsets", llama3},
                            {"use_regex", false}};
  return {{"type", "Sequence"}, {"pretokenizers", OrderedJson::array({split, byte_level})}};
}

OrderedJson NormalizerJson(ChatFormat format) {
  if (format == ChatFormat::kLlama3) return nullptr;
  return {{"type", "NFC"}};
}

// A byte-level vocabulary under construction: spellings by id and ids by raw bytes.
struct Vocab {
  std::vector<std::string> bytes;  // raw bytes by id
  absl::flat_hash_map<std::string, int32_t> ids;
  std::vector<std::pair<int32_t, int32_t>> merges;
  absl::flat_hash_set<uint64_t> pairs;  // the merges, as (a << 32 | b)

  Vocab() {
    bytes.resize(256);
    for (int b = 0; b < 256; ++b) {
      const int id = ByteTokenRank(static_cast<uint8_t>(b));
      bytes[id] = std::string(1, static_cast<char>(b));
      ids[bytes[id]] = id;
    }
  }
  int32_t size() const { return static_cast<int32_t>(bytes.size()); }
  // Records the merge (a, b) (once); returns true when it made a new token.
  bool Merge(int32_t a, int32_t b) {
    if (!pairs.insert((uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b))
             .second) {
      return false;
    }
    merges.emplace_back(a, b);
    std::string joined = bytes[a] + bytes[b];
    if (ids.contains(joined)) return false;
    ids.emplace(joined, size());
    bytes.push_back(std::move(joined));
    return true;
  }
};

// The words of the corpus, pre-tokenized exactly as the final tokenizer will (format's regex and
// normalizer), with their counts; sorted, so training is deterministic.
absl::StatusOr<std::map<std::string, int64_t>> CorpusWords(ChatFormat format) {
  OrderedJson vocab = OrderedJson::object();
  for (int b = 0; b < 256; ++b) {
    vocab[ByteLevelEncode(std::string(1, static_cast<char>(b)))] =
        ByteTokenRank(static_cast<uint8_t>(b));
  }
  OrderedJson json = {
      {"normalizer", NormalizerJson(format)},
      {"pre_tokenizer", PreTokenizerJson(format)},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", OrderedJson::array()}}}};
  KVTIER_ASSIGN_OR_RETURN(text::Tokenizer bootstrap, text::Tokenizer::FromJson(json.dump()));
  KVTIER_ASSIGN_OR_RETURN(std::vector<std::string> pieces, bootstrap.PreTokenize(kCorpus));
  std::map<std::string, int64_t> words;
  for (std::string& p : pieces) ++words[std::move(p)];
  return words;
}

// Classic BPE training: repeatedly merge the most frequent adjacent pair (ties: the smallest
// pair of ids) until `target` tokens exist or every word is a single token.
absl::Status Train(ChatFormat format, int32_t target, Vocab* vocab) {
  KVTIER_ASSIGN_OR_RETURN(auto word_counts, CorpusWords(format));
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  words.reserve(word_counts.size());
  for (const auto& [word, count] : word_counts) {
    std::vector<int32_t> symbols;
    for (char c : word) symbols.push_back(ByteTokenRank(static_cast<uint8_t>(c)));
    words.emplace_back(std::move(symbols), count);
  }
  absl::flat_hash_map<uint64_t, int64_t> counts;
  while (vocab->size() < target) {
    counts.clear();
    for (const auto& [symbols, count] : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        counts[(uint64_t{static_cast<uint32_t>(symbols[i])} << 32) |
               static_cast<uint32_t>(symbols[i + 1])] += count;
      }
    }
    if (counts.empty()) break;
    uint64_t best = 0;
    int64_t best_count = 0;
    for (const auto& [pair, count] : counts) {
      if (count > best_count || (count == best_count && pair < best)) {
        best = pair;
        best_count = count;
      }
    }
    const auto a = static_cast<int32_t>(best >> 32);
    const auto b = static_cast<int32_t>(best & 0xFFFFFFFFu);
    vocab->Merge(a, b);
    const int32_t merged = vocab->ids.at(vocab->bytes[a] + vocab->bytes[b]);
    for (auto& [symbols, count] : words) {
      size_t out = 0;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) {
          symbols[out++] = merged;
          ++i;
        } else {
          symbols[out++] = symbols[i];
        }
      }
      symbols.resize(out);
    }
  }
  return absl::OkStatus();
}

// True for " word" or "word" spellings (ASCII letters, optionally after one space).
bool WordLike(const std::string& bytes) {
  size_t i = !bytes.empty() && bytes[0] == ' ' ? 1 : 0;
  if (i == bytes.size()) return false;
  for (; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return false;
  }
  return true;
}

// Fills the vocabulary up to `target` with merges (existing token, byte) whose result is new:
// first word-like tokens extended by a lowercase letter (plausible sub-words, so text the corpus
// lacks still compresses), then any token by any byte; tokens in id order, bytes in table order.
void Fill(int32_t target, Vocab* vocab) {
  auto extend = [&](int32_t a, int32_t b) {
    if (vocab->size() < target && !vocab->ids.contains(vocab->bytes[a] + vocab->bytes[b])) {
      vocab->Merge(a, b);
    }
  };
  const int32_t trained = vocab->size();
  for (int32_t a = 0; a < trained && vocab->size() < target; ++a) {
    if (!WordLike(vocab->bytes[a])) continue;
    for (char c = 'a'; c <= 'z'; ++c) extend(a, ByteTokenRank(static_cast<uint8_t>(c)));
  }
  while (vocab->size() < target) {
    const int32_t round_size = vocab->size();
    for (int32_t a = 0; a < round_size && vocab->size() < target; ++a) {
      for (int32_t b = 0; b < 256; ++b) extend(a, b);
    }
  }
}

OrderedJson AddedTokenJson(int32_t id, const std::string& content) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

}  // namespace

absl::string_view TokenizerTrainingCorpus() { return kCorpus; }

ChatFormat DefaultChatFormat(const ModelConfig& config) {
  return config.architecture == Architecture::kQwen2 ? ChatFormat::kChatML : ChatFormat::kLlama3;
}

absl::StatusOr<SpecialTokenIds> TokenizerSpecialIds(ChatFormat format, int vocab_size) {
  const int specials = static_cast<int>(SpecialTokens(format).size());
  if (vocab_size < 256 + specials || vocab_size > (1 << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size ", vocab_size,
                                                   " cannot hold a byte-level tokenizer: it needs ",
                                                   256 + specials, " to ", 1 << 24, " tokens"));
  }
  const int32_t first = vocab_size - specials;
  SpecialTokenIds ids;
  if (format == ChatFormat::kLlama3) {
    ids.bos_id = first;                    // <|begin_of_text|>
    ids.eos_ids = {first + 1, first + 4};  // <|end_of_text|>, <|eot_id|>
  } else {
    ids.bos_id = first;                // <|endoftext|>
    ids.eos_ids = {first + 2, first};  // <|im_end|>, <|endoftext|>
    ids.pad_id = first;
  }
  return ids;
}

absl::StatusOr<TokenizerFiles> BuildTokenizerFiles(const ModelConfig& config, ChatFormat format) {
  KVTIER_ASSIGN_OR_RETURN(SpecialTokenIds ids, TokenizerSpecialIds(format, config.vocab_size));
  const std::vector<std::string> specials = SpecialTokens(format);
  const int32_t base_size = config.vocab_size - static_cast<int32_t>(specials.size());

  Vocab vocab;
  KVTIER_RETURN_IF_ERROR(Train(format, base_size, &vocab));
  Fill(base_size, &vocab);

  const bool llama3 = format == ChatFormat::kLlama3;
  OrderedJson added = OrderedJson::array();
  for (size_t i = 0; i < specials.size(); ++i) {
    added.push_back(AddedTokenJson(base_size + static_cast<int32_t>(i), specials[i]));
  }
  OrderedJson post_processor;
  if (llama3) {
    const std::string& bos = specials[0];
    post_processor = {
        {"type", "Sequence"},
        {"processors",
         OrderedJson::array(
             {{{"type", "ByteLevel"},
               {"add_prefix_space", true},
               {"trim_offsets", false},
               {"use_regex", true}},
              {{"type", "TemplateProcessing"},
               {"single", OrderedJson::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
               {"pair", OrderedJson::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                            {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
                                            {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
               {"special_tokens",
                {{bos,
                  {{"id", bos},
                   {"ids", OrderedJson::array({ids.bos_id})},
                   {"tokens", OrderedJson::array({bos})}}}}}}})}};
  } else {
    post_processor = {{"type", "ByteLevel"},
                      {"add_prefix_space", false},
                      {"trim_offsets", false},
                      {"use_regex", false}};
  }
  // Keys are unique: append to the ordered map's vector directly (its operator[] searches
  // linearly, quadratic for a 128k vocabulary).
  OrderedJson vocab_json = OrderedJson::object();
  auto& entries =
      static_cast<OrderedJson::object_t::Container&>(vocab_json.get_ref<OrderedJson::object_t&>());
  entries.reserve(vocab.size());
  for (int32_t id = 0; id < vocab.size(); ++id) {
    entries.emplace_back(ByteLevelEncode(vocab.bytes[id]), id);
  }
  OrderedJson merges_json = OrderedJson::array();
  for (const auto& [a, b] : vocab.merges) {
    merges_json.push_back(
        absl::StrCat(ByteLevelEncode(vocab.bytes[a]), " ", ByteLevelEncode(vocab.bytes[b])));
  }
  OrderedJson tokenizer = {{"version", "1.0"},
                           {"truncation", nullptr},
                           {"padding", nullptr},
                           {"added_tokens", added},
                           {"normalizer", NormalizerJson(format)},
                           {"pre_tokenizer", PreTokenizerJson(format)},
                           {"post_processor", post_processor},
                           {"decoder",
                            {{"type", "ByteLevel"},
                             {"add_prefix_space", llama3},
                             {"trim_offsets", llama3},
                             {"use_regex", llama3}}},
                           {"model",
                            {{"type", "BPE"},
                             {"dropout", nullptr},
                             {"unk_token", nullptr},
                             {"continuing_subword_prefix", nullptr},
                             {"end_of_word_suffix", nullptr},
                             {"fuse_unk", false},
                             {"byte_fallback", false},
                             {"ignore_merges", llama3},
                             {"vocab", std::move(vocab_json)},
                             {"merges", std::move(merges_json)}}}};

  OrderedJson decoder_map = OrderedJson::object();
  for (size_t i = 0; i < specials.size(); ++i) {
    decoder_map[std::to_string(base_size + i)] = {{"content", specials[i]}, {"lstrip", false},
                                                  {"normalized", false},    {"rstrip", false},
                                                  {"single_word", false},   {"special", true}};
  }
  OrderedJson config_json = OrderedJson::object();
  config_json["added_tokens_decoder"] = decoder_map;
  if (!llama3) {
    config_json["additional_special_tokens"] = OrderedJson::array({specials[1], specials[2]});
  }
  config_json["bos_token"] = llama3 ? OrderedJson(specials[0]) : OrderedJson(nullptr);
  config_json["chat_template"] = std::string(text::ChatTemplateText(format));
  config_json["clean_up_tokenization_spaces"] = false;
  config_json["eos_token"] = std::string(text::ChatEndOfTurnToken(format));
  config_json["model_input_names"] = OrderedJson::array({"input_ids", "attention_mask"});
  config_json["model_max_length"] = config.max_position_embeddings;
  if (!llama3) {
    config_json["pad_token"] = specials[0];
    config_json["split_special_tokens"] = false;
  }
  config_json["tokenizer_class"] = "PreTrainedTokenizerFast";
  if (!llama3) config_json["unk_token"] = nullptr;

  TokenizerFiles files;
  files.tokenizer_json = tokenizer.dump(2) + "\n";
  files.tokenizer_config_json = config_json.dump(2) + "\n";
  files.ids = std::move(ids);
  return files;
}

absl::StatusOr<SpecialTokenIds> WriteTokenizer(const ModelConfig& config, ChatFormat format,
                                               const std::string& model_dir) {
  KVTIER_ASSIGN_OR_RETURN(TokenizerFiles files, BuildTokenizerFiles(config, format));
  KVTIER_RETURN_IF_ERROR(WriteFileAtomically(model_dir + "/tokenizer.json", files.tokenizer_json));
  KVTIER_RETURN_IF_ERROR(
      WriteFileAtomically(model_dir + "/tokenizer_config.json", files.tokenizer_config_json));
  return files.ids;
}

}  // namespace kvtier::testing
