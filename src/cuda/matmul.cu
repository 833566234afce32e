#include <cuda_bf16.h>

#include <cstdint>
#include <string>

#include "cuda/check.cuh"
#include "cuda/matmul.cuh"

namespace ekva::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// out[i, c] = x[row(i), c] as T (bf16 rounded to nearest even, or f32 copied):
// [n_rows, cols], dense.
template <typename T>
__global__ void gather_kernel(const float* x, const int32_t* rows, int64_t n_rows, int64_t cols,
                              T* out) {
  const int64_t n = n_rows * cols;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = k / cols, c = k % cols;
    const float v = x[(rows != nullptr ? int64_t{rows[i]} : i) * cols + c];
    if constexpr (sizeof(T) == 2)
      out[k] = __float2bfloat16_rn(v);
    else
      out[k] = v;
  }
}

// y[i, r] = 0 for r < n_cols (an empty dot product), rows ldy apart.
__global__ void zero_rows_kernel(float* y, int64_t n_rows, int64_t n_cols, int64_t ldy) {
  const int64_t n = n_rows * n_cols;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * kThreads)
    y[(k / n_cols) * ldy + k % n_cols] = 0.f;
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

const char* cublas_status_name(int status) {
  switch (status) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "unknown cuBLAS status";
  }
}

}  // namespace

void check_cublas(int status, const char* what, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail_argument((std::string(what) + " failed: " + cublas_status_name(status) + " (" +
                   std::to_string(status) + ")")
                      .c_str(),
                  file, line);
}

size_t matmul_scratch_bytes(const MatmulParams& p) {
  if (p.n_rows <= 0 || p.w.cols <= 0) return 0;
  const auto elems = static_cast<size_t>(p.n_rows * p.w.cols);
  if (p.w.dtype == DType::kBF16) return elems * 2;
  return p.rows != nullptr ? elems * 4 : 0;
}

void matmul(const MatmulParams& p, cublasHandle_t handle, void* scratch, size_t scratch_bytes,
            cudaStream_t stream) {
  const WeightMatrix& w = p.w;
  EKVA_CUDA_REQUIRE(w.dtype == DType::kBF16 || w.dtype == DType::kF32,
                    "cuda::matmul: weights must be bf16 or f32");
  EKVA_CUDA_REQUIRE(p.n_rows >= 0 && w.rows >= 0 && w.cols >= 0, "cuda::matmul: negative size");
  EKVA_CUDA_REQUIRE(p.ldy >= w.rows, "cuda::matmul: ldy is smaller than the weight's rows");
  EKVA_CUDA_REQUIRE(p.x_stride() == w.cols,
                    "cuda::matmul: strided x rows (ldx, MLA) run on the CPU backend only so far");
  // cuBLAS takes int sizes and leading dimensions.
  EKVA_CUDA_REQUIRE(
      p.n_rows <= 0x7fffffff && w.rows <= 0x7fffffff && w.cols <= 0x7fffffff && p.ldy <= 0x7fffffff,
      "cuda::matmul: a size exceeds cuBLAS's int range");
  if (p.n_rows == 0 || w.rows == 0) return;
  if (w.cols == 0) {  // an empty sum: y = 0, as ref::matmul writes it
    zero_rows_kernel<<<blocks_for(p.n_rows * w.rows), kThreads, 0, stream>>>(p.y, p.n_rows, w.rows,
                                                                             p.ldy);
    EKVA_CUDA_CHECK_LAUNCH();
    return;
  }
  EKVA_CUDA_REQUIRE(scratch_bytes >= matmul_scratch_bytes(p),
                    "cuda::matmul: scratch smaller than matmul_scratch_bytes()");
  const bool bf16 = w.dtype == DType::kBF16;
  const void* x = p.x;
  if (bf16) {
    gather_kernel<__nv_bfloat16><<<blocks_for(p.n_rows * w.cols), kThreads, 0, stream>>>(
        p.x, p.rows, p.n_rows, w.cols, static_cast<__nv_bfloat16*>(scratch));
    EKVA_CUDA_CHECK_LAUNCH();
    x = scratch;
  } else if (p.rows != nullptr) {
    gather_kernel<float><<<blocks_for(p.n_rows * w.cols), kThreads, 0, stream>>>(
        p.x, p.rows, p.n_rows, w.cols, static_cast<float*>(scratch));
    EKVA_CUDA_CHECK_LAUNCH();
    x = scratch;
  }
  // Row-major y [n_rows, ldy] = x [n_rows, cols] . w^T is, column-major, y^T [rows x
  // n_rows] (ld ldy) = op_T(w as a [cols x rows] column-major matrix, ld cols) x (x^T
  // as a [cols x n_rows] column-major matrix, ld cols). Only the first w.rows of each
  // y row are written: the padding up to ldy stays as it was.
  // f32 weights: the pedantic compute type, so no TF32 whatever the math mode or
  // NVIDIA_TF32_OVERRIDE says.
  const float alpha = 1.f, beta = 0.f;
  const auto R = static_cast<int>(w.rows), N = static_cast<int>(p.n_rows),
             K = static_cast<int>(w.cols), ldy = static_cast<int>(p.ldy);
  const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  EKVA_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, R, N, K, &alpha, w.data, type, K,
                                 x, type, K, &beta, p.y, CUDA_R_32F, ldy,
                                 bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC,
                                 CUBLAS_GEMM_DEFAULT));
}

}  // namespace ekva::cuda
