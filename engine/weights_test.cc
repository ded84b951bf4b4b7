#include "engine/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_replace.h"
#include "engine/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvtier::engine {
namespace {

using ::kvtier::testing::ReadFile;
using ::kvtier::testing::TempDirTest;
using ::kvtier::testing::WriteFile;
using ::testing::HasSubstr;

class WeightsTest : public TempDirTest {
 protected:
  static ModelConfig Preset(const std::string& name) { return *PresetConfig(name); }

  static BlockKey FingerprintOf(const std::string& model_dir) {
    absl::StatusOr<ModelWeights> w = ModelWeights::Load(model_dir);
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? w->Fingerprint() : BlockKey{};
  }

  // Rewrites `model_dir`/model.safetensors through `edit`, which receives every tensor (name,
  // dtype, shape, bytes) and adds what it wants to the writer.
  using Edit = std::function<void(SafetensorsWriter&, const TensorView&)>;
  static void Rewrite(const std::string& model_dir, const Edit& edit) {
    absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(model_dir);
    ASSERT_TRUE(reader.ok()) << reader.status();
    SafetensorsWriter w;
    for (const std::string& name : reader->Names()) edit(w, **reader->Get(name));
    ASSERT_TRUE(w.Write(model_dir + "/model.safetensors").ok());
  }
  static void Copy(SafetensorsWriter& w, const TensorView& t) {
    ASSERT_TRUE(w.Add(t.name, t.dtype, t.shape, t.data, t.nbytes).ok());
  }
};

std::vector<float> ToFloats(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.NumElements()));
  ConvertToFloat(t.dtype, t.data, out.size(), out.data());
  return out;
}

void ExpectStats(const TensorView& t, double mean, double std, double tol) {
  const std::vector<float> v = ToFloats(t);
  double sum = 0, sq = 0, lo = 1e30, hi = -1e30;
  for (float x : v) {
    sum += x;
    lo = std::min<double>(lo, x);
    hi = std::max<double>(hi, x);
  }
  const double m = sum / v.size();
  for (float x : v) sq += (x - m) * (x - m);
  const double s = std::sqrt(sq / v.size());
  EXPECT_NEAR(m, mean, tol * std + 1e-3) << t.name;
  EXPECT_NEAR(s, std, tol * std) << t.name;
  // Uniform: bounded by sqrt(3) * std around the mean.
  EXPECT_LE(hi, mean + std::sqrt(3.0) * std * 1.01 + 1e-6) << t.name;
  EXPECT_GE(lo, mean - std::sqrt(3.0) * std * 1.01 - 1e-6) << t.name;
}

TEST_F(WeightsTest, RandomTinyModelLoads) {
  const ModelConfig tiny = Preset("tiny");
  ASSERT_TRUE(WriteRandomModel(tiny, 1, DType::kBF16, Path("m")).ok());
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors"}) {
    EXPECT_TRUE(std::filesystem::exists(Path("m") + "/" + f)) << f;
  }
  EXPECT_FALSE(std::filesystem::exists(Path("m") + "/model.safetensors.index.json"));

  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->config().CanonicalArchitecture(), tiny.CanonicalArchitecture());
  EXPECT_EQ(w->config().torch_dtype, "bfloat16");
  EXPECT_EQ(w->config().bos_token_id, 4091);
  EXPECT_EQ(w->config().eos_token_ids, (std::vector<int>{4092, 4095}));

  EXPECT_EQ(w->embed().name, "model.embed_tokens.weight");
  EXPECT_EQ(w->embed().shape, (std::vector<int64_t>{4096, 256}));
  EXPECT_EQ(w->embed().dtype, DType::kBF16);
  EXPECT_EQ(w->lm_head().name, "lm_head.weight");
  EXPECT_NE(&w->lm_head(), &w->embed());
  EXPECT_EQ(w->final_norm().shape, std::vector<int64_t>{256});
  ASSERT_EQ(w->layers().size(), 4u);
  for (const LayerWeights& l : w->layers()) {
    EXPECT_EQ(l.q_proj->shape, (std::vector<int64_t>{256, 256}));
    EXPECT_EQ(l.k_proj->shape, (std::vector<int64_t>{128, 256}));
    EXPECT_EQ(l.v_proj->shape, (std::vector<int64_t>{128, 256}));
    EXPECT_EQ(l.o_proj->shape, (std::vector<int64_t>{256, 256}));
    EXPECT_EQ(l.gate_proj->shape, (std::vector<int64_t>{688, 256}));
    EXPECT_EQ(l.up_proj->shape, (std::vector<int64_t>{688, 256}));
    EXPECT_EQ(l.down_proj->shape, (std::vector<int64_t>{256, 688}));
    EXPECT_EQ(l.input_norm->shape, std::vector<int64_t>{256});
    EXPECT_EQ(l.post_norm->shape, std::vector<int64_t>{256});
    EXPECT_EQ(l.q_bias, nullptr);
    EXPECT_EQ(l.k_bias, nullptr);
    EXPECT_EQ(l.v_bias, nullptr);
  }
  EXPECT_EQ(w->layers()[2].q_proj->name, "model.layers.2.self_attn.q_proj.weight");

  // The number of stored parameters is the config's count.
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(Path("m"));
  ASSERT_TRUE(reader.ok());
  int64_t params = 0;
  for (const std::string& name : reader->Names()) params += (*reader->Get(name))->NumElements();
  EXPECT_EQ(params, tiny.ParamCount());

  const nlohmann::json gen = nlohmann::json::parse(ReadFile(Path("m") + "/generation_config.json"));
  EXPECT_EQ(gen["bos_token_id"], 4091);
  EXPECT_EQ(gen["eos_token_id"], nlohmann::json::array({4092, 4095}));
  EXPECT_EQ(gen["do_sample"], false);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(Path("m") + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
}

TEST_F(WeightsTest, RandomValuesHaveTheDocumentedScales) {
  ASSERT_TRUE(WriteRandomModel(Preset("tiny-qwen2"), 3, DType::kF32, Path("m")).ok());
  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->embed().dtype, DType::kF32);
  EXPECT_EQ(w->config().torch_dtype, "float32");
  ExpectStats(w->embed(), 0.0, 1.0, 0.01);
  ExpectStats(w->final_norm(), 1.0, 0.1 / std::sqrt(3.0), 0.2);
  const LayerWeights& l = w->layers()[1];
  ExpectStats(*l.q_proj, 0.0, 1.0 / 16, 0.02);  // 1/sqrt(256)
  ExpectStats(*l.down_proj, 0.0, 1.0 / std::sqrt(688.0), 0.02);
  ExpectStats(*l.q_bias, 0.0, 0.1, 0.25);
  ExpectStats(*l.input_norm, 1.0, 0.1 / std::sqrt(3.0), 0.2);

  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 3, DType::kF32, Path("t")).ok());
  absl::StatusOr<ModelWeights> t = ModelWeights::Load(Path("t"));
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectStats(t->lm_head(), 0.0, 4.0 / 16, 0.01);  // 4/sqrt(256)

  // Different tensors get different streams.
  const std::vector<float> q = ToFloats(*l.q_proj);
  const std::vector<float> o = ToFloats(*l.o_proj);
  EXPECT_NE(q, o);
}

TEST_F(WeightsTest, FingerprintIsDeterministic) {
  const ModelConfig tiny = Preset("tiny");
  ASSERT_TRUE(WriteRandomModel(tiny, 7, DType::kBF16, Path("a")).ok());
  ASSERT_TRUE(WriteRandomModel(tiny, 7, DType::kBF16, Path("b")).ok());
  ASSERT_TRUE(WriteRandomModel(tiny, 8, DType::kBF16, Path("c")).ok());
  ASSERT_TRUE(WriteRandomModel(tiny, 7, DType::kF16, Path("d")).ok());
  ASSERT_TRUE(WriteRandomModel(tiny, 7, DType::kF32, Path("e")).ok());

  // Same (config, seed, dtype): the same bytes.
  EXPECT_EQ(ReadFile(Path("a") + "/model.safetensors"), ReadFile(Path("b") + "/model.safetensors"));
  EXPECT_EQ(ReadFile(Path("a") + "/config.json"), ReadFile(Path("b") + "/config.json"));

  const BlockKey a = FingerprintOf(Path("a"));
  EXPECT_EQ(a, FingerprintOf(Path("a")));  // stable across calls
  EXPECT_EQ(a, FingerprintOf(Path("b")));
  EXPECT_NE(a, FingerprintOf(Path("c")));  // other seed
  EXPECT_NE(a, FingerprintOf(Path("d")));  // other dtype
  EXPECT_NE(a, FingerprintOf(Path("e")));
  EXPECT_NE(FingerprintOf(Path("d")), FingerprintOf(Path("e")));

  // The values are the same random draw in every dtype, rounded.
  absl::StatusOr<ModelWeights> bf = ModelWeights::Load(Path("a"));
  absl::StatusOr<ModelWeights> f32 = ModelWeights::Load(Path("e"));
  ASSERT_TRUE(bf.ok() && f32.ok());
  const std::vector<float> x = ToFloats(*f32->layers()[0].gate_proj);
  const std::vector<float> y = ToFloats(*bf->layers()[0].gate_proj);
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(Bf16ToFloat(FloatToBf16(x[i])), y[i]) << i;

  // Architecture fields of config.json are part of the fingerprint; token ids are not.
  std::filesystem::copy(Path("a"), Path("theta"));
  const std::string config = ReadFile(Path("a") + "/config.json");
  WriteFile(Path("theta") + "/config.json",
            absl::StrReplaceAll(config, {{"\"rope_theta\": 10000.0", "\"rope_theta\": 20000.0"}}));
  EXPECT_NE(a, FingerprintOf(Path("theta")));
  std::filesystem::copy(Path("a"), Path("bos"));
  WriteFile(Path("bos") + "/config.json",
            absl::StrReplaceAll(config, {{"\"bos_token_id\": 1", "\"bos_token_id\": 3"}}));
  EXPECT_EQ(a, FingerprintOf(Path("bos")));
}

// Test vectors of docs/engine.md, checked there with an independent Python implementation:
// they pin down the random generator, the safetensors layout and the fingerprint together.
TEST_F(WeightsTest, FingerprintTestVectors) {
  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 1, DType::kBF16, Path("tiny")).ok());
  EXPECT_EQ(KeyToHex(FingerprintOf(Path("tiny"))),
            "b138bf7364fd8290d34d0757aa03c6da10327ed3254e9a39f7f5dd2784627f52");
  ASSERT_TRUE(WriteRandomModel(Preset("tiny-qwen2"), 1, DType::kBF16, Path("qwen2"), 3).ok());
  EXPECT_EQ(KeyToHex(FingerprintOf(Path("qwen2"))),
            "4b8b6eeb632228eff6cd712175f76ae4d1096a36a3fd0adfcab0f2f1330f1422");
}

TEST_F(WeightsTest, FingerprintSeesEveryByte) {
  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 1, DType::kBF16, Path("m")).ok());
  const BlockKey before = FingerprintOf(Path("m"));
  // Flip one bit of one weight.
  Rewrite(Path("m"), [](SafetensorsWriter& w, const TensorView& t) {
    std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
    if (t.name == "model.layers.3.mlp.down_proj.weight") bytes[1000] ^= 1;
    ASSERT_TRUE(w.Add(t.name, t.dtype, t.shape, bytes.data(), bytes.size()).ok());
  });
  EXPECT_NE(before, FingerprintOf(Path("m")));
}

TEST_F(WeightsTest, ShardedMatchesSingle) {
  const ModelConfig tiny = Preset("tiny");
  ASSERT_TRUE(WriteRandomModel(tiny, 5, DType::kBF16, Path("one")).ok());
  ASSERT_TRUE(WriteRandomModel(tiny, 5, DType::kBF16, Path("three"), 3).ok());
  EXPECT_FALSE(std::filesystem::exists(Path("three") + "/model.safetensors"));
  for (int i = 1; i <= 3; ++i) {
    EXPECT_TRUE(std::filesystem::exists(Path("three") + "/model-0000" + std::to_string(i) +
                                        "-of-00003.safetensors"));
  }
  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(Path("three") + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), tiny.ParamCount() * 2);
  EXPECT_EQ(index["weight_map"].size(), 4u * 9 + 3);
  EXPECT_EQ(FingerprintOf(Path("one")), FingerprintOf(Path("three")));

  // Shards hold roughly equal bytes.
  for (int i = 1; i <= 3; ++i) {
    const auto size = std::filesystem::file_size(Path("three") + "/model-0000" + std::to_string(i) +
                                                 "-of-00003.safetensors");
    EXPECT_GT(size, tiny.ParamCount() * 2 / 3 / 2) << i;
  }

  // Rewriting as a single file removes the index (which would otherwise be stale).
  ASSERT_TRUE(WriteRandomModel(tiny, 6, DType::kBF16, Path("three")).ok());
  EXPECT_FALSE(std::filesystem::exists(Path("three") + "/model.safetensors.index.json"));
  EXPECT_EQ(FingerprintOf(Path("three")), [&] {
    EXPECT_TRUE(WriteRandomModel(tiny, 6, DType::kBF16, Path("six")).ok());
    return FingerprintOf(Path("six"));
  }());

  EXPECT_EQ(WriteRandomModel(tiny, 5, DType::kBF16, Path("bad"), 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteRandomModel(tiny, 5, DType::kBF16, Path("bad"), 1000).code(),
            absl::StatusCode::kInvalidArgument);
  ModelConfig broken = tiny;
  broken.num_kv_heads = 3;
  EXPECT_EQ(WriteRandomModel(broken, 5, DType::kBF16, Path("bad")).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(WeightsTest, TiedEmbeddingsQwen2) {
  ASSERT_TRUE(WriteRandomModel(Preset("tiny-qwen2"), 2, DType::kBF16, Path("m")).ok());
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(Path("m"));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->Find("lm_head.weight"), nullptr);

  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w->config().tie_word_embeddings);
  EXPECT_EQ(&w->lm_head(), &w->embed());
  for (const LayerWeights& l : w->layers()) {
    ASSERT_NE(l.q_bias, nullptr);
    ASSERT_NE(l.k_bias, nullptr);
    ASSERT_NE(l.v_bias, nullptr);
    EXPECT_EQ(l.q_bias->shape, std::vector<int64_t>{256});
    EXPECT_EQ(l.k_bias->shape, std::vector<int64_t>{128});
    EXPECT_EQ(l.v_bias->shape, std::vector<int64_t>{128});
  }

  // A tied checkpoint that also stores lm_head.weight loads; the stored copy is ignored, as in
  // transformers, and does not change the fingerprint.
  const BlockKey fp = w->Fingerprint();
  Rewrite(Path("m"), [](SafetensorsWriter& out, const TensorView& t) {
    Copy(out, t);
    if (t.name == "model.embed_tokens.weight") {
      ASSERT_TRUE(out.Add("lm_head.weight", t.dtype, t.shape, t.data, t.nbytes).ok());
    }
  });
  absl::StatusOr<ModelWeights> again = ModelWeights::Load(Path("m"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(&again->lm_head(), &again->embed());
  EXPECT_EQ(again->Fingerprint(), fp);
}

TEST_F(WeightsTest, MissingTensorIsNamed) {
  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 1, DType::kBF16, Path("m")).ok());
  Rewrite(Path("m"), [](SafetensorsWriter& w, const TensorView& t) {
    if (t.name != "model.layers.2.mlp.up_proj.weight") Copy(w, t);
  });
  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("model.layers.2.mlp.up_proj.weight"));
}

TEST_F(WeightsTest, UntiedWithoutLmHeadIsNotFound) {
  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 1, DType::kBF16, Path("m")).ok());
  Rewrite(Path("m"), [](SafetensorsWriter& w, const TensorView& t) {
    if (t.name != "lm_head.weight") Copy(w, t);
  });
  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("lm_head.weight"));
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("tie_word_embeddings"));
}

TEST_F(WeightsTest, WrongShapeIsNamed) {
  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 1, DType::kBF16, Path("m")).ok());
  Rewrite(Path("m"), [](SafetensorsWriter& w, const TensorView& t) {
    if (t.name == "model.layers.1.self_attn.k_proj.weight") {
      // Same bytes, transposed shape.
      ASSERT_TRUE(w.Add(t.name, t.dtype, {t.shape[1], t.shape[0]}, t.data, t.nbytes).ok());
    } else {
      Copy(w, t);
    }
  });
  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(w.status().message());
  EXPECT_THAT(msg, HasSubstr("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_THAT(msg, HasSubstr("[256, 128]"));
  EXPECT_THAT(msg, HasSubstr("[128, 256]"));
}

TEST_F(WeightsTest, UnexpectedTensorIsRefused) {
  // A bias the Llama config does not declare would change the math: refuse it.
  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 1, DType::kBF16, Path("m")).ok());
  Rewrite(Path("m"), [](SafetensorsWriter& w, const TensorView& t) {
    Copy(w, t);
    if (t.name == "model.layers.0.self_attn.o_proj.weight") {
      std::vector<uint16_t> bias(256, 0);
      ASSERT_TRUE(
          w.Add("model.layers.0.self_attn.o_proj.bias", DType::kBF16, {256}, bias.data(), 512)
              .ok());
    }
  });
  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("model.layers.0.self_attn.o_proj.bias"));
}

TEST_F(WeightsTest, ConfigMismatchAndMissingFiles) {
  EXPECT_EQ(ModelWeights::Load(Path("nothing")).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteRandomModel(Preset("tiny"), 1, DType::kBF16, Path("m")).ok());
  // config.json claims more layers than the checkpoint has.
  const std::string config = ReadFile(Path("m") + "/config.json");
  WriteFile(
      Path("m") + "/config.json",
      absl::StrReplaceAll(config, {{"\"num_hidden_layers\": 4", "\"num_hidden_layers\": 5"}}));
  absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("model.layers.4."));
  // No weights at all.
  std::filesystem::remove(Path("m") + "/model.safetensors");
  WriteFile(Path("m") + "/config.json", config);
  EXPECT_EQ(ModelWeights::Load(Path("m")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(WeightsTest, EveryPresetShapeIsConsistent) {
  // The big presets are too large to write in a unit test; check their tiny siblings and that
  // the big ones validate.
  for (const char* name : {"tiny-mistral", "tiny-llama3"}) {
    ASSERT_TRUE(WriteRandomModel(Preset(name), 1, DType::kBF16, Path(name)).ok()) << name;
    absl::StatusOr<ModelWeights> w = ModelWeights::Load(Path(name));
    ASSERT_TRUE(w.ok()) << name << ": " << w.status();
    EXPECT_EQ(w->config().CanonicalArchitecture(), Preset(name).CanonicalArchitecture());
  }
}

}  // namespace
}  // namespace kvtier::engine
