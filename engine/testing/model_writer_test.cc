#include "engine/testing/model_writer.h"

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/testing/test_util.h"
#include "engine/weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvtier::testing {
namespace {

using engine::CheckpointReader;
using engine::ConvertToFloat;
using engine::DType;
using engine::LayerWeights;
using engine::ModelConfig;
using engine::ModelWeights;
using engine::SafetensorsFile;
using engine::TensorView;

class ModelWriterTest : public TempDirTest {
 protected:
  static ModelConfig Preset(const std::string& name) { return *engine::PresetConfig(name); }

  static BlockKey FingerprintOf(const std::string& model_dir) {
    absl::StatusOr<ModelWeights> w = ModelWeights::Load(model_dir);
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? w->Fingerprint() : BlockKey{};
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

TEST_F(ModelWriterTest, WritesACompleteLoadableModel) {
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

TEST_F(ModelWriterTest, RandomValuesHaveTheDocumentedScales) {
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

TEST_F(ModelWriterTest, ShardedMatchesSingle) {
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

TEST_F(ModelWriterTest, WriteFileAtomicallyReplacesTheWholeFile) {
  ASSERT_TRUE(WriteFileAtomically(Path("f"), "first version").ok());
  EXPECT_EQ(ReadFile(Path("f")), "first version");
  ASSERT_TRUE(WriteFileAtomically(Path("f"), "2nd").ok());
  EXPECT_EQ(ReadFile(Path("f")), "2nd");
  // No temporary file is left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_),
                          std::filesystem::directory_iterator()),
            1);
  EXPECT_FALSE(WriteFileAtomically(Path("no/such/dir/f"), "x").ok());
}

}  // namespace
}  // namespace kvtier::testing
