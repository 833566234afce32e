// Bytes and FLOPs of each op call: what it must read and write at least once, and
// the arithmetic it must do. Activations are f32.
#include "ops/ops.h"

namespace ekva {

namespace {
constexpr double kF32 = sizeof(float);
double d(int64_t v) { return static_cast<double>(v); }
}  // namespace

OpCost EmbeddingParams::cost() const {
  return {d(n_tokens * table.cols) * (dtype_size(table.dtype) + kF32), 0};
}

OpCost MatmulParams::cost() const {
  return {static_cast<double>(w.nbytes()) + d(n_rows) * (d(w.cols) + d(w.rows)) * kF32,
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

OpCost ScatterAddParams::cost() const {
  return {d(n * width) * 3 * kF32 + d(n) * 8, 2.0 * d(n * width)};
}

OpCost GatedAddParams::cost() const {
  return {d(n_rows * width) * 3 * kF32 + d(n_rows) * kF32, 2.0 * d(n_rows * width)};
}

OpCost AttentionParams::cost(std::span<const std::vector<KvChunk>> chunks) const {
  // Every query reads the K/V of its (sequence, kv-head) once (the GQA group
  // shares the read); scores and the weighted V sum are 4 FLOPs per element and head.
  double entries = 0;
  for (int64_t t = 0; t < n_queries; ++t) {
    const int64_t s = q_seq != nullptr ? q_seq[t] : 0;
    for (int64_t h = 0; h < n_kv_heads; ++h)
      for (const KvChunk& c : chunks[static_cast<size_t>(s * n_kv_heads + h)]) entries += d(c.n);
  }
  const double group = n_kv_heads > 0 ? d(n_heads / n_kv_heads) : 0;
  return {entries * d(head_dim) * 2 * kF32 + d(n_queries * n_heads * head_dim) * 2 * kF32,
          entries * group * d(head_dim) * 4};
}

}  // namespace ekva
