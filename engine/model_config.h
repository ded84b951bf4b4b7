// Model configuration: the architecture fields of a Hugging Face `config.json` that the engine
// needs, for the Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
//
// Plain value type; thread-compatible.
#ifndef KVTIER_ENGINE_MODEL_CONFIG_H_
#define KVTIER_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::engine {

enum class Architecture { kLlama, kMistral, kQwen2 };

// `rope_scaling` of config.json. Only "llama3" (and none) is supported; anything else is an
// Unimplemented error at load time, never silently ignored.
struct RopeScaling {
  // "" (none) or "llama3". Default: "".
  std::string type;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;    // num_hidden_layers
  int num_heads = 0;     // num_attention_heads
  int num_kv_heads = 0;  // num_key_value_heads (defaults to num_heads when absent)
  int head_dim = 0;      // head_dim, or hidden_size / num_heads when absent
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Qwen2: true (q/k/v projections carry a bias)
  int sliding_window = 0;       // Mistral; 0 = none. Longer sequences are refused.
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;  // eos_token_id, an int or a list
  std::string torch_dtype = "bfloat16";

  // Parses config.json text. InvalidArgument for malformed JSON, missing or non-positive
  // fields, inconsistent head counts; Unimplemented for unsupported architectures or rope types.
  static absl::StatusOr<ModelConfig> FromJson(absl::string_view json);
  // Reads `model_dir`/config.json.
  static absl::StatusOr<ModelConfig> Load(const std::string& model_dir);
  // The config.json text Hugging Face transformers loads for this configuration.
  std::string ToJson() const;

  // "LlamaForCausalLM", "MistralForCausalLM" or "Qwen2ForCausalLM".
  std::string ArchitectureName() const;
  // The same architecture fields in a canonical byte string (part of the model fingerprint).
  std::string CanonicalArchitecture() const;

  // 2 * layers * kv_heads * head_dim * dtype_bytes.
  int64_t KvBytesPerToken(int dtype_bytes) const {
    return int64_t{2} * num_layers * num_kv_heads * head_dim * dtype_bytes;
  }
  int64_t ParamCount() const;
};

// Named shapes for `kvtier-model init`: "tiny" (tests and demos: 4 layers, hidden 256, GQA),
// "tiny-qwen2" (tiny with QKV bias, tied embeddings), "tiny-mistral", "llama3-8b", "qwen2-7b".
absl::StatusOr<ModelConfig> PresetConfig(absl::string_view name);
std::vector<std::string> PresetNames();

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_MODEL_CONFIG_H_
