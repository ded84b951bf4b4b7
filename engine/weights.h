// The weights of a Llama-family checkpoint, validated against its ModelConfig, as views into the
// mmapped safetensors files (no copy: each backend converts them into its own storage).
//
// HF tensor names: model.embed_tokens.weight [vocab, hidden];
// model.layers.{i}.input_layernorm.weight [hidden]; .self_attn.{q,k,v,o}_proj.weight
// ([heads*hd, hidden], [kv*hd, hidden], [kv*hd, hidden], [hidden, heads*hd]);
// .self_attn.{q,k,v}_proj.bias (Qwen2); .post_attention_layernorm.weight [hidden];
// .mlp.{gate,up}_proj.weight [inter, hidden]; .mlp.down_proj.weight [hidden, inter];
// model.norm.weight [hidden]; lm_head.weight [vocab, hidden] (absent when tied).
//
// Move-only; read-only after Load, so safe for concurrent reads.
#ifndef KVTIER_ENGINE_WEIGHTS_H_
#define KVTIER_ENGINE_WEIGHTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "kvtier/block_key.h"

namespace kvtier::engine {

// What a tensor is in the architecture (the random-model writer initializes each kind its own
// way, docs/engine.md).
enum class TensorRole { kEmbed, kNorm, kLinear, kBias, kLmHead };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role;
};

// Every tensor the architecture of `config` needs, in the order of a Hugging Face checkpoint.
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

struct LayerWeights {
  const TensorView* input_norm = nullptr;
  const TensorView* q_proj = nullptr;
  const TensorView* k_proj = nullptr;
  const TensorView* v_proj = nullptr;
  const TensorView* q_bias = nullptr;  // nullptr unless config.attention_bias
  const TensorView* k_bias = nullptr;
  const TensorView* v_bias = nullptr;
  const TensorView* o_proj = nullptr;
  const TensorView* post_norm = nullptr;
  const TensorView* gate_proj = nullptr;
  const TensorView* up_proj = nullptr;
  const TensorView* down_proj = nullptr;
};

class ModelWeights {
 public:
  // Loads config.json and the checkpoint of `model_dir` and checks that every tensor the
  // architecture needs is present with the expected shape and a supported dtype.
  // InvalidArgument / NotFound naming the offending tensor otherwise.
  static absl::StatusOr<ModelWeights> Load(const std::string& model_dir);

  const ModelConfig& config() const { return config_; }
  const TensorView& embed() const { return *embed_; }
  const TensorView& final_norm() const { return *final_norm_; }
  // The embedding matrix when the embeddings are tied.
  const TensorView& lm_head() const { return *lm_head_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }

  // SHA-256 over "kvtier-model-v1", config.CanonicalArchitecture() and, for every tensor in
  // name order, its name, dtype, shape and the xxh3-128 of its bytes (docs/engine.md).
  // Reads every weight byte (multi-threaded) on each call; Engine::namespace_params() keeps
  // the result.
  BlockKey Fingerprint() const;

 private:
  ModelConfig config_;
  CheckpointReader reader_;
  const TensorView* embed_ = nullptr;
  const TensorView* final_norm_ = nullptr;
  const TensorView* lm_head_ = nullptr;
  std::vector<LayerWeights> layers_;
};

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_WEIGHTS_H_
