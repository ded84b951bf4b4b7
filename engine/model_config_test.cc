#include "engine/model_config.h"

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvtier::engine {
namespace {

using ::kvtier::testing::ScopedTempDir;
using ::testing::HasSubstr;

// meta-llama/Llama-3.1-8B config.json.
constexpr char kLlama31_8B[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

// Qwen/Qwen2-7B-Instruct config.json.
constexpr char kQwen2_7B[] = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 32768,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.41.2",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
})";

// mistralai/Mistral-7B-v0.1 config.json.
constexpr char kMistral7B[] = R"({
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

constexpr char kMinimal[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2,
  "num_attention_heads": 8, "vocab_size": 1000
})";

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.CanonicalArchitecture(), b.CanonicalArchitecture());
}

// kMinimal with `extra` fields spliced in (a JSON fragment starting with a comma).
std::string Minimal(const std::string& extra) {
  std::string s = kMinimal;
  s.insert(s.rfind('}'), extra);
  return s;
}

absl::StatusCode CodeOf(const std::string& json) {
  return ModelConfig::FromJson(json).status().code();
}
std::string MessageOf(const std::string& json) {
  return std::string(ModelConfig::FromJson(json).status().message());
}

TEST(ModelConfigTest, ParsesLlama31_8B) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(kLlama31_8B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->ArchitectureName(), "LlamaForCausalLM");
  EXPECT_EQ(c->head_dim, 128);  // hidden / heads
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->sliding_window, 0);
  // The preset is exactly this checkpoint's shape.
  ExpectSameConfig(*c, *PresetConfig("llama3-8b"));
  EXPECT_EQ(c->KvBytesPerToken(2), 128 * 1024);
}

TEST(ModelConfigTest, ParsesQwen2_7B) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(kQwen2_7B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kQwen2);
  EXPECT_TRUE(c->attention_bias);   // implied by the architecture
  EXPECT_EQ(c->sliding_window, 0);  // use_sliding_window is false
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rope_theta, 1e6f);
  EXPECT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{151645});
  ModelConfig preset = *PresetConfig("qwen2-7b");
  preset.eos_token_ids = {151645};
  ExpectSameConfig(*c, preset);
}

TEST(ModelConfigTest, ParsesMistral7B) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(kMistral7B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kMistral);
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_EQ(c->rope_theta, 10000.0f);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
  EXPECT_FALSE(c->attention_bias);
}

TEST(ModelConfigTest, Defaults) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(kMinimal);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 8);  // num_attention_heads
  EXPECT_EQ(c->head_dim, 64);     // hidden / heads
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_EQ(c->rope_theta, 10000.0f);
  EXPECT_EQ(c->rope_scaling.type, "");
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());

  // Explicit nulls read as absent.
  c = ModelConfig::FromJson(Minimal(R"(, "num_key_value_heads": null, "head_dim": null,
      "rope_scaling": null, "eos_token_id": null, "bos_token_id": null)"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 64);

  // An explicit head_dim wins over hidden / heads.
  c = ModelConfig::FromJson(Minimal(R"(, "head_dim": 128)"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 128);

  // model_type alone names the architecture.
  c = ModelConfig::FromJson(R"({"model_type": "qwen2", "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
      "vocab_size": 100})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kQwen2);
}

TEST(ModelConfigTest, RopeScalingVariants) {
  const std::string llama3 =
      R"("factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
         "original_max_position_embeddings": 8192)";
  // The legacy "type" key.
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(
      Minimal(absl::StrCat(R"(, "rope_scaling": {"type": "llama3", )", llama3, "}")));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_EQ(c->rope_scaling.factor, 8.0f);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);

  // "default" is no scaling.
  c = ModelConfig::FromJson(Minimal(R"(, "rope_scaling": {"rope_type": "default"})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "");

  // transformers v5's rope_parameters, theta inside.
  c = ModelConfig::FromJson(Minimal(absl::StrCat(
      R"(, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, )", llama3, "}")));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_EQ(c->rope_theta, 500000.0f);
  c = ModelConfig::FromJson(
      Minimal(R"(, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "");
  EXPECT_EQ(c->rope_theta, 1e6f);

  // Unsupported types are refused, never ignored.
  for (const char* type : {"linear", "dynamic", "yarn", "longrope"}) {
    const std::string json =
        Minimal(absl::StrCat(R"(, "rope_scaling": {"rope_type": ")", type, R"(", "factor": 2})"));
    EXPECT_EQ(CodeOf(json), absl::StatusCode::kUnimplemented) << type;
    EXPECT_THAT(MessageOf(json), HasSubstr(type));
  }
  // llama3 needs all its parameters.
  const std::string partial = Minimal(R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8,
      "low_freq_factor": 1, "high_freq_factor": 4})");
  EXPECT_EQ(CodeOf(partial), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf(partial), HasSubstr("original_max_position_embeddings"));
}

TEST(ModelConfigTest, SlidingWindow) {
  const std::string mistral =
      absl::StrReplaceAll(kMinimal, {{"LlamaForCausalLM", "MistralForCausalLM"}});
  auto window = [&](const std::string& base, const std::string& extra) {
    std::string s = base;
    s.insert(s.rfind('}'), extra);
    absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(s);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->sliding_window : -1;
  };
  EXPECT_EQ(window(mistral, R"(, "sliding_window": null)"), 0);
  EXPECT_EQ(window(mistral, R"(, "sliding_window": 1024)"), 1024);
  EXPECT_EQ(window(mistral, ""), 4096);  // MistralConfig's default

  const std::string qwen2 =
      absl::StrReplaceAll(kMinimal, {{"LlamaForCausalLM", "Qwen2ForCausalLM"}});
  EXPECT_EQ(window(qwen2, R"(, "sliding_window": 4096)"), 0);
  EXPECT_EQ(window(qwen2, R"(, "sliding_window": 4096, "use_sliding_window": false)"), 0);
  EXPECT_EQ(window(qwen2, R"(, "sliding_window": 512, "use_sliding_window": true,
                            "max_window_layers": 0)"),
            512);
  // Window on layers >= max_window_layers = 28: none of the 2 layers.
  EXPECT_EQ(window(qwen2, R"(, "sliding_window": 512, "use_sliding_window": true)"), 0);
  // Some layers only: not supported.
  std::string mixed = qwen2;
  mixed.insert(mixed.rfind('}'),
               R"(, "sliding_window": 512, "use_sliding_window": true, "max_window_layers": 1)");
  EXPECT_EQ(CodeOf(mixed), absl::StatusCode::kUnimplemented);
  mixed = qwen2;
  mixed.insert(mixed.rfind('}'), R"(, "sliding_window": 512, "use_sliding_window": true,
      "layer_types": ["full_attention", "sliding_attention"])");
  EXPECT_EQ(CodeOf(mixed), absl::StatusCode::kUnimplemented);

  // Llama has no sliding window.
  EXPECT_EQ(window(kMinimal, R"(, "sliding_window": 512)"), 0);
}

TEST(ModelConfigTest, EosIntOrList) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(Minimal(R"(, "eos_token_id": 7)"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{7});
  c = ModelConfig::FromJson(Minimal(R"(, "eos_token_id": [7, 9])"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{7, 9}));
  EXPECT_EQ(CodeOf(Minimal(R"(, "eos_token_id": [7, "x"])")), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(Minimal(R"(, "eos_token_id": 5000)")), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, Errors) {
  // Malformed JSON.
  EXPECT_EQ(CodeOf("{"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(""), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf("[1, 2]"), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf("{"), HasSubstr("malformed JSON"));

  // A missing required field, named.
  const std::string no_hidden = absl::StrReplaceAll(kMinimal, {{"\"hidden_size\": 512,", ""}});
  EXPECT_EQ(CodeOf(no_hidden), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf(no_hidden), HasSubstr("hidden_size"));
  const std::string no_arch =
      absl::StrReplaceAll(kMinimal, {{"\"architectures\": [\"LlamaForCausalLM\"],", ""}});
  EXPECT_THAT(MessageOf(no_arch), HasSubstr("architectures"));

  // Bad types, named.
  const std::string str_layers =
      absl::StrReplaceAll(kMinimal, {{"\"num_hidden_layers\": 2", "\"num_hidden_layers\": \"2\""}});
  EXPECT_EQ(CodeOf(str_layers), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf(str_layers), HasSubstr("num_hidden_layers"));
  const std::string float_vocab =
      absl::StrReplaceAll(kMinimal, {{"\"vocab_size\": 1000", "\"vocab_size\": 1000.5"}});
  EXPECT_THAT(MessageOf(float_vocab), HasSubstr("vocab_size"));
  EXPECT_THAT(MessageOf(Minimal(R"(, "rms_norm_eps": "small")")), HasSubstr("rms_norm_eps"));
  EXPECT_THAT(MessageOf(Minimal(R"(, "tie_word_embeddings": 1)")),
              HasSubstr("tie_word_embeddings"));
  EXPECT_THAT(MessageOf(Minimal(R"(, "rope_scaling": 8)")), HasSubstr("rope_scaling"));
  const std::string huge =
      absl::StrReplaceAll(kMinimal, {{"\"vocab_size\": 1000", "\"vocab_size\": 99999999999"}});
  EXPECT_THAT(MessageOf(huge), HasSubstr("vocab_size"));

  // Unsupported architectures and features: Unimplemented, named.
  const std::string gpt2 = absl::StrReplaceAll(kMinimal, {{"LlamaForCausalLM", "GPT2LMHeadModel"}});
  EXPECT_EQ(CodeOf(gpt2), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(MessageOf(gpt2), HasSubstr("GPT2LMHeadModel"));
  EXPECT_EQ(CodeOf(Minimal(R"(, "attention_bias": true)")), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(CodeOf(Minimal(R"(, "mlp_bias": true)")), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(CodeOf(Minimal(R"(, "hidden_act": "gelu")")), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(CodeOf(Minimal(R"(, "quantization_config": {"quant_method": "gptq"})")),
            absl::StatusCode::kUnimplemented);

  // Inconsistent or non-positive sizes.
  const std::string bad_gqa = Minimal(R"(, "num_key_value_heads": 3)");
  EXPECT_EQ(CodeOf(bad_gqa), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf(bad_gqa), HasSubstr("num_key_value_heads"));
  EXPECT_EQ(CodeOf(Minimal(R"(, "head_dim": 63)")), absl::StatusCode::kInvalidArgument);
  const std::string zero_layers =
      absl::StrReplaceAll(kMinimal, {{"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 0"}});
  EXPECT_THAT(MessageOf(zero_layers), HasSubstr("num_hidden_layers"));
  const std::string zero_heads =
      absl::StrReplaceAll(kMinimal, {{"\"num_attention_heads\": 8", "\"num_attention_heads\": 0"}});
  EXPECT_EQ(CodeOf(zero_heads), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(Minimal(R"(, "rms_norm_eps": 0)")), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(Minimal(R"(, "rope_theta": -1)")), absl::StatusCode::kInvalidArgument);
}

// Found by fuzz/model_config_fuzzer (docs/testing.md): sizes are checked before anything
// computes with them, and bounded so that every size derived from them fits in 64 bits.
TEST(ModelConfigTest, SizesAreCheckedBeforeUseAndBounded) {
  // A negative layer count reached the Qwen2 sliding-window arithmetic (num_hidden_layers -
  // max_window_layers overflowed int).
  const std::string negative_layers = R"({
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 512, "intermediate_size": 1024,
    "num_hidden_layers": -2147483648, "num_attention_heads": 8, "vocab_size": 1000,
    "use_sliding_window": true, "sliding_window": 4096, "max_window_layers": 1})";
  EXPECT_EQ(CodeOf(negative_layers), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf(negative_layers), HasSubstr("num_hidden_layers"));

  // Each size fits an int, but their products (ParamCount, KvBytesPerToken, a layer's weights)
  // overflowed int64.
  const std::string wide =
      absl::StrReplaceAll(kMinimal, {{"\"hidden_size\": 512", "\"hidden_size\": 1073741824"}});
  EXPECT_EQ(CodeOf(wide), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf(wide), HasSubstr("hidden_size"));
  const std::string wide_heads = Minimal(R"(, "head_dim": 1073741824)");
  EXPECT_EQ(CodeOf(wide_heads), absl::StatusCode::kInvalidArgument);
  const std::string deep = absl::StrReplaceAll(
      kMinimal, {{"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 2147483647"}});
  EXPECT_EQ(CodeOf(deep), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(MessageOf(deep), HasSubstr("num_hidden_layers"));
  const std::string big_vocab =
      absl::StrReplaceAll(kMinimal, {{"\"vocab_size\": 1000", "\"vocab_size\": 2147483647"}});
  EXPECT_EQ(CodeOf(big_vocab), absl::StatusCode::kInvalidArgument);

  // Non-finite floats (a JSON number too large for a float).
  EXPECT_EQ(CodeOf(Minimal(R"(, "rope_theta": 1e300)")), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(Minimal(R"(, "rms_norm_eps": 1e300)")), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, RoundTripsEveryPreset) {
  for (const std::string& name : PresetNames()) {
    SCOPED_TRACE(name);
    absl::StatusOr<ModelConfig> preset = PresetConfig(name);
    ASSERT_TRUE(preset.ok()) << preset.status();
    const std::string json = preset->ToJson();
    absl::StatusOr<ModelConfig> back = ModelConfig::FromJson(json);
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
    ExpectSameConfig(*preset, *back);
    EXPECT_EQ(back->ToJson(), json);
  }
  // Also with a sliding window and odd float values.
  ModelConfig c = *PresetConfig("tiny-qwen2");
  c.sliding_window = 1024;
  c.rms_norm_eps = 1.2345678e-7f;
  c.rope_theta = 12345.678f;
  c.bos_token_id = -1;
  c.eos_token_ids = {};
  absl::StatusOr<ModelConfig> back = ModelConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameConfig(c, *back);
  c = *PresetConfig("tiny-mistral");
  c.sliding_window = 2048;
  back = ModelConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameConfig(c, *back);
}

TEST(ModelConfigTest, ToJsonIsAHuggingFaceConfig) {
  const nlohmann::json llama = nlohmann::json::parse(PresetConfig("llama3-8b")->ToJson());
  EXPECT_EQ(llama["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(llama["model_type"], "llama");
  EXPECT_EQ(llama["hidden_act"], "silu");
  EXPECT_EQ(llama["attention_bias"], false);
  EXPECT_EQ(llama["mlp_bias"], false);
  EXPECT_EQ(llama["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(llama["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(llama["rms_norm_eps"].get<double>(), 1e-5);  // the decimal, not the float's double
  EXPECT_EQ(llama["rope_theta"].get<double>(), 500000.0);
  EXPECT_EQ(llama["eos_token_id"], nlohmann::json::array({128001, 128008, 128009}));
  EXPECT_EQ(llama["bos_token_id"], 128000);
  EXPECT_EQ(llama["torch_dtype"], "bfloat16");
  EXPECT_EQ(llama["head_dim"], 128);
  EXPECT_EQ(llama["num_key_value_heads"], 8);
  EXPECT_EQ(llama["tie_word_embeddings"], false);

  const nlohmann::json tiny = nlohmann::json::parse(PresetConfig("tiny")->ToJson());
  EXPECT_TRUE(tiny["rope_scaling"].is_null());
  EXPECT_EQ(tiny["eos_token_id"], nlohmann::json::array({4092, 4095}));

  const nlohmann::json qwen = nlohmann::json::parse(PresetConfig("tiny-qwen2")->ToJson());
  EXPECT_EQ(qwen["model_type"], "qwen2");
  EXPECT_EQ(qwen["use_sliding_window"], false);
  EXPECT_TRUE(qwen["sliding_window"].is_null());
  EXPECT_EQ(qwen["tie_word_embeddings"], true);
  EXPECT_FALSE(qwen.contains("attention_bias"));

  const nlohmann::json mistral = nlohmann::json::parse(PresetConfig("tiny-mistral")->ToJson());
  EXPECT_EQ(mistral["model_type"], "mistral");
  EXPECT_TRUE(mistral.contains("sliding_window"));
  EXPECT_TRUE(mistral["sliding_window"].is_null());
}

TEST(ModelConfigTest, CanonicalArchitecture) {
  const ModelConfig tiny = *PresetConfig("tiny");
  const std::string canon = tiny.CanonicalArchitecture();
  EXPECT_EQ(canon,
            "kvtier-arch-v1\n"
            "architecture=LlamaForCausalLM\n"
            "hidden_size=256\n"
            "intermediate_size=688\n"
            "num_hidden_layers=4\n"
            "num_attention_heads=4\n"
            "num_key_value_heads=2\n"
            "head_dim=64\n"
            "vocab_size=4096\n"
            "rms_norm_eps=3727c5ac\n"
            "rope_theta=461c4000\n"
            "rope_scaling=none\n"
            "tie_word_embeddings=0\n"
            "attention_bias=0\n"
            "sliding_window=0\n");

  // Fields that do not change the math do not change it.
  ModelConfig c = tiny;
  c.bos_token_id = 5;
  c.eos_token_ids = {6, 7};
  c.torch_dtype = "float32";
  c.max_position_embeddings = 100000;
  EXPECT_EQ(c.CanonicalArchitecture(), canon);

  // Every field that does, does.
  std::vector<ModelConfig> variants(12, tiny);
  variants[0].architecture = Architecture::kMistral;
  variants[1].hidden_size = 512;
  variants[2].intermediate_size = 689;
  variants[3].num_layers = 5;
  variants[4].num_kv_heads = 4;
  variants[5].head_dim = 32;
  variants[6].rms_norm_eps = 1e-6f;
  variants[7].rope_theta = 10001.0f;
  variants[8].rope_scaling = {"llama3", 8.0f, 1.0f, 4.0f, 1024};
  variants[9].tie_word_embeddings = true;
  variants[10].sliding_window = 128;
  variants[11].vocab_size = 4097;
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_NE(variants[i].CanonicalArchitecture(), canon) << i;
  }
  ModelConfig scaled = variants[8];
  scaled.rope_scaling.factor = 4.0f;
  EXPECT_NE(scaled.CanonicalArchitecture(), variants[8].CanonicalArchitecture());
}

TEST(ModelConfigTest, ParamCount) {
  // Published parameter counts.
  EXPECT_EQ(PresetConfig("llama3-8b")->ParamCount(), int64_t{8030261248});
  EXPECT_EQ(PresetConfig("qwen2-7b")->ParamCount(), int64_t{7615616512});
  // tiny by hand: embed + lm_head + 4 layers + final norm.
  const int64_t layer = 2 * 256 + 256 * 256 + 2 * 128 * 256 + 256 * 256 + 3 * 256 * 688;
  EXPECT_EQ(PresetConfig("tiny")->ParamCount(), 2 * 4096 * 256 + 4 * layer + 256);
  // tied, with q/k/v biases.
  EXPECT_EQ(PresetConfig("tiny-qwen2")->ParamCount(),
            4096 * 256 + 4 * (layer + 256 + 2 * 128) + 256);
}

TEST(ModelConfigTest, Presets) {
  for (const std::string& name : PresetNames()) EXPECT_TRUE(PresetConfig(name).ok()) << name;
  absl::StatusOr<ModelConfig> bad = PresetConfig("gpt5");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("tiny"));

  const ModelConfig tiny = *PresetConfig("tiny");
  EXPECT_EQ(tiny.num_kv_heads, 2);
  EXPECT_EQ(tiny.bos_token_id, 4091);
  const ModelConfig qwen = *PresetConfig("tiny-qwen2");
  EXPECT_TRUE(qwen.tie_word_embeddings);
  EXPECT_TRUE(qwen.attention_bias);
  const ModelConfig llama3 = *PresetConfig("tiny-llama3");
  EXPECT_EQ(llama3.rope_scaling.type, "llama3");
  EXPECT_EQ(llama3.rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_EQ(llama3.max_position_embeddings, 8192);
  EXPECT_EQ(PresetConfig("tiny-mistral")->architecture, Architecture::kMistral);
}

TEST(ModelConfigTest, LoadFromDirectory) {
  const ScopedTempDir temp("model_config_test");
  const std::string& dir = temp.path();
  EXPECT_EQ(ModelConfig::Load(dir).status().code(), absl::StatusCode::kNotFound);
  {
    std::ofstream out(dir + "/config.json");
    out << kMistral7B;
  }
  absl::StatusOr<ModelConfig> c = ModelConfig::Load(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kMistral);
  {
    std::ofstream out(dir + "/config.json");
    out << "{ not json";
  }
  c = ModelConfig::Load(dir);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(dir));
}

}  // namespace
}  // namespace kvtier::engine
