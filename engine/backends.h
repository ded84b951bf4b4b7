// Backend factories, used by Engine::Create. Internal to engine/.
#ifndef KVTIER_ENGINE_BACKENDS_H_
#define KVTIER_ENGINE_BACKENDS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/engine.h"

namespace kvtier::engine {

// The KV page layout of `config` for a backend storing K/V in `dtype_name` ("fp32" | "bf16").
KvLayout MakeKvLayout(const ModelConfig& config, int block_tokens, const std::string& dtype_name);

// fp32 reference backend (engine/cpu_backend.cc).
absl::StatusOr<std::unique_ptr<Engine>> CreateCpuEngine(ModelWeights weights,
                                                        const EngineOptions& options);

// bf16 CUDA backend (engine/cuda/cuda_backend.cu). Unimplemented in builds without CUDA.
absl::StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(ModelWeights weights,
                                                         const EngineOptions& options);

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_BACKENDS_H_
