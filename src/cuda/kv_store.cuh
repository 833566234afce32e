// Kernels of the device KV arena (cuda/device_kv_arena.h): the queued entry writes
// and byte copies of a store whose blocks live in device memory, each batch one or
// two launches from a table in device memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace ekva::cuda {

// One queued entry write: the forward pass's f32 K/V rows (head_dim wide) into bf16
// rows `width` wide (zero past head_dim), its position into the block's position
// cell and 0 into its score slot.
struct KvWriteItem {
  uint16_t* k;
  uint16_t* v;
  int32_t* position;
  float* score;
  const float* src_k;
  const float* src_v;
  int32_t value;
};

// One queued byte copy (4-byte aligned, a multiple of 4 bytes), through a staging
// buffer at `staging` bytes from its start.
struct KvCopyItem {
  const std::byte* src;
  std::byte* dst;  // nullptr: stage only (a read to the host)
  uint64_t bytes;
  uint64_t staging;
};

// items: device [n] (the table).
void kv_write_rows(const KvWriteItem* items, int64_t n, int64_t head_dim, int64_t width,
                   cudaStream_t stream);
// Every item's src into staging (gather), then, when scatter, staging into every dst:
// the result of running the copies one after the other whenever no copy reads what an
// earlier one of the batch wrote (the caller flushes before one that would).
void kv_copy_bytes(const KvCopyItem* items, int64_t n, std::byte* staging, bool scatter,
                   cudaStream_t stream);

}  // namespace ekva::cuda
