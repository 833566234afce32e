// Row-wise and element-wise ops. Each is a single pass over activations that are
// small next to the weights, so plain loops (auto-vectorised) suffice.
#include <cmath>

#include "ops/ops.h"

namespace ekva {

void rmsnorm(const float* x, const float* weight, int64_t n_rows, int64_t width, float eps,
             float* out) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * width;
    float* yr = out + r * width;
    double sum_sq = 0.0;  // double: widths up to 16k in f32 would lose digits
    for (int64_t i = 0; i < width; ++i) sum_sq += double{xr[i]} * xr[i];
    const auto inv = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(width) + eps));
    for (int64_t i = 0; i < width; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

void rope(float* x, const int32_t* positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
          const float* inv_freq) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const double pos = positions[t];
    for (int64_t i = 0; i < half; ++i) {
      // Angles in double: position * frequency reaches 1e5+ rad at long contexts,
      // where f32 would leave only a few correct digits in the angle.
      const double angle = pos * static_cast<double>(inv_freq[i]);
      const auto c = static_cast<float>(std::cos(angle));
      const auto s = static_cast<float>(std::sin(angle));
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * head_dim;
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

void silu_mul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

}  // namespace ekva
