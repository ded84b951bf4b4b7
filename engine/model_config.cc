#include "engine/model_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvtier::engine {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

constexpr absl::string_view kWhere = "config.json";

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(kWhere, ": \"", field, "\" ", what));
}

// Typed, exception-free accessors over one JSON object. Absent and null read as nullopt.
class Fields {
 public:
  explicit Fields(const Json& obj) : obj_(obj) {}

  const Json* Find(absl::string_view key) const {
    auto it = obj_.find(std::string(key));
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool Has(absl::string_view key) const { return Find(key) != nullptr; }
  // True for a key that is present, even with a null value.
  bool Present(absl::string_view key) const { return obj_.contains(std::string(key)); }

  absl::StatusOr<std::optional<int>> Int(absl::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::optional<int>();
    return ToInt(*v, key);
  }
  absl::StatusOr<int> RequiredInt(absl::string_view key) const {
    KVTIER_ASSIGN_OR_RETURN(std::optional<int> v, Int(key));
    if (!v.has_value()) return FieldError(key, "is missing");
    return *v;
  }
  absl::StatusOr<std::optional<double>> Number(absl::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::optional<double>();
    if (!v->is_number())
      return FieldError(key, absl::StrCat("must be a number, got ", v->type_name()));
    return v->get<double>();
  }
  absl::StatusOr<std::optional<bool>> Bool(absl::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::optional<bool>();
    if (!v->is_boolean()) {
      return FieldError(key, absl::StrCat("must be a boolean, got ", v->type_name()));
    }
    return v->get<bool>();
  }
  absl::StatusOr<std::optional<std::string>> String(absl::string_view key) const {
    const Json* v = Find(key);
    if (v == nullptr) return std::optional<std::string>();
    if (!v->is_string()) {
      return FieldError(key, absl::StrCat("must be a string, got ", v->type_name()));
    }
    return v->get<std::string>();
  }

  static absl::StatusOr<int> ToInt(const Json& v, absl::string_view key) {
    if (!v.is_number_integer()) {
      return FieldError(key, absl::StrCat("must be an integer, got ", v.type_name()));
    }
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
        return FieldError(key, absl::StrCat("is out of range: ", u));
      }
      return static_cast<int>(u);
    }
    const int64_t i = v.get<int64_t>();
    if (i < std::numeric_limits<int>::min() || i > std::numeric_limits<int>::max()) {
      return FieldError(key, absl::StrCat("is out of range: ", i));
    }
    return static_cast<int>(i);
  }

 private:
  const Json& obj_;
};

struct ArchInfo {
  Architecture arch;
  const char* class_name;
  const char* model_type;
};
constexpr ArchInfo kArchs[] = {
    {Architecture::kLlama, "LlamaForCausalLM", "llama"},
    {Architecture::kMistral, "MistralForCausalLM", "mistral"},
    {Architecture::kQwen2, "Qwen2ForCausalLM", "qwen2"},
};

const ArchInfo& Info(Architecture a) {
  for (const ArchInfo& info : kArchs) {
    if (info.arch == a) return info;
  }
  return kArchs[0];
}

absl::StatusOr<Architecture> ParseArchitecture(const Fields& f) {
  const Json* archs = f.Find("architectures");
  if (archs == nullptr) {
    // Some hand-written configs carry only model_type.
    KVTIER_ASSIGN_OR_RETURN(std::optional<std::string> model_type, f.String("model_type"));
    if (!model_type.has_value()) return FieldError("architectures", "is missing");
    for (const ArchInfo& info : kArchs) {
      if (*model_type == info.model_type) return info.arch;
    }
    return absl::UnimplementedError(
        absl::StrCat(kWhere, ": model_type \"", *model_type, "\" is not supported"));
  }
  if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    return FieldError("architectures", "must be a non-empty list of strings");
  }
  const std::string name = (*archs)[0].get<std::string>();
  for (const ArchInfo& info : kArchs) {
    if (name == info.class_name) return info.arch;
  }
  return absl::UnimplementedError(
      absl::StrCat(kWhere, ": architecture \"", name,
                   "\" is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"));
}

// rope_scaling (legacy) or rope_parameters (transformers v5): the rope type and its parameters.
absl::Status ParseRope(const Fields& f, ModelConfig& c) {
  const Json* scaling = f.Find("rope_scaling");
  const Json* params = f.Find("rope_parameters");
  // transformers v5: `rope_scaling or rope_parameters`, theta from the dict or the top level.
  const Json* spec = scaling != nullptr ? scaling : params;
  const char* spec_name = scaling != nullptr ? "rope_scaling" : "rope_parameters";
  if (spec != nullptr && !spec->is_object()) {
    return FieldError(spec_name,
                      absl::StrCat("must be an object or null, got ", spec->type_name()));
  }

  std::optional<double> theta;
  if (spec != nullptr) {
    Fields s(*spec);
    KVTIER_ASSIGN_OR_RETURN(theta, s.Number("rope_theta"));
  }
  if (!theta.has_value()) {
    KVTIER_ASSIGN_OR_RETURN(theta, f.Number("rope_theta"));
  }
  c.rope_theta = static_cast<float>(theta.value_or(10000.0));
  c.rope_scaling = RopeScaling();
  if (spec == nullptr) return absl::OkStatus();

  Fields s(*spec);
  KVTIER_ASSIGN_OR_RETURN(std::optional<std::string> type, s.String("rope_type"));
  if (!type.has_value()) {
    KVTIER_ASSIGN_OR_RETURN(type, s.String("type"));
  }
  if (!type.has_value()) {
    // transformers' standardize_rope_params treats a dict without a type as "default".
    type = "default";
  }
  if (*type == "default") return absl::OkStatus();
  if (*type != "llama3") {
    return absl::UnimplementedError(absl::StrCat(kWhere, ": ", spec_name, " type \"", *type,
                                                 "\" is not supported (only llama3)"));
  }
  const std::string prefix = absl::StrCat(spec_name, ".");
  auto required = [&](absl::string_view key) -> absl::StatusOr<double> {
    KVTIER_ASSIGN_OR_RETURN(std::optional<double> v, s.Number(key));
    if (!v.has_value()) return FieldError(absl::StrCat(prefix, key), "is missing");
    return *v;
  };
  RopeScaling& rs = c.rope_scaling;
  rs.type = "llama3";
  KVTIER_ASSIGN_OR_RETURN(double factor, required("factor"));
  KVTIER_ASSIGN_OR_RETURN(double low, required("low_freq_factor"));
  KVTIER_ASSIGN_OR_RETURN(double high, required("high_freq_factor"));
  KVTIER_ASSIGN_OR_RETURN(std::optional<int> orig, s.Int("original_max_position_embeddings"));
  if (!orig.has_value()) {
    return FieldError(absl::StrCat(prefix, "original_max_position_embeddings"), "is missing");
  }
  rs.factor = static_cast<float>(factor);
  rs.low_freq_factor = static_cast<float>(low);
  rs.high_freq_factor = static_cast<float>(high);
  rs.original_max_position_embeddings = *orig;
  if (!(rs.factor > 0) || !std::isfinite(rs.factor) || !(rs.low_freq_factor > 0) ||
      !(rs.high_freq_factor > rs.low_freq_factor) || !std::isfinite(rs.high_freq_factor) ||
      rs.original_max_position_embeddings <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhere, ": ", spec_name,
                     " llama3 needs finite factor > 0, 0 < low_freq_factor < high_freq_factor "
                     "(finite) and original_max_position_embeddings > 0"));
  }
  return absl::OkStatus();
}

absl::Status ParseSlidingWindow(const Fields& f, ModelConfig& c) {
  c.sliding_window = 0;
  if (c.architecture == Architecture::kMistral) {
    // MistralConfig's default when the key is absent is 4096; null means none.
    KVTIER_ASSIGN_OR_RETURN(std::optional<int> sw, f.Int("sliding_window"));
    c.sliding_window = f.Present("sliding_window") ? sw.value_or(0) : 4096;
    return absl::OkStatus();
  }
  if (c.architecture != Architecture::kQwen2) return absl::OkStatus();

  // Qwen2: the window applies only when use_sliding_window, and then (transformers'
  // layer_types) to layers >= max_window_layers. Mixed layers are not supported.
  KVTIER_ASSIGN_OR_RETURN(std::optional<bool> use, f.Bool("use_sliding_window"));
  KVTIER_ASSIGN_OR_RETURN(std::optional<int> sw, f.Int("sliding_window"));
  const int window = use.value_or(false) ? sw.value_or(0) : 0;
  int sliding_layers = 0;
  if (const Json* types = f.Find("layer_types"); types != nullptr) {
    if (!types->is_array() || static_cast<int>(types->size()) != c.num_layers) {
      return FieldError("layer_types", "must be a list with one entry per layer");
    }
    for (const Json& t : *types) {
      if (t == "sliding_attention") {
        ++sliding_layers;
      } else if (t != "full_attention") {
        return FieldError("layer_types",
                          "entries must be \"full_attention\" or \"sliding_attention\"");
      }
    }
  } else if (window > 0) {
    KVTIER_ASSIGN_OR_RETURN(std::optional<int> mwl, f.Int("max_window_layers"));
    const int first = std::max(0, mwl.value_or(28));
    sliding_layers = std::max(0, c.num_layers - first);
  }
  if (sliding_layers == 0) return absl::OkStatus();
  if (window <= 0) {
    return FieldError("layer_types", "names sliding_attention layers but there is no window");
  }
  if (sliding_layers != c.num_layers) {
    return absl::UnimplementedError(
        absl::StrCat(kWhere, ": sliding-window attention on only some layers (", sliding_layers,
                     " of ", c.num_layers, ") is not supported"));
  }
  c.sliding_window = window;
  return absl::OkStatus();
}

// Upper bounds of the sizes: far above any released model (Llama-3.1-405B: hidden 16384,
// intermediate 53248, 126 layers, 128 x 128 query width, vocabulary 128256), low enough that
// every size derived from them (ParamCount, KvBytesPerToken, a layer's weights) fits in int64
// and every width in int.
constexpr int64_t kMaxWidth = int64_t{1} << 20;   // hidden, intermediate, heads x head_dim
constexpr int64_t kMaxLayers = int64_t{1} << 12;  // num_hidden_layers
constexpr int64_t kMaxVocab = int64_t{1} << 24;   // vocab_size

// The sizes, checked before anything computes with them: positive and within the bounds above.
absl::Status ValidateSizes(const ModelConfig& c) {
  const std::pair<const char*, int> positive[] = {
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings},
  };
  for (const auto& [name, value] : positive) {
    if (value <= 0) return FieldError(name, absl::StrCat("must be positive, got ", value));
  }
  const std::tuple<const char*, int64_t, int64_t> bounded[] = {
      {"hidden_size", c.hidden_size, kMaxWidth},
      {"intermediate_size", c.intermediate_size, kMaxWidth},
      {"num_hidden_layers", c.num_layers, kMaxLayers},
      {"vocab_size", c.vocab_size, kMaxVocab},
      {"num_attention_heads x head_dim", int64_t{c.num_heads} * c.head_dim, kMaxWidth},
      {"num_key_value_heads x head_dim", int64_t{c.num_kv_heads} * c.head_dim, kMaxWidth},
  };
  for (const auto& [name, value, max] : bounded) {
    if (value > max) {
      return FieldError(name, absl::StrCat("is ", value, "; at most ", max, " is supported"));
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const ModelConfig& c) {
  KVTIER_RETURN_IF_ERROR(ValidateSizes(c));
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kWhere, ": num_attention_heads (", c.num_heads,
                                                   ") is not a multiple of num_key_value_heads (",
                                                   c.num_kv_heads, ")"));
  }
  if (c.head_dim % 2 != 0)
    return FieldError("head_dim", absl::StrCat("must be even, got ", c.head_dim));
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    return FieldError("rms_norm_eps", "must be positive and finite");
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    return FieldError("rope_theta", "must be positive and finite");
  }
  if (c.sliding_window < 0) return FieldError("sliding_window", "must not be negative");
  if (c.bos_token_id >= c.vocab_size) {
    return FieldError("bos_token_id", absl::StrCat("is outside the vocabulary: ", c.bos_token_id));
  }
  for (int eos : c.eos_token_ids) {
    if (eos < 0 || eos >= c.vocab_size) {
      return FieldError("eos_token_id", absl::StrCat("is outside the vocabulary: ", eos));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> Parse(const Json& root) {
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(kWhere, ": not an object"));
  Fields f(root);
  ModelConfig c;
  KVTIER_ASSIGN_OR_RETURN(c.architecture, ParseArchitecture(f));

  if (f.Has("quantization_config")) {
    return absl::UnimplementedError(absl::StrCat(kWhere, ": quantized models are not supported"));
  }
  KVTIER_ASSIGN_OR_RETURN(std::optional<std::string> act, f.String("hidden_act"));
  if (act.has_value() && *act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(kWhere, ": hidden_act \"", *act, "\" is not supported (only silu)"));
  }

  KVTIER_ASSIGN_OR_RETURN(c.hidden_size, f.RequiredInt("hidden_size"));
  KVTIER_ASSIGN_OR_RETURN(c.intermediate_size, f.RequiredInt("intermediate_size"));
  KVTIER_ASSIGN_OR_RETURN(c.num_layers, f.RequiredInt("num_hidden_layers"));
  KVTIER_ASSIGN_OR_RETURN(c.num_heads, f.RequiredInt("num_attention_heads"));
  KVTIER_ASSIGN_OR_RETURN(c.vocab_size, f.RequiredInt("vocab_size"));
  if (c.num_heads <= 0) return FieldError("num_attention_heads", "must be positive");
  KVTIER_ASSIGN_OR_RETURN(std::optional<int> kv, f.Int("num_key_value_heads"));
  c.num_kv_heads = kv.value_or(c.num_heads);
  KVTIER_ASSIGN_OR_RETURN(std::optional<int> hd, f.Int("head_dim"));
  c.head_dim = hd.value_or(c.hidden_size / c.num_heads);

  // Defaults below are transformers' (LlamaConfig / MistralConfig / Qwen2Config).
  int default_max_pos = 2048;
  if (c.architecture == Architecture::kMistral) default_max_pos = 4096 * 32;
  if (c.architecture == Architecture::kQwen2) default_max_pos = 32768;
  KVTIER_ASSIGN_OR_RETURN(std::optional<int> max_pos, f.Int("max_position_embeddings"));
  c.max_position_embeddings = max_pos.value_or(default_max_pos);
  KVTIER_RETURN_IF_ERROR(ValidateSizes(c));
  KVTIER_ASSIGN_OR_RETURN(std::optional<double> eps, f.Number("rms_norm_eps"));
  c.rms_norm_eps = static_cast<float>(eps.value_or(1e-6));
  KVTIER_RETURN_IF_ERROR(ParseRope(f, c));
  KVTIER_ASSIGN_OR_RETURN(std::optional<bool> tie, f.Bool("tie_word_embeddings"));
  c.tie_word_embeddings = tie.value_or(false);

  KVTIER_ASSIGN_OR_RETURN(std::optional<bool> attention_bias, f.Bool("attention_bias"));
  KVTIER_ASSIGN_OR_RETURN(std::optional<bool> mlp_bias, f.Bool("mlp_bias"));
  if (c.architecture == Architecture::kQwen2) {
    c.attention_bias = true;  // Qwen2Attention always has q/k/v biases.
  } else {
    if (attention_bias.value_or(false)) {
      return absl::UnimplementedError(absl::StrCat(kWhere,
                                                   ": attention_bias = true is not supported for ",
                                                   Info(c.architecture).class_name));
    }
    c.attention_bias = false;
  }
  if (mlp_bias.value_or(false)) {
    return absl::UnimplementedError(absl::StrCat(kWhere, ": mlp_bias = true is not supported"));
  }
  KVTIER_RETURN_IF_ERROR(ParseSlidingWindow(f, c));

  KVTIER_ASSIGN_OR_RETURN(std::optional<int> bos, f.Int("bos_token_id"));
  c.bos_token_id = bos.value_or(-1);
  c.eos_token_ids.clear();
  if (const Json* eos = f.Find("eos_token_id"); eos != nullptr) {
    if (eos->is_array()) {
      for (const Json& e : *eos) {
        KVTIER_ASSIGN_OR_RETURN(int id, Fields::ToInt(e, "eos_token_id"));
        c.eos_token_ids.push_back(id);
      }
    } else {
      KVTIER_ASSIGN_OR_RETURN(int id, Fields::ToInt(*eos, "eos_token_id"));
      c.eos_token_ids.push_back(id);
    }
  }
  // transformers v5 writes "dtype"; older versions "torch_dtype".
  KVTIER_ASSIGN_OR_RETURN(std::optional<std::string> dtype, f.String("dtype"));
  if (!dtype.has_value()) {
    KVTIER_ASSIGN_OR_RETURN(dtype, f.String("torch_dtype"));
  }
  c.torch_dtype = dtype.value_or("bfloat16");

  KVTIER_RETURN_IF_ERROR(Validate(c));
  return c;
}

// The double whose shortest decimal form is the float's shortest decimal form, so config.json
// shows 1e-05 rather than 9.999999747378752e-06 and reads back as the same float.
double JsonFloat(float v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf) - 1, v);
  if (ec != std::errc()) return v;
  *end = '\0';
  return std::strtod(buf, nullptr);
}

uint32_t FloatBits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(absl::string_view json) {
  try {
    const Json root = Json::parse(json.begin(), json.end());
    return Parse(root);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(kWhere, ": malformed JSON: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> ModelConfig::Load(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  absl::StatusOr<ModelConfig> config = FromJson(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(model_dir, "/", config.status().message()));
  }
  return config;
}

std::string ModelConfig::ToJson() const {
  const ArchInfo& info = Info(architecture);
  OrderedJson j;
  j["architectures"] = {info.class_name};
  j["model_type"] = info.model_type;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = JsonFloat(rms_norm_eps);
  j["rope_theta"] = JsonFloat(rope_theta);
  if (rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    OrderedJson rs;
    rs["rope_type"] = rope_scaling.type;
    rs["factor"] = JsonFloat(rope_scaling.factor);
    rs["low_freq_factor"] = JsonFloat(rope_scaling.low_freq_factor);
    rs["high_freq_factor"] = JsonFloat(rope_scaling.high_freq_factor);
    rs["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    j["rope_scaling"] = rs;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = "silu";
  if (architecture == Architecture::kLlama) {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  if (architecture == Architecture::kMistral) {
    j["sliding_window"] = sliding_window > 0 ? OrderedJson(sliding_window) : OrderedJson(nullptr);
  } else if (architecture == Architecture::kQwen2) {
    j["use_sliding_window"] = sliding_window > 0;
    j["sliding_window"] = sliding_window > 0 ? OrderedJson(sliding_window) : OrderedJson(nullptr);
    j["max_window_layers"] = sliding_window > 0 ? 0 : num_layers;
  }
  j["bos_token_id"] = bos_token_id >= 0 ? OrderedJson(bos_token_id) : OrderedJson(nullptr);
  if (eos_token_ids.empty()) {
    j["eos_token_id"] = nullptr;
  } else if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else {
    j["eos_token_id"] = eos_token_ids;
  }
  j["torch_dtype"] = torch_dtype;
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

std::string ModelConfig::ArchitectureName() const { return Info(architecture).class_name; }

std::string ModelConfig::CanonicalArchitecture() const {
  // One "key=value\n" line per field, in this order; floats as the 8 lower-case hex digits of
  // their IEEE-754 binary32 bit pattern. Specified in docs/engine.md ("Model fingerprint").
  std::string out = "kvtier-arch-v1\n";
  auto line = [&out](absl::string_view key, const auto& value) {
    absl::StrAppend(&out, key, "=", value, "\n");
  };
  auto fline = [&out](absl::string_view key, float value) {
    absl::StrAppend(&out, key, "=", absl::StrFormat("%08x", FloatBits(value)), "\n");
  };
  line("architecture", ArchitectureName());
  line("hidden_size", hidden_size);
  line("intermediate_size", intermediate_size);
  line("num_hidden_layers", num_layers);
  line("num_attention_heads", num_heads);
  line("num_key_value_heads", num_kv_heads);
  line("head_dim", head_dim);
  line("vocab_size", vocab_size);
  fline("rms_norm_eps", rms_norm_eps);
  fline("rope_theta", rope_theta);
  if (rope_scaling.type.empty()) {
    line("rope_scaling", "none");
  } else {
    line("rope_scaling", rope_scaling.type);
    fline("rope_scaling.factor", rope_scaling.factor);
    fline("rope_scaling.low_freq_factor", rope_scaling.low_freq_factor);
    fline("rope_scaling.high_freq_factor", rope_scaling.high_freq_factor);
    line("rope_scaling.original_max_position_embeddings",
         rope_scaling.original_max_position_embeddings);
  }
  line("tie_word_embeddings", tie_word_embeddings ? 1 : 0);
  line("attention_bias", attention_bias ? 1 : 0);
  line("sliding_window", sliding_window);
  return out;
}

int64_t ModelConfig::ParamCount() const {
  const int64_t h = hidden_size;
  const int64_t q = int64_t{num_heads} * head_dim;
  const int64_t kv = int64_t{num_kv_heads} * head_dim;
  int64_t layer = 2 * h;                // input and post-attention norms
  layer += q * h + 2 * kv * h + h * q;  // q, k, v, o projections
  if (attention_bias) layer += q + 2 * kv;
  layer += 3 * h * intermediate_size;  // gate, up, down
  int64_t total = int64_t{vocab_size} * h + layer * num_layers + h;
  if (!tie_word_embeddings) total += int64_t{vocab_size} * h;
  return total;
}

absl::StatusOr<ModelConfig> PresetConfig(absl::string_view name) {
  ModelConfig tiny;
  tiny.architecture = Architecture::kLlama;
  tiny.hidden_size = 256;
  tiny.intermediate_size = 688;
  tiny.num_layers = 4;
  tiny.num_heads = 4;
  tiny.num_kv_heads = 2;
  tiny.head_dim = 64;
  tiny.vocab_size = 4096;
  tiny.max_position_embeddings = 4096;
  tiny.rms_norm_eps = 1e-5f;
  tiny.rope_theta = 10000.0f;
  tiny.tie_word_embeddings = false;
  // The special tokens kvtier-model init writes (engine/testing/tokenizer_writer.h): the last ids.
  tiny.bos_token_id = 4091;           // <|begin_of_text|>
  tiny.eos_token_ids = {4092, 4095};  // <|end_of_text|>, <|eot_id|>
  tiny.torch_dtype = "bfloat16";
  if (name == "tiny") return tiny;
  if (name == "tiny-qwen2") {
    ModelConfig c = tiny;
    c.architecture = Architecture::kQwen2;
    c.attention_bias = true;
    c.tie_word_embeddings = true;
    c.rope_theta = 1e6f;
    c.rms_norm_eps = 1e-6f;
    c.bos_token_id = 4093;           // <|endoftext|> (ChatML)
    c.eos_token_ids = {4095, 4093};  // <|im_end|>, <|endoftext|>
    return c;
  }
  if (name == "tiny-mistral") {
    ModelConfig c = tiny;
    c.architecture = Architecture::kMistral;
    c.rope_theta = 1e6f;
    c.sliding_window = 0;
    return c;
  }
  if (name == "tiny-llama3") {
    ModelConfig c = tiny;
    c.rope_theta = 500000.0f;
    c.max_position_embeddings = 8192;
    c.rope_scaling = {"llama3", 8.0f, 1.0f, 4.0f, 1024};
    return c;
  }
  if (name == "llama3-8b") {
    ModelConfig c;
    c.architecture = Architecture::kLlama;
    c.hidden_size = 4096;
    c.intermediate_size = 14336;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.vocab_size = 128256;
    c.max_position_embeddings = 131072;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 500000.0f;
    c.rope_scaling = {"llama3", 8.0f, 1.0f, 4.0f, 8192};
    c.tie_word_embeddings = false;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128008, 128009};
    c.torch_dtype = "bfloat16";
    return c;
  }
  if (name == "qwen2-7b") {
    ModelConfig c;
    c.architecture = Architecture::kQwen2;
    c.hidden_size = 3584;
    c.intermediate_size = 18944;
    c.num_layers = 28;
    c.num_heads = 28;
    c.num_kv_heads = 4;
    c.head_dim = 128;
    c.vocab_size = 152064;
    c.max_position_embeddings = 32768;
    c.rms_norm_eps = 1e-6f;
    c.rope_theta = 1e6f;
    c.tie_word_embeddings = false;
    c.attention_bias = true;
    c.bos_token_id = 151643;
    c.eos_token_ids = {151643, 151645};
    c.torch_dtype = "bfloat16";
    return c;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown model preset \"", name, "\" (known: ", absl::StrJoin(PresetNames(), ", "), ")"));
}

std::vector<std::string> PresetNames() {
  return {"tiny", "tiny-qwen2", "tiny-mistral", "tiny-llama3", "llama3-8b", "qwen2-7b"};
}

}  // namespace kvtier::engine
