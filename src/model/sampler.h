// Token sampling: greedy, or temperature with optional top-k and top-p (nucleus)
// truncation, from a seeded generator so that runs repeat.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "ekva/ekva.h"

namespace ekva {

class Sampler {
 public:
  // Throws ekva::Error for out-of-range options.
  explicit Sampler(const SamplingOptions& options);
  int32_t sample(std::span<const float> logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace ekva
