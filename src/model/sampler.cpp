#include "model/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ekva {

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {
  if (!(options.temperature >= 0.f) || !std::isfinite(options.temperature))
    fail("sampling: temperature must be >= 0, got {}", options.temperature);
  if (options.top_k < 0) fail("sampling: top-k must be >= 0, got {}", options.top_k);
  if (!(options.top_p > 0.f && options.top_p <= 1.f))
    fail("sampling: top-p must be in (0, 1], got {}", options.top_p);
}

int32_t Sampler::sample(std::span<const float> logits) {
  EKVA_CHECK(!logits.empty(), "sampling: empty logits");
  if (options_.temperature == 0.f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  candidates_.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    candidates_[i] = {logits[i] / options_.temperature, static_cast<int32_t>(i)};
  size_t n = candidates_.size();
  const auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < n) {
    n = static_cast<size_t>(options_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<ptrdiff_t>(n),
                      candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax over the n candidates, sorted by decreasing logit.
  const float max_logit = candidates_[0].first;
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    candidates_[i].first = std::exp(candidates_[i].first - max_logit);
    total += candidates_[i].first;
  }
  if (options_.top_p < 1.f) {  // smallest prefix whose mass reaches top_p
    double mass = 0.0;
    size_t keep = 0;
    while (keep < n) {
      mass += candidates_[keep].first / total;
      ++keep;
      if (mass >= options_.top_p) break;
    }
    n = keep;
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += candidates_[i].first;
  }
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= candidates_[i].first;
    if (r < 0.0) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace ekva
