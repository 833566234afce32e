// A full KV cache that records the attention probabilities its entries receive, for
// the runs that need them (the prefill recording of `ekva eval`, the retrieval-head
// calibration of `ekva calibrate`).
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "kv/kv_cache.h"

namespace ekva {

// A full cache whose attention scores queries: each entry's view points the
// attention op at a slot of its own, where the probabilities it gets (summed over the
// GQA group's query heads) accumulate. Every query of a forward call is scored, or
// only its last `scored_last` ones.
class ScoringFullCache final : public KvCache {
 public:
  ScoringFullCache(KvShape shape, int64_t capacity, DType kv_dtype, int64_t scored_last = -1)
      : full_(shape, capacity, kv_dtype),
        scored_last_(scored_last),
        n_kv_heads_(shape.n_kv_heads),
        sums_(static_cast<size_t>(shape.n_layers * shape.n_kv_heads),
              std::vector<float>(static_cast<size_t>(capacity), 0.f)) {}

  void append(int layer, std::span<const int32_t> positions, const float* k,
              const float* v) override {
    full_.append(layer, positions, k, v);
  }
  int64_t scored_queries(int, std::span<const int32_t> positions) override {
    const auto n = static_cast<int64_t>(positions.size());
    return scored_last_ < 0 ? n : std::min(n, scored_last_);
  }
  void view(int layer, int kv_head, std::vector<KvChunk>& out) const override {
    const size_t before = out.size();
    full_.view(layer, kv_head, out);
    if (out.size() > before) out.back().scores = sum(layer, kv_head).data();
  }
  int64_t length() const override { return full_.length(); }
  size_t bytes_used() const override { return full_.bytes_used(); }
  void clear() override {
    full_.clear();
    for (std::vector<float>& s : sums_) std::fill(s.begin(), s.end(), 0.f);
  }

  // [kv_head * n + i] for the first n entries of `layer`.
  std::vector<float> scores(int layer, int64_t n) const {
    std::vector<float> out;
    out.reserve(static_cast<size_t>(n * n_kv_heads_));
    for (int h = 0; h < n_kv_heads_; ++h) {
      const std::vector<float>& s = sum(layer, h);
      out.insert(out.end(), s.begin(), s.begin() + n);
    }
    return out;
  }

 private:
  std::vector<float>& sum(int layer, int kv_head) const {
    return sums_[static_cast<size_t>(layer * n_kv_heads_ + kv_head)];
  }
  FullKvCache full_;
  int64_t scored_last_;
  int n_kv_heads_;
  mutable std::vector<std::vector<float>> sums_;  // [layer * n_kv_heads + kv_head][capacity]
};

}  // namespace ekva
