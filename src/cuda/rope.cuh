// Rotary position embedding on the GPU (Hugging Face's rotate_half convention).
#pragma once

#include <cuda_runtime.h>

#include "ops/ops.h"

namespace ekva::cuda {

// The op of ops/ops.h with x, positions and inv_freq in device memory.
void rope(const RopeParams& p, cudaStream_t stream);

}  // namespace ekva::cuda
