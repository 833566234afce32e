// Scalar references of the row-wise and element-wise ops: the plainest loops, in
// double where a sum or an angle would lose digits in f32.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace ekva::ref {

void embedding(const EmbeddingParams& p) {
  const WeightMatrix& e = p.table;
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    EKVA_CHECK(p.tokens[t] >= 0 && p.tokens[t] < e.rows, "embedding: token {} outside [0, {})",
               p.tokens[t], e.rows);
    const std::byte* row = e.row(p.tokens[t]);
    for (int64_t i = 0; i < e.cols; ++i) {
      if (e.dtype == DType::kBF16) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        p.out[t * e.cols + i] = bf16_to_f32(h);
      } else {
        std::memcpy(&p.out[t * e.cols + i], row + 4 * i, 4);
      }
    }
  }
}

void rmsnorm(const RmsNormParams& p) {
  for (int64_t r = 0; r < p.n_rows; ++r) {
    double sum_sq = 0.0;
    for (int64_t i = 0; i < p.width; ++i)
      sum_sq += double{p.x[r * p.width + i]} * p.x[r * p.width + i];
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(p.width) + p.eps);
    for (int64_t i = 0; i < p.width; ++i)
      p.out[r * p.width + i] = static_cast<float>(p.x[r * p.width + i] * inv * p.weight[i]);
  }
}

void rope(const RopeParams& p) {
  const int64_t half = p.head_dim / 2;
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    for (int64_t h = 0; h < p.n_heads; ++h) {
      float* v = p.x + (t * p.n_heads + h) * p.head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p.positions[t]) * double{p.inv_freq[i]};
        const double a = v[i], b = v[i + half];
        v[i] = static_cast<float>(a * std::cos(angle) - b * std::sin(angle));
        v[i + half] = static_cast<float>(b * std::cos(angle) + a * std::sin(angle));
      }
    }
  }
}

void add_bias(const AddBiasParams& p) {
  for (int64_t r = 0; r < p.n_rows; ++r)
    for (int64_t i = 0; i < p.width; ++i) p.x[r * p.width + i] += p.bias[i];
}

void clamp(const ClampParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.x[i] = std::min(std::max(p.x[i], -p.limit), p.limit);
}

void add(const AddParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.x[i] += p.y[i];
}

void silu_mul(const SiluMulParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const double g = p.gate[i];
    p.gate[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * p.up[i]);
  }
}

void route(const RouteParams& p) {
  const auto E = static_cast<size_t>(p.n_experts);
  std::vector<double> score(E), choice(E), group(static_cast<size_t>(p.n_groups));
  std::vector<int32_t> order(E), groups(static_cast<size_t>(p.n_groups));
  const size_t per_group = E / static_cast<size_t>(p.n_groups);
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const float* logits = p.logits + t * p.n_experts;
    if (p.scoring == RouterScoring::kSoftmax) {
      const double max_logit = *std::max_element(logits, logits + p.n_experts);
      double sum = 0;
      for (size_t e = 0; e < E; ++e) sum += score[e] = std::exp(logits[e] - max_logit);
      for (double& x : score) x /= sum;
    } else {
      for (size_t e = 0; e < E; ++e) score[e] = 1.0 / (1.0 + std::exp(-double{logits[e]}));
    }
    for (size_t e = 0; e < E; ++e)
      choice[e] = score[e] + (p.selection_bias != nullptr ? p.selection_bias[e] : 0.0);
    if (p.n_groups > 1) {  // only the experts of the best top_groups groups stay eligible
      for (size_t g = 0; g < group.size(); ++g) {
        std::vector<double> s(choice.begin() + static_cast<std::ptrdiff_t>(g * per_group),
                              choice.begin() + static_cast<std::ptrdiff_t>((g + 1) * per_group));
        std::sort(s.begin(), s.end(), std::greater<>());
        group[g] = p.group_score == GroupScore::kMax ? s[0] : s[0] + s[1];
      }
      std::iota(groups.begin(), groups.end(), 0);
      std::stable_sort(groups.begin(), groups.end(), [&](int32_t a, int32_t b) {
        return group[static_cast<size_t>(a)] > group[static_cast<size_t>(b)];
      });
      std::vector<uint8_t> keep(group.size(), 0);
      for (int g = 0; g < p.top_groups; ++g)
        keep[static_cast<size_t>(groups[static_cast<size_t>(g)])] = 1;
      for (size_t e = 0; e < E; ++e)
        if (keep[e / per_group] == 0) choice[e] = 0.0;
    }
    std::iota(order.begin(), order.end(), 0);
    // Stable: equal scores keep the lower expert id first.
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return choice[static_cast<size_t>(a)] > choice[static_cast<size_t>(b)];
    });
    double top_sum = 0;
    for (int k = 0; k < p.top_k; ++k)
      top_sum += score[static_cast<size_t>(order[static_cast<size_t>(k)])];
    if (p.scoring == RouterScoring::kSigmoid) top_sum += 1e-20;
    for (int k = 0; k < p.top_k; ++k) {
      const int32_t e = order[static_cast<size_t>(k)];
      const double w = score[static_cast<size_t>(e)] / (p.renormalize ? top_sum : 1.0);
      p.experts[t * p.top_k + k] = e;
      p.weights[t * p.top_k + k] = static_cast<float>(w * p.scale);
    }
  }
}

void copy_rows(const CopyRowsParams& p) {
  for (int64_t r = 0; r < p.n_rows; ++r)
    std::copy_n(p.src + r * p.src_stride, p.width, p.dst + r * p.dst_stride);
}

void scatter_add(const ScatterAddParams& p) {
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.width; ++j)
      p.out[p.rows[i] * p.width + j] += p.weights[i] * p.y[i * p.width + j];
}

void gated_add(const GatedAddParams& p) {
  for (int64_t t = 0; t < p.n_rows; ++t) {
    const double g = 1.0 / (1.0 + std::exp(-double{p.gate_logits[t]}));
    for (int64_t j = 0; j < p.width; ++j)
      p.out[t * p.width + j] += static_cast<float>(g * p.y[t * p.width + j]);
  }
}

}  // namespace ekva::ref
