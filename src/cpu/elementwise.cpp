// Row-wise and element-wise ops of the CPU backend. Each is a single pass over
// activations that are small next to the weights: plain loops the compiler
// vectorises, with rows split over the pool where a call can be long (prefill).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/kernels.h"

namespace ekva::cpu {

namespace {
// Rows below this many elements in total are not worth waking the pool for.
constexpr int64_t kParallelElements = 1 << 15;
}  // namespace

void embedding(const EmbeddingParams& p) {
  const WeightMatrix& e = p.table;
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const int32_t id = p.tokens[t];
    EKVA_CHECK(id >= 0 && id < e.rows, "embedding: token {} outside [0, {})", id, e.rows);
    float* out = p.out + t * e.cols;
    if (e.dtype == DType::kBF16) {
      const auto* row = reinterpret_cast<const uint16_t*>(e.row(id));
      for (int64_t i = 0; i < e.cols; ++i) out[i] = bf16_to_f32(row[i]);
    } else {
      std::memcpy(out, e.row(id), sizeof(float) * static_cast<size_t>(e.cols));
    }
  }
}

void rmsnorm(const RmsNormParams& p, ThreadPool& pool) {
  auto rows = [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = p.x + r * p.width;
      float* yr = p.out + r * p.width;
      double sum_sq = 0.0;  // double: widths up to 16k in f32 would lose digits
      for (int64_t i = 0; i < p.width; ++i) sum_sq += double{xr[i]} * xr[i];
      const auto inv =
          static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(p.width) + p.eps));
      for (int64_t i = 0; i < p.width; ++i) yr[i] = xr[i] * inv * p.weight[i];
    }
  };
  if (p.n_rows * p.width < kParallelElements)
    rows(0, p.n_rows, 0);
  else
    pool.parallel_for(p.n_rows, rows);
}

void rope(const RopeParams& p, ThreadPool& pool) {
  const int64_t half = p.head_dim / 2;
  auto tokens = [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const double pos = p.positions[t];
      for (int64_t i = 0; i < half; ++i) {
        // Angles in double: position * frequency reaches 1e5+ rad at long contexts,
        // where f32 would leave only a few correct digits in the angle.
        const double angle = pos * static_cast<double>(p.inv_freq[i]);
        const auto c = static_cast<float>(std::cos(angle));
        const auto s = static_cast<float>(std::sin(angle));
        for (int64_t h = 0; h < p.n_heads; ++h) {
          float* v = p.x + (t * p.n_heads + h) * p.head_dim;
          const float a = v[i];
          const float b = v[i + half];
          v[i] = a * c - b * s;
          v[i + half] = b * c + a * s;
        }
      }
    }
  };
  if (p.n_tokens * p.n_heads * p.head_dim < kParallelElements)
    tokens(0, p.n_tokens, 0);
  else
    pool.parallel_for(p.n_tokens, tokens);
}

void add_bias(const AddBiasParams& p) {
  for (int64_t r = 0; r < p.n_rows; ++r) {
    float* x = p.x + r * p.width;
    for (int64_t i = 0; i < p.width; ++i) x[i] += p.bias[i];
  }
}

void clamp(const ClampParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.x[i] = std::clamp(p.x[i], -p.limit, p.limit);
}

void add(const AddParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.x[i] += p.y[i];
}

void silu_mul(const SiluMulParams& p) {
  for (int64_t i = 0; i < p.n; ++i) p.gate[i] = p.gate[i] / (1.f + std::exp(-p.gate[i])) * p.up[i];
}

void route(const RouteParams& p) {
  const int E = p.n_experts;
  EKVA_CHECK(E <= kMaxRoutedExperts && p.top_k <= E, "route: {} experts, top {}", E, p.top_k);
  EKVA_CHECK(
      p.n_groups >= 1 && E % p.n_groups == 0 && p.top_groups >= 1 && p.top_groups <= p.n_groups,
      "route: {} experts in {} groups, top {} groups", E, p.n_groups, p.top_groups);
  std::array<float, kMaxRoutedExperts> prob;    // the scores (weights come from these)
  std::array<float, kMaxRoutedExperts> choice;  // what the top-k ranks: biased, groups masked
  std::array<int32_t, kMaxRoutedExperts> order;
  std::array<float, kMaxRoutedExperts> group;
  std::array<int32_t, kMaxRoutedExperts> group_order;
  const int per_group = E / p.n_groups;
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const float* logits = p.logits + t * E;
    if (p.scoring == RouterScoring::kSoftmax) {
      const float max_logit = *std::max_element(logits, logits + E);
      float sum = 0.f;
      for (int e = 0; e < E; ++e)
        sum += prob[static_cast<size_t>(e)] = std::exp(logits[e] - max_logit);
      for (int e = 0; e < E; ++e) prob[static_cast<size_t>(e)] /= sum;
    } else {
      for (int e = 0; e < E; ++e) prob[static_cast<size_t>(e)] = 1.f / (1.f + std::exp(-logits[e]));
    }
    for (int e = 0; e < E; ++e)
      choice[static_cast<size_t>(e)] =
          prob[static_cast<size_t>(e)] + (p.selection_bias != nullptr ? p.selection_bias[e] : 0.f);
    if (p.n_groups > 1) {
      for (int g = 0; g < p.n_groups; ++g) {
        float best = -INFINITY, second = -INFINITY;
        for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
          const float c = choice[static_cast<size_t>(e)];
          if (c > best) {
            second = best;
            best = c;
          } else if (c > second) {
            second = c;
          }
        }
        group[static_cast<size_t>(g)] = p.group_score == GroupScore::kMax ? best : best + second;
        group_order[static_cast<size_t>(g)] = g;
      }
      std::partial_sort(group_order.begin(), group_order.begin() + p.top_groups,
                        group_order.begin() + p.n_groups, [&](int32_t a, int32_t b) {
                          const float ga = group[static_cast<size_t>(a)];
                          const float gb = group[static_cast<size_t>(b)];
                          return ga > gb || (ga == gb && a < b);
                        });
      std::array<bool, kMaxRoutedExperts> keep{};
      for (int g = 0; g < p.top_groups; ++g)
        keep[static_cast<size_t>(group_order[static_cast<size_t>(g)])] = true;
      for (int e = 0; e < E; ++e)
        if (!keep[static_cast<size_t>(e / per_group)]) choice[static_cast<size_t>(e)] = 0.f;
    }
    for (int e = 0; e < E; ++e) order[static_cast<size_t>(e)] = e;
    std::partial_sort(order.begin(), order.begin() + p.top_k, order.begin() + E,
                      [&](int32_t a, int32_t b) {
                        const float pa = choice[static_cast<size_t>(a)];
                        const float pb = choice[static_cast<size_t>(b)];
                        return pa > pb || (pa == pb && a < b);
                      });
    int32_t* experts = p.experts + t * p.top_k;
    float* weights = p.weights + t * p.top_k;
    float top_sum = p.scoring == RouterScoring::kSigmoid ? 1e-20f : 0.f;
    for (int k = 0; k < p.top_k; ++k) {
      experts[k] = order[static_cast<size_t>(k)];
      top_sum += weights[k] = prob[static_cast<size_t>(experts[k])];
    }
    if (p.renormalize)
      for (int k = 0; k < p.top_k; ++k) weights[k] /= top_sum;
    if (p.scale != 1.f)
      for (int k = 0; k < p.top_k; ++k) weights[k] *= p.scale;
  }
}

void copy_rows(const CopyRowsParams& p) {
  for (int64_t r = 0; r < p.n_rows; ++r)
    std::memcpy(p.dst + r * p.dst_stride, p.src + r * p.src_stride,
                static_cast<size_t>(p.width) * sizeof(float));
}

void scatter_add(const ScatterAddParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    float* dst = p.out + int64_t{p.rows[i]} * p.width;
    const float* src = p.y + i * p.width;
    const float w = p.weights[i];
    for (int64_t j = 0; j < p.width; ++j) dst[j] += w * src[j];
  }
}

void gated_add(const GatedAddParams& p) {
  for (int64_t t = 0; t < p.n_rows; ++t) {
    const float g = 1.f / (1.f + std::exp(-p.gate_logits[t]));
    float* dst = p.out + t * p.width;
    const float* src = p.y + t * p.width;
    for (int64_t j = 0; j < p.width; ++j) dst[j] += g * src[j];
  }
}

}  // namespace ekva::cpu
