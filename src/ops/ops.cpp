// Bytes and FLOPs of each op call: what it must read and write at least once, and
// the arithmetic it must do. Activations are f32.
#include "ops/ops.h"

#include <algorithm>

namespace ekva {

namespace {
constexpr double kF32 = sizeof(float);
constexpr double kI32 = sizeof(int32_t);
double d(int64_t v) { return static_cast<double>(v); }
}  // namespace

OpCost EmbeddingParams::cost() const {
  return {d(n_tokens * table.cols) * (dtype_size(table.dtype) + kF32) + d(n_tokens) * kI32, 0};
}

OpCost MatmulParams::cost() const {
  return {static_cast<double>(w.nbytes()) + d(n_rows) * (d(w.cols) + d(w.rows)) * kF32 +
              (rows != nullptr ? d(n_rows) * kI32 : 0.0),
          2.0 * d(n_rows) * d(w.rows) * d(w.cols)};
}

OpCost RmsNormParams::cost() const {
  return {d(n_rows * width) * 2 * kF32 + d(width) * kF32, 4.0 * d(n_rows * width)};
}

OpCost RopeParams::cost() const {
  return {d(n_tokens * n_heads * head_dim) * 2 * kF32, 3.0 * d(n_tokens * n_heads * head_dim)};
}

OpCost AddBiasParams::cost() const { return {d(n_rows * width) * 2 * kF32, d(n_rows * width)}; }
OpCost ClampParams::cost() const { return {d(n) * 2 * kF32, 2.0 * d(n)}; }
OpCost AddParams::cost() const { return {d(n) * 3 * kF32, d(n)}; }
OpCost SiluMulParams::cost() const { return {d(n) * 3 * kF32, 5.0 * d(n)}; }

OpCost RouteParams::cost() const {
  return {d(n_tokens * n_experts) * kF32 + d(n_tokens * top_k) * 8, 4.0 * d(n_tokens * n_experts)};
}

OpCost CopyRowsParams::cost() const { return {d(n_rows * width) * 2 * kF32, 0}; }

OpCost ScatterAddParams::cost() const {
  return {d(n * width) * 3 * kF32 + d(n) * 8, 2.0 * d(n * width)};
}

OpCost GatedAddParams::cost() const {
  return {d(n_rows * width) * 3 * kF32 + d(n_rows) * kF32, 2.0 * d(n_rows * width)};
}

OpCost attention_cost(const AttentionParams& p, double seen_entries, double read_bytes,
                      double scored_entries) {
  const double group = p.n_kv_heads > 0 ? d(p.n_heads / p.n_kv_heads) : 0;
  const double q_and_out = d(p.n_queries * p.n_heads * (p.head_dim + p.value_dim())) * kF32;
  return {read_bytes + scored_entries * 2 * kF32 + q_and_out,
          seen_entries * group * d(p.head_dim + p.value_dim()) * 2};
}

OpCost AttentionParams::cost(std::span<const std::vector<KvChunk>> chunks) const {
  // A call's queries of one sequence are consecutive positions, so the entries some
  // query of sequence s sees are those in (lowest - window, highest]; each query
  // counts its own by binary search over the list's sorted positions.
  const auto S = static_cast<size_t>(n_seqs);
  std::vector<std::vector<int32_t>> queries_of(S);  // [n_seqs] query positions
  std::vector<uint8_t> seq_scored(S, 0);
  for (int64_t t = 0; t < n_queries; ++t) {
    const auto s = static_cast<size_t>(q_seq != nullptr ? q_seq[t] : 0);
    queries_of[s].push_back(q_positions[t]);
    if (q_scored != nullptr && q_scored[t] != 0) seq_scored[s] = 1;
  }
  double seen = 0, read_bytes = 0, scored = 0;
  std::vector<int32_t> positions;
  for (size_t s = 0; s < S; ++s) {
    const std::vector<int32_t>& qs = queries_of[s];
    if (qs.empty()) continue;
    const int64_t lo = *std::min_element(qs.begin(), qs.end());
    const int64_t hi = *std::max_element(qs.begin(), qs.end());
    for (int64_t h = 0; h < n_kv_heads; ++h) {
      positions.clear();
      int64_t n_read = 0;
      for (const KvChunk& c : chunks[s * static_cast<size_t>(n_kv_heads) + static_cast<size_t>(h)])
        for (int64_t j = 0; j < c.n; ++j) {
          const int32_t k_pos = c.positions[j];
          positions.push_back(k_pos);
          if (k_pos <= hi && (sliding_window == 0 || k_pos > lo - sliding_window)) {
            read_bytes += static_cast<double>(c.entry_bytes(head_dim) + sizeof(int32_t));
            ++n_read;
          }
        }
      scored += seq_scored[s] * d(n_read);
      const auto n = static_cast<int64_t>(positions.size());
      const int64_t k_lo = n > 0 ? *std::min_element(positions.begin(), positions.end()) : 0;
      const int64_t k_hi = n > 0 ? *std::max_element(positions.begin(), positions.end()) : 0;
      if (k_hi <= lo && (sliding_window == 0 || k_lo > hi - sliding_window)) {
        seen += d(n) * d(static_cast<int64_t>(qs.size()));  // every query sees every entry
        continue;
      }
      std::sort(positions.begin(), positions.end());
      for (const int32_t q_pos : qs) {
        const auto last = std::upper_bound(positions.begin(), positions.end(), q_pos);
        const auto first = sliding_window == 0
                               ? positions.begin()
                               : std::lower_bound(positions.begin(), last,
                                                  static_cast<int64_t>(q_pos) - sliding_window + 1);
        seen += d(last - first);
      }
    }
  }
  return attention_cost(*this, seen, read_bytes, scored);
}

OpCost AttentionParams::cost_from_sizes(std::span<const std::vector<KvChunk>> chunks) const {
  // The m queries of a sequence are its newest m entries (appended before attention
  // runs, at the queries' positions); the list's other entries come before them. So
  // each query sees every older entry and the call's entries up to its own.
  const auto S = static_cast<size_t>(n_seqs);
  std::vector<int64_t> queries(S, 0);
  std::vector<uint8_t> seq_scored(S, 0);
  for (int64_t t = 0; t < n_queries; ++t) {
    const auto s = static_cast<size_t>(q_seq != nullptr ? q_seq[t] : 0);
    ++queries[s];
    if (q_scored != nullptr && q_scored[t] != 0) seq_scored[s] = 1;
  }
  double seen = 0, read_bytes = 0, scored = 0;
  for (size_t s = 0; s < S; ++s) {
    const int64_t m = queries[s];
    if (m == 0) continue;
    for (int64_t h = 0; h < n_kv_heads; ++h) {
      int64_t n = 0;
      for (const KvChunk& c :
           chunks[s * static_cast<size_t>(n_kv_heads) + static_cast<size_t>(h)]) {
        n += c.n;
        read_bytes += d(c.n) * d(static_cast<int64_t>(c.entry_bytes(head_dim) + sizeof(int32_t)));
      }
      const int64_t own = std::min(m, n), older = n - own;
      seen += d(older) * d(m) + d(own) * d(own + 1) / 2 + d(m - own) * d(n);
      scored += seq_scored[s] * d(n);
    }
  }
  return attention_cost(*this, seen, read_bytes, scored);
}

}  // namespace ekva
