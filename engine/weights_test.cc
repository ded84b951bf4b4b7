#include "engine/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_replace.h"
#include "engine/testing/model_writer.h"
#include "engine/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvtier::engine {
namespace {

using ::kvtier::testing::ReadFile;
using ::kvtier::testing::TempDirTest;
using ::kvtier::testing::WriteFile;
using ::kvtier::testing::WriteRandomModel;
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
