#include "engine/rope.h"

#include <cmath>

namespace kvtier::engine {

std::vector<float> RopeInvFreq(const ModelConfig& config) {
  const int d = config.head_dim;
  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) {
    // torch: 1.0 / (base ** (arange(0, d, 2).float() / d)), in fp32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(d);
    inv_freq[i] = 1.0f / std::pow(config.rope_theta, exponent);
  }
  const RopeScaling& rs = config.rope_scaling;
  if (rs.type != "llama3") return inv_freq;
  // transformers' _compute_llama3_parameters.
  const float old_len = static_cast<float>(rs.original_max_position_embeddings);
  const float low_freq_wavelen = old_len / rs.low_freq_factor;
  const float high_freq_wavelen = old_len / rs.high_freq_factor;
  for (float& f : inv_freq) {
    const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
    float scaled = wavelen > low_freq_wavelen ? f / rs.factor : f;
    const float smooth =
        (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) scaled = (1.0f - smooth) * scaled / rs.factor + smooth * scaled;
    f = scaled;
  }
  return inv_freq;
}

}  // namespace kvtier::engine
