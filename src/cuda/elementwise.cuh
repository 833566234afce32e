// Element-wise and row-wise ops of the forward pass on the GPU: biases, clamping,
// residual adds, SwiGLU's silu(gate) * up, and the MoE scatter and gated adds. Each
// is one memory-bound pass; the arithmetic is the CPU backend's (cpu/elementwise.cpp),
// in f32, so results agree with it to an ulp or two (expf against std::exp).
#pragma once

#include <cuda_runtime.h>

#include "ops/ops.h"

namespace ekva::cuda {

// The ops of ops/ops.h with every pointer in device memory (ScatterAddParams::rows
// too). All are asynchronous on `stream`.
void add_bias(const AddBiasParams& p, cudaStream_t stream);
void clamp(const ClampParams& p, cudaStream_t stream);
void add(const AddParams& p, cudaStream_t stream);
void silu_mul(const SiluMulParams& p, cudaStream_t stream);
void scatter_add(const ScatterAddParams& p, cudaStream_t stream);
void gated_add(const GatedAddParams& p, cudaStream_t stream);
// dst[r, :dst_width] = src[r, :src_width] for n_rows rows, the columns past src_width
// zero (padding) or dropped (dst_width < src_width): attention's padded head dims.
void copy_rows(const float* src, int64_t src_width, float* dst, int64_t dst_width, int64_t n_rows,
               cudaStream_t stream);
// A strided 2D copy (cudaMemcpy2DAsync) on the stream.
void copy_rows(const CopyRowsParams& p, cudaStream_t stream);

}  // namespace ekva::cuda
