// The full KV cache in a GPU's memory: every entry kept, K/V in bf16,
// contiguous per (layer, kv-head) as FullKvCache lays them out on the host, so a
// view is one chunk of device pointers that the CUDA attention reads directly.
// append() converts the forward pass's f32 K/V rows on the backend's stream. The
// whole capacity is allocated at construction (a GPU serving a context reserves it),
// and positions are one device array shared by every layer (entries are never
// evicted, so entry i of a layer is the sequence's token i). A head dim the CUDA
// attention lacks is stored zero-padded to the one it computes with
// (attention_padded_head_dim: 64 or 128), and bytes_used() counts what is stored.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/dtype.h"
#include "kv/kv_cache.h"

namespace ekva::cuda {

class CudaBackend;

class DeviceFullKvCache final : public KvCache {
 public:
  // Throws when the device cannot hold `capacity` tokens (naming the bytes).
  DeviceFullKvCache(CudaBackend& backend, KvShape shape, int64_t capacity,
                    DType kv_dtype = DType::kBF16);  // bf16 only (the attention's)
  ~DeviceFullKvCache() override;
  DeviceFullKvCache(const DeviceFullKvCache&) = delete;
  DeviceFullKvCache& operator=(const DeviceFullKvCache&) = delete;

  // k and v: device [n_tokens, n_kv_heads, head_dim] f32 (the forward pass's).
  void append(int layer, std::span<const int32_t> positions, const float* k,
              const float* v) override;
  void view(int layer, int kv_head, std::vector<KvChunk>& out) const override;
  int64_t length() const override { return length_; }
  // The K/V bytes of the entries held (the reservation is capacity() tokens).
  size_t bytes_used() const override;
  void clear() override;
  int memory_domain() const override;

  int64_t capacity() const { return capacity_; }
  size_t reserved_bytes() const { return reserved_; }

 private:
  size_t head_bytes() const;  // one (layer, kv-head)'s K (or V) for capacity entries

  CudaBackend& backend_;
  KvShape shape_;
  int64_t capacity_;
  int64_t row_width_ = 0;  // head_dim, or the padded dim the CUDA attention computes with
  DType dtype_;
  int64_t length_ = 0;
  std::vector<int64_t> layer_len_;  // [n_layers]
  void* k_ = nullptr;               // [n_layers * n_kv_heads][capacity, head_dim]
  void* v_ = nullptr;
  int32_t* positions_ = nullptr;  // [capacity]: 0, 1, 2, ...
  size_t reserved_ = 0;
};

}  // namespace ekva::cuda
