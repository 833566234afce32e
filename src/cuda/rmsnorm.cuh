// RMSNorm on the GPU: out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "ops/ops.h"

namespace ekva::cuda {

// The op of ops/ops.h with x, weight and out in device memory.
void rmsnorm(const ekva::RmsNormParams& p, cudaStream_t stream);

}  // namespace ekva::cuda
