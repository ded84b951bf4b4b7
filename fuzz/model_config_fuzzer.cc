// libFuzzer target: a model's config.json (engine/model_config.h), as found in any model
// directory a worker is pointed at. A config that parses must write back (ToJson) to the same
// configuration, and the sizes derived from it (KvBytesPerToken, ParamCount) must not overflow.
#include <cstdint>
#include <cstdlib>

#include "engine/model_config.h"
#include "fuzz/fuzz_util.h"

namespace kvtier::engine {
namespace {

void Check(const uint8_t* data, size_t size) {
  absl::StatusOr<ModelConfig> config = ModelConfig::FromJson(fuzz::AsText(data, size));
  if (!config.ok()) {
    if (config.status().message().empty()) std::abort();
    return;
  }
  absl::StatusOr<ModelConfig> again = ModelConfig::FromJson(config->ToJson());
  if (!again.ok() || again->CanonicalArchitecture() != config->CanonicalArchitecture()) {
    std::abort();
  }
  if (config->KvBytesPerToken(4) <= 0 || config->ParamCount() <= 0) std::abort();
}

}  // namespace
}  // namespace kvtier::engine

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::engine::Check(data, size);
  return 0;
}
