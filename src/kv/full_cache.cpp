#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kv/kv_cache.h"

namespace ekva {

FullKvCache::FullKvCache(KvShape shape, int64_t capacity)
    : shape_(shape),
      capacity_(capacity),
      layer_len_(static_cast<size_t>(shape.n_layers), 0),
      positions_(static_cast<size_t>(capacity)),
      k_(static_cast<size_t>(shape.n_layers * shape.n_kv_heads)),
      v_(static_cast<size_t>(shape.n_layers * shape.n_kv_heads)) {
  EKVA_CHECK(capacity > 0, "KV cache capacity must be positive, got {}", capacity);
  // Storage grows on demand (vector doubling, reserved in whole pages by the
  // allocator), so a large context limit costs nothing until it is used.
}

void FullKvCache::append(int layer, std::span<const int32_t> positions, const float* k,
                         const float* v) {
  const auto n = static_cast<int64_t>(positions.size());
  int64_t& len = layer_len_[static_cast<size_t>(layer)];
  if (len + n > capacity_)
    fail("KV cache: {} tokens exceed the context of {} tokens", len + n, capacity_);
  const int64_t D = shape_.head_dim;
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    auto& kh = k_[static_cast<size_t>(layer * shape_.n_kv_heads + h)];
    auto& vh = v_[static_cast<size_t>(layer * shape_.n_kv_heads + h)];
    kh.resize(static_cast<size_t>((len + n) * D));
    vh.resize(static_cast<size_t>((len + n) * D));
    for (int64_t t = 0; t < n; ++t) {
      const size_t src = static_cast<size_t>((t * shape_.n_kv_heads + h) * D);
      std::memcpy(&kh[static_cast<size_t>((len + t) * D)], k + src, sizeof(float) * D);
      std::memcpy(&vh[static_cast<size_t>((len + t) * D)], v + src, sizeof(float) * D);
    }
  }
  if (layer == 0) {
    std::copy(positions.begin(), positions.end(), positions_.begin() + len);
    length_ = std::max<int64_t>(length_, positions.back() + 1);
  }
  len += n;
}

void FullKvCache::view(int layer, int kv_head, std::vector<KvChunk>& out) const {
  const auto& kh = k_[static_cast<size_t>(layer * shape_.n_kv_heads + kv_head)];
  const auto& vh = v_[static_cast<size_t>(layer * shape_.n_kv_heads + kv_head)];
  const int64_t n = layer_len_[static_cast<size_t>(layer)];
  if (n > 0) out.push_back({kh.data(), vh.data(), positions_.data(), n});
}

size_t FullKvCache::bytes_used() const {
  size_t entries = 0;
  for (int64_t n : layer_len_) entries += static_cast<size_t>(n);
  return entries * static_cast<size_t>(shape_.n_kv_heads) * 2 * shape_.head_dim * sizeof(float);
}

void FullKvCache::clear() {
  std::fill(layer_len_.begin(), layer_len_.end(), 0);
  length_ = 0;
  for (auto& x : k_) x.clear();
  for (auto& x : v_) x.clear();
}

}  // namespace ekva
