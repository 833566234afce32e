// The device full cache's append (cuda/device_kv_cache.h): the forward pass's f32 K/V
// rows [n, H, D] into rows len .. len + n of each head's [capacity, row_width] arrays
// (row_width >= D; the columns past D are left as they are: zero), in bf16 (round to
// nearest even) or f32.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace ekva::cuda {

void kv_append(const float* k, const float* v, void* k_dst, void* v_dst, bool bf16, int64_t n,
               int64_t n_kv_heads, int64_t head_dim, int64_t row_width, int64_t capacity,
               int64_t len, cudaStream_t stream);

}  // namespace ekva::cuda
