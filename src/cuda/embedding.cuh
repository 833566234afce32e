// Embedding lookup on the GPU: out[t] = table[tokens[t]] widened to f32.
#pragma once

#include <cuda_runtime.h>

#include "cuda/fault.cuh"
#include "ops/ops.h"

namespace ekva::cuda {

// The op of ops/ops.h with table, tokens and out in device memory. A token outside
// [0, table.rows) leaves its row of out untouched and is reported through `fault`
// (device), read by the caller at its next synchronize point.
void embedding(const EmbeddingParams& p, DeviceFault* fault, cudaStream_t stream);

}  // namespace ekva::cuda
