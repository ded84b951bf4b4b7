// Random models for tests, demos and benchmarks (`kvtier-model init`; docs/engine.md, "Random
// models"): writes a complete Hugging Face model directory with random weights of any preset
// shape, deterministic in (config, seed, dtype). Not part of the serving libraries: only
// kvtier-model, the tests and the benchmarks link it (with tokenizer_writer.h, the
// kvtier_model_writer library).
//
// Free functions; thread-safe (calls writing the same directory at once are not).
#ifndef KVTIER_ENGINE_TESTING_MODEL_WRITER_H_
#define KVTIER_ENGINE_TESTING_MODEL_WRITER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"

namespace kvtier::testing {

// Writes a complete model directory in Hugging Face format: config.json,
// generation_config.json and random weights in `dtype` (model.safetensors, or `shards` files
// with model.safetensors.index.json when shards > 1). Same (config, seed, dtype) → same bytes.
// Weights are scaled so the random model has well-separated logits (greedy decoding is stable
// under small numeric differences); see docs/engine.md. Creates `model_dir` if needed.
// InvalidArgument for an inconsistent config or a shard count outside [1, tensors].
absl::Status WriteRandomModel(const engine::ModelConfig& config, uint64_t seed, engine::DType dtype,
                              const std::string& model_dir, int shards = 1);

// Writes `text` to `path` through a temporary file in the same directory and a rename, so
// readers see the old file or the whole new one. Not fsynced.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text);

}  // namespace kvtier::testing

#endif  // KVTIER_ENGINE_TESTING_MODEL_WRITER_H_
