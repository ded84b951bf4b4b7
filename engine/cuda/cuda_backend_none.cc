// CreateCudaEngine for builds without CUDA: a clear error, so a CPU-only build still links.
#include "absl/status/status.h"
#include "engine/backends.h"

namespace kvtier::engine {

absl::StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(ModelWeights /*weights*/,
                                                         const EngineOptions& /*options*/) {
  return absl::UnimplementedError(
      "this kvtier was built without CUDA (configure with -DKVTIER_CUDA=ON on a machine with "
      "nvcc)");
}

}  // namespace kvtier::engine
