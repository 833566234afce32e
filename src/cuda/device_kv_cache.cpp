#include <numeric>

#include "core/error.h"
#include "cuda/attention.cuh"
#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/device_kv_cache.h"
#include "cuda/kv_append.cuh"

namespace ekva::cuda {

DeviceFullKvCache::DeviceFullKvCache(CudaBackend& backend, KvShape shape, int64_t capacity,
                                     DType kv_dtype)
    : backend_(backend),
      shape_(shape),
      capacity_(capacity),
      dtype_(kv_dtype),
      layer_len_(static_cast<size_t>(shape.n_layers), 0) {
  EKVA_CHECK(capacity > 0, "KV cache capacity must be positive, got {}", capacity);
  if (shape.keys_only())
    fail("KV cache (device): keys-only (MLA) layers are not on the GPU yet; use --device cpu");
  row_width_ = attention_padded_head_dim(shape.head_dim);
  if (row_width_ == 0)
    fail("KV cache (device): head_dim {} is not supported by the CUDA attention (at most 128)",
         shape.head_dim);
  if (kv_dtype != DType::kBF16)
    fail(
        "KV cache (device): K/V are stored in bf16 on the GPU (the CUDA attention reads bf16), "
        "not {}; use --kv-dtype bf16",
        dtype_name(kv_dtype));
  const size_t heads = static_cast<size_t>(shape.n_layers) * static_cast<size_t>(shape.n_kv_heads);
  reserved_ = 2 * heads * head_bytes() + static_cast<size_t>(capacity) * sizeof(int32_t);
  try {
    k_ = backend_.allocate(heads * head_bytes());
    v_ = backend_.allocate(heads * head_bytes());
    positions_ = static_cast<int32_t*>(backend_.allocate(static_cast<size_t>(capacity) * 4));
  } catch (const Error& e) {
    backend_.release(k_);
    backend_.release(v_);
    fail(
        "KV cache: {} tokens of {} layers x {} kv-heads x {} dims ({:.1f} MiB) do not fit on "
        "the device: {}",
        capacity, shape.n_layers, shape.n_kv_heads, shape.head_dim, reserved_ / 1048576.0,
        e.what());
  }
  if (row_width_ != shape.head_dim) {  // the padding columns stay zero
    backend_.fill_zero(k_, heads * head_bytes());
    backend_.fill_zero(v_, heads * head_bytes());
  }
  std::vector<int32_t> iota(static_cast<size_t>(capacity));
  std::iota(iota.begin(), iota.end(), 0);
  backend_.upload(positions_, iota.data(), iota.size() * sizeof(int32_t));
}

DeviceFullKvCache::~DeviceFullKvCache() {
  try {
    backend_.release(k_);
    backend_.release(v_);
    backend_.release(positions_);
  } catch (...) {  // a sticky device error was the last synchronize()'s to report
  }
}

size_t DeviceFullKvCache::head_bytes() const {
  return static_cast<size_t>(capacity_) * static_cast<size_t>(row_width_) * dtype_size(dtype_);
}

int DeviceFullKvCache::memory_domain() const { return backend_.memory_domain(); }

void DeviceFullKvCache::append(int layer, std::span<const int32_t> positions, const float* k,
                               const float* v) {
  EKVA_CHECK(layer >= 0 && layer < shape_.n_layers, "KV cache: layer {} out of range", layer);
  const auto n = static_cast<int64_t>(positions.size());
  if (n == 0) return;
  int64_t& len = layer_len_[static_cast<size_t>(layer)];
  if (len + n > capacity_)
    fail("KV cache: {} tokens exceed the context of {} tokens", len + n, capacity_);
  // Entry i holds token i: the positions array is 0, 1, 2, ... once for all layers.
  for (int64_t t = 0; t < n; ++t)
    if (positions[static_cast<size_t>(t)] != len + t)
      fail(
          "KV cache (device, full): entry {} of layer {} would be at position {}; the full "
          "cache keeps every token in order",
          len + t, layer, positions[static_cast<size_t>(t)]);
  const int64_t H = shape_.n_kv_heads, D = shape_.head_dim;
  const size_t offset = static_cast<size_t>(layer) * static_cast<size_t>(H) * head_bytes();
  kv_append(k, v, static_cast<std::byte*>(k_) + offset, static_cast<std::byte*>(v_) + offset,
            dtype_ == DType::kBF16, n, H, D, row_width_, capacity_, len, backend_.stream());
  len += n;
  if (layer == 0) length_ = std::max(length_, len);
}

void DeviceFullKvCache::view(int layer, int kv_head, std::vector<KvChunk>& out) const {
  const int64_t n = layer_len_[static_cast<size_t>(layer)];
  if (n == 0) return;
  const size_t offset =
      (static_cast<size_t>(layer) * static_cast<size_t>(shape_.n_kv_heads) + kv_head) *
      head_bytes();
  out.push_back({static_cast<const std::byte*>(k_) + offset,
                 static_cast<const std::byte*>(v_) + offset, positions_, n, dtype_});
}

size_t DeviceFullKvCache::bytes_used() const {
  size_t entries = 0;
  for (int64_t n : layer_len_) entries += static_cast<size_t>(n);
  return entries * static_cast<size_t>(shape_.n_kv_heads) * 2 * static_cast<size_t>(row_width_) *
         dtype_size(dtype_);
}

void DeviceFullKvCache::clear() {
  std::fill(layer_len_.begin(), layer_len_.end(), 0);
  length_ = 0;
}

}  // namespace ekva::cuda
