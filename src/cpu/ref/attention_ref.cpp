// Scalar reference for attention: gathers the visible entries of each query's
// (sequence, kv-head), softmax in double, no splitting.
#include <cmath>
#include <vector>

#include "ops/ops.h"

namespace ekva::ref {

void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks) {
  const int64_t G = p.n_heads / p.n_kv_heads;
  const int64_t D = p.head_dim;
  const int64_t Dv = p.value_dim();  // V row j: v_at(j * D + d), d < Dv (MLA: a prefix of K)
  for (int64_t t = 0; t < p.n_queries; ++t) {
    const int32_t q_pos = p.q_positions[t];
    const int64_t seq = p.q_seq != nullptr ? p.q_seq[t] : 0;
    for (int64_t h = 0; h < p.n_heads; ++h) {
      const float* q = p.q + (t * p.n_heads + h) * D;
      std::vector<double> scores;
      std::vector<std::pair<const KvChunk*, int64_t>> values;  // (chunk, entry)
      for (const KvChunk& c : chunks[static_cast<size_t>(seq * p.n_kv_heads + h / G)]) {
        for (int64_t j = 0; j < c.n; ++j) {
          const int32_t k_pos = c.positions[j];
          if (k_pos > q_pos || (p.sliding_window > 0 && q_pos - k_pos >= p.sliding_window))
            continue;
          double s = 0.0;
          for (int64_t d = 0; d < D; ++d) s += double{q[d]} * c.k_at(j * D + d);
          scores.push_back(s * p.scale);
          values.emplace_back(&c, j);
        }
      }
      float* out = p.out + (t * p.n_heads + h) * Dv;
      std::vector<double> acc(static_cast<size_t>(Dv), 0.0);
      double max_s = -INFINITY;
      for (double s : scores) max_s = std::max(max_s, s);
      double sum = 0.0;
      for (size_t j = 0; j < scores.size(); ++j) {
        const double w = std::exp(scores[j] - max_s);
        sum += w;
        const auto [c, e] = values[j];
        for (int64_t d = 0; d < Dv; ++d) acc[static_cast<size_t>(d)] += w * c->v_at(e * D + d);
      }
      for (int64_t d = 0; d < Dv; ++d)
        out[d] = scores.empty() ? 0.f : static_cast<float>(acc[static_cast<size_t>(d)] / sum);
      // The query's probability of each entry, added to the entry's score slot
      // (every head of the GQA group adds its own).
      if (p.q_scored != nullptr && p.q_scored[t] != 0) {
        for (size_t j = 0; j < scores.size(); ++j) {
          const auto [c, e] = values[j];
          if (c->scores != nullptr)
            c->scores[e] += static_cast<float>(std::exp(scores[j] - max_s) / sum);
        }
      }
    }
  }
}

}  // namespace ekva::ref
