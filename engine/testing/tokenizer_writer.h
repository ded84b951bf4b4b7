// Tokenizers for random models (`kvtier-model init`): a complete, deterministic Hugging Face
// tokenizer (tokenizer.json + tokenizer_config.json) whose size is exactly config.vocab_size,
// so a generated model directory loads in kvtier and in transformers' AutoTokenizer alike.
//
// The tokenizer is byte-level BPE in the style of the real model of each chat format:
//  - kLlama3: Llama-3's split regex, no normalizer, ignore_merges, a TemplateProcessing
//    post-processor that prepends <|begin_of_text|> (HF `encode` adds bos, as for Llama-3);
//    special tokens <|begin_of_text|>, <|end_of_text|>, <|start_header_id|>, <|end_header_id|>,
//    <|eot_id|>.
//  - kChatML: Qwen2's split regex, NFC normalizer, no bos; special tokens <|endoftext|>,
//    <|im_start|>, <|im_end|>.
// The special tokens take the last ids of the vocabulary, in the order above. Below them: the
// 256 byte tokens (GPT-2 order), then merges learned by a small BPE trainer over an embedded
// English corpus, then filler merges (an existing token followed by a byte) until the size is
// reached. See docs/engine.md, "Tokenizer and chat templates".
//
// Part of the kvtier_model_writer library (with model_writer.h), which only kvtier-model, the
// tests and the benchmarks link. Free functions; thread-safe.
#ifndef KVTIER_ENGINE_TESTING_TOKENIZER_WRITER_H_
#define KVTIER_ENGINE_TESTING_TOKENIZER_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model_config.h"
#include "text/chat_template.h"

namespace kvtier::testing {

// The ids a model's config.json / generation_config.json should carry for its tokenizer.
struct SpecialTokenIds {
  // config.json "bos_token_id": <|begin_of_text|> (kLlama3) or <|endoftext|> (kChatML; as in
  // Qwen2, the tokenizer itself has no bos_token and never prepends it).
  int32_t bos_id = -1;
  // "eos_token_id": kLlama3 {<|end_of_text|>, <|eot_id|>}; kChatML {<|im_end|>, <|endoftext|>}.
  std::vector<int32_t> eos_ids;
  // kChatML: <|endoftext|> (Qwen2's pad_token); kLlama3: -1 (none).
  int32_t pad_id = -1;
};

// The ids WriteTokenizer assigns for a vocabulary of `vocab_size`, without building anything.
// InvalidArgument when the vocabulary cannot hold the 256 byte tokens plus the special tokens.
absl::StatusOr<SpecialTokenIds> TokenizerSpecialIds(text::ChatFormat format, int vocab_size);

// kChatML for Qwen2 models, kLlama3 for the others.
text::ChatFormat DefaultChatFormat(const engine::ModelConfig& config);

struct TokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  SpecialTokenIds ids;
};

// Builds both files in memory. Deterministic: the same (vocab_size, max_position_embeddings,
// format) always gives the same bytes.
absl::StatusOr<TokenizerFiles> BuildTokenizerFiles(const engine::ModelConfig& config,
                                                   text::ChatFormat format);

// Writes `model_dir`/tokenizer.json and then `model_dir`/tokenizer_config.json (each to a
// temporary name, then renamed) and returns the special token ids. The directory must exist.
absl::StatusOr<SpecialTokenIds> WriteTokenizer(const engine::ModelConfig& config,
                                               text::ChatFormat format,
                                               const std::string& model_dir);

// The embedded training text (a few KB of plain English).
absl::string_view TokenizerTrainingCorpus();

}  // namespace kvtier::testing

#endif  // KVTIER_ENGINE_TESTING_TOKENIZER_WRITER_H_
