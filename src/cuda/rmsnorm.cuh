// RMSNorm on the GPU: out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace ekva::cuda {

struct RmsNormParams {
  const float* x = nullptr;       // [n_rows, width], device
  const float* weight = nullptr;  // [width], device
  float* out = nullptr;           // [n_rows, width], device; may alias x
  int64_t n_rows = 0;
  int64_t width = 0;
  float eps = 1e-6f;
};

void rmsnorm(const RmsNormParams& p, cudaStream_t stream);

}  // namespace ekva::cuda
