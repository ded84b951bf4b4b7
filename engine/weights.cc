#include "engine/weights.h"

#include <xxhash.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/parallel.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace kvtier::engine {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  const int64_t q = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t inter = c.intermediate_size;
  std::vector<TensorSpec> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, h}, TensorRole::kEmbed});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    out.push_back({p + "input_layernorm.weight", {h}, TensorRole::kNorm});
    out.push_back({p + "self_attn.q_proj.weight", {q, h}, TensorRole::kLinear});
    if (c.attention_bias) out.push_back({p + "self_attn.q_proj.bias", {q}, TensorRole::kBias});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}, TensorRole::kLinear});
    if (c.attention_bias) out.push_back({p + "self_attn.k_proj.bias", {kv}, TensorRole::kBias});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}, TensorRole::kLinear});
    if (c.attention_bias) out.push_back({p + "self_attn.v_proj.bias", {kv}, TensorRole::kBias});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}, TensorRole::kLinear});
    out.push_back({p + "post_attention_layernorm.weight", {h}, TensorRole::kNorm});
    out.push_back({p + "mlp.gate_proj.weight", {inter, h}, TensorRole::kLinear});
    out.push_back({p + "mlp.up_proj.weight", {inter, h}, TensorRole::kLinear});
    out.push_back({p + "mlp.down_proj.weight", {h, inter}, TensorRole::kLinear});
  }
  out.push_back({"model.norm.weight", {h}, TensorRole::kNorm});
  if (!c.tie_word_embeddings)
    out.push_back({"lm_head.weight", {c.vocab_size, h}, TensorRole::kLmHead});
  return out;
}

absl::StatusOr<ModelWeights> ModelWeights::Load(const std::string& model_dir) {
  ModelWeights w;
  KVTIER_ASSIGN_OR_RETURN(w.config_, ModelConfig::Load(model_dir));
  KVTIER_ASSIGN_OR_RETURN(w.reader_, CheckpointReader::Open(model_dir));
  const ModelConfig& c = w.config_;

  std::set<std::string, std::less<>> expected;
  std::map<std::string, const TensorView*, std::less<>> views;
  for (const TensorSpec& spec : ExpectedTensors(c)) {
    const TensorView* view = w.reader_.Find(spec.name);
    if (view == nullptr) {
      std::string why;
      if (spec.name == "lm_head.weight") why = " (tie_word_embeddings is false)";
      if (spec.role == TensorRole::kBias) why = " (the architecture has q/k/v biases)";
      return absl::NotFoundError(absl::StrCat(model_dir, ": tensor \"", spec.name,
                                              "\" is missing from the checkpoint", why));
    }
    if (view->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          model_dir, ": tensor \"", spec.name, "\" has shape ", ShapeString(view->shape),
          ", expected ", ShapeString(spec.shape), " for this config.json"));
    }
    expected.insert(spec.name);
    views[spec.name] = view;
  }
  // A tensor the architecture does not use (a bias the config does not declare, say) would
  // silently change nothing here but something in the original model: refuse it.
  for (const std::string& name : w.reader_.Names()) {
    if (expected.count(name) > 0) continue;
    if (name == "lm_head.weight" && c.tie_word_embeddings) continue;  // ignored when tied
    if (absl::EndsWith(name, "rotary_emb.inv_freq")) continue;        // old buffers
    return absl::InvalidArgumentError(absl::StrCat(model_dir, ": tensor \"", name,
                                                   "\" is not part of a ", c.ArchitectureName(),
                                                   " with this config.json"));
  }

  w.embed_ = views.at("model.embed_tokens.weight");
  w.final_norm_ = views.at("model.norm.weight");
  w.lm_head_ = c.tie_word_embeddings ? w.embed_ : views.at("lm_head.weight");
  w.layers_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    auto get = [&](absl::string_view suffix) -> const TensorView* {
      auto it = views.find(absl::StrCat(p, suffix));
      return it == views.end() ? nullptr : it->second;
    };
    LayerWeights& l = w.layers_[i];
    l.input_norm = get("input_layernorm.weight");
    l.q_proj = get("self_attn.q_proj.weight");
    l.k_proj = get("self_attn.k_proj.weight");
    l.v_proj = get("self_attn.v_proj.weight");
    l.q_bias = get("self_attn.q_proj.bias");
    l.k_bias = get("self_attn.k_proj.bias");
    l.v_bias = get("self_attn.v_proj.bias");
    l.o_proj = get("self_attn.o_proj.weight");
    l.post_norm = get("post_attention_layernorm.weight");
    l.gate_proj = get("mlp.gate_proj.weight");
    l.up_proj = get("mlp.up_proj.weight");
    l.down_proj = get("mlp.down_proj.weight");
  }
  return w;
}

BlockKey ModelWeights::Fingerprint() const {
  // The tensors the model computes with (not other checkpoint entries), in name order.
  std::vector<const TensorView*> tensors = {embed_, final_norm_};
  if (!config_.tie_word_embeddings) tensors.push_back(lm_head_);
  for (const LayerWeights& l : layers_) {
    for (const TensorView* t :
         {l.input_norm, l.q_proj, l.k_proj, l.v_proj, l.q_bias, l.k_bias, l.v_bias, l.o_proj,
          l.post_norm, l.gate_proj, l.up_proj, l.down_proj}) {
      if (t != nullptr) tensors.push_back(t);
    }
  }
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorView* a, const TensorView* b) { return a->name < b->name; });

  // XXH3-128 of every tensor, largest first across threads.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors[a]->nbytes > tensors[b]->nbytes; });
  std::vector<XXH128_canonical_t> digests(tensors.size());
  ParallelFor(order.size(), static_cast<int>(std::thread::hardware_concurrency()), [&](size_t i) {
    const TensorView* t = tensors[order[i]];
    XXH128_canonicalFromHash(&digests[order[i]], XXH3_128bits(t->data, t->nbytes));
  });

  Sha256 h;
  constexpr absl::string_view kTag = "kvtier-model-v1";
  h.Update(kTag.data(), kTag.size());
  h.UpdateString(config_.CanonicalArchitecture());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView* t = tensors[i];
    h.UpdateString(t->name);
    h.UpdateString(DTypeName(t->dtype));
    h.UpdateU32(static_cast<uint32_t>(t->shape.size()));
    for (int64_t d : t->shape) h.UpdateI64(d);
    h.Update(digests[i].digest, sizeof(digests[i].digest));
  }
  return h.Final();
}

}  // namespace kvtier::engine
