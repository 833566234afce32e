// Matmul on the GPU through cuBLAS: y[i, r] = sum_c x[row(i), c] * w[r, c].
//
// bf16 weights: the (gathered) x rows are rounded to bf16 (nearest even) into a
// scratch buffer, then one bf16 x bf16 GEMM with f32 accumulation and f32 output (the
// tensor-core path; products of bf16 values are exact in f32). f32 weights: a plain
// f32 GEMM (no TF32), on x itself, or on the gathered rows when `rows` is set.
#pragma once

#include <cstddef>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ops/ops.h"

namespace ekva::cuda {

// Scratch bytes matmul() needs for this call (0 when x is used in place).
size_t matmul_scratch_bytes(const MatmulParams& p);

// The op of ops/ops.h with x, rows, w.data and y in device memory; `scratch` is device
// memory of at least matmul_scratch_bytes(p), 16-byte aligned. `handle` must be bound
// to `stream` (cublasSetStream) by the caller.
void matmul(const MatmulParams& p, cublasHandle_t handle, void* scratch, size_t scratch_bytes,
            cudaStream_t stream);

// Throws ekva::Error naming the call site when `status` is not CUBLAS_STATUS_SUCCESS.
void check_cublas(int status, const char* what, const char* file, int line);

}  // namespace ekva::cuda

#define EKVA_CUBLAS_CHECK(call) \
  ::ekva::cuda::check_cublas(static_cast<int>(call), #call, __FILE__, __LINE__)
