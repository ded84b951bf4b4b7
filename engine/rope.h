// Rotary position embedding parameters, computed exactly as Hugging Face transformers does
// (ROPE_INIT_FUNCTIONS "default" and "llama3"), so backends match it to float rounding.
//
// Convention shared by every backend (HF's rotate_half): for a head vector x of head_dim d and
// i < d/2, with angle a = fp32(float(pos) * inv_freq[i]) (one fp32 multiply, as HF does):
//   x'[i]       = x[i] * cos(a) - x[i + d/2] * sin(a)
//   x'[i + d/2] = x[i + d/2] * cos(a) + x[i] * sin(a)
// cos/sin of the fp32 angle are rounded to fp32. Pure functions; thread-safe.
#ifndef KVTIER_ENGINE_ROPE_H_
#define KVTIER_ENGINE_ROPE_H_

#include <vector>

#include "engine/model_config.h"

namespace kvtier::engine {

// head_dim / 2 inverse frequencies (fp32), with llama3 scaling applied when configured.
std::vector<float> RopeInvFreq(const ModelConfig& config);

// The fp32 angle of position `pos` for frequency `inv_freq`.
inline float RopeAngle(int pos, float inv_freq) { return static_cast<float>(pos) * inv_freq; }

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_ROPE_H_
