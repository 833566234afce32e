#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kv/kv_cache.h"

namespace ekva {

FullKvCache::FullKvCache(KvShape shape, int64_t capacity, DType kv_dtype)
    : shape_(shape),
      capacity_(capacity),
      layer_len_(static_cast<size_t>(shape.n_layers), 0),
      positions_(static_cast<size_t>(capacity)),
      dtype_(kv_dtype),
      k_(static_cast<size_t>(shape.n_layers * shape.n_kv_heads)),
      v_(static_cast<size_t>(shape.n_layers * shape.n_kv_heads)) {
  EKVA_CHECK(capacity > 0, "KV cache capacity must be positive, got {}", capacity);
  if (kv_dtype != DType::kF32 && kv_dtype != DType::kBF16)
    fail("KV cache: K/V are stored in f32 or bf16, not {}", dtype_name(kv_dtype));
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
  const size_t row_bytes = static_cast<size_t>(D) * dtype_size(dtype_);
  // One row of D f32 values into the stored dtype.
  const auto store_row = [&](std::byte* dst, const float* src) {
    if (dtype_ == DType::kF32) {
      std::memcpy(dst, src, row_bytes);
    } else {
      auto* out = reinterpret_cast<uint16_t*>(dst);
      for (int64_t d = 0; d < D; ++d) out[d] = f32_to_bf16(src[d]);
    }
  };
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    auto& kh = k_[static_cast<size_t>(layer * shape_.n_kv_heads + h)];
    auto& vh = v_[static_cast<size_t>(layer * shape_.n_kv_heads + h)];
    kh.resize(static_cast<size_t>(len + n) * row_bytes);
    if (!shape_.keys_only()) vh.resize(static_cast<size_t>(len + n) * row_bytes);
    for (int64_t t = 0; t < n; ++t) {
      const size_t src = static_cast<size_t>((t * shape_.n_kv_heads + h) * D);
      store_row(&kh[static_cast<size_t>(len + t) * row_bytes], k + src);
      if (!shape_.keys_only()) store_row(&vh[static_cast<size_t>(len + t) * row_bytes], v + src);
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
  // Keys only (MLA): the values are read from the key rows, v == k.
  if (n > 0)
    out.push_back(
        {kh.data(), shape_.keys_only() ? kh.data() : vh.data(), positions_.data(), n, dtype_});
}

size_t FullKvCache::bytes_used() const {
  size_t entries = 0;
  for (int64_t n : layer_len_) entries += static_cast<size_t>(n);
  return entries * static_cast<size_t>(shape_.n_kv_heads) * (shape_.keys_only() ? 1 : 2) *
         static_cast<size_t>(shape_.head_dim) * dtype_size(dtype_);
}

void FullKvCache::clear() {
  std::fill(layer_len_.begin(), layer_len_.end(), 0);
  length_ = 0;
  for (auto& x : k_) x.clear();
  for (auto& x : v_) x.clear();
}

}  // namespace ekva
