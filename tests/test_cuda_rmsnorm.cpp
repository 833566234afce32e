// The CUDA RMSNorm against the scalar reference; skipped where there is no GPU.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include "cuda/check.cuh"
#include "cuda/rmsnorm.cuh"
#include "ops/ops.h"
#include "test_util.h"

namespace ekva {
namespace {

TEST(CudaRmsNorm, MatchesCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (const auto& [rows, width] : {std::pair<int64_t, int64_t>{1, 17}, {7, 4096}, {33, 1023}}) {
    const auto x = test::random_floats(static_cast<size_t>(rows * width), 1);
    const auto w = test::random_floats(static_cast<size_t>(width), 2);
    std::vector<float> ref(x.size()), out(x.size(), NAN);
    ref::rmsnorm({x.data(), w.data(), rows, width, 1e-6f, ref.data()});
    float *dx, *dw, *dout;
    EKVA_CUDA_CHECK(cudaMalloc(&dx, x.size() * 4));
    EKVA_CUDA_CHECK(cudaMalloc(&dw, w.size() * 4));
    EKVA_CUDA_CHECK(cudaMalloc(&dout, x.size() * 4));
    EKVA_CUDA_CHECK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    EKVA_CUDA_CHECK(cudaMemcpy(dw, w.data(), w.size() * 4, cudaMemcpyHostToDevice));
    EKVA_CUDA_CHECK(cudaMemset(dout, 0xff, x.size() * 4));  // NaN poison
    cuda::rmsnorm({dx, dw, rows, width, 1e-6f, dout}, nullptr);
    EKVA_CUDA_CHECK(cudaMemcpy(out.data(), dout, x.size() * 4, cudaMemcpyDeviceToHost));
    EXPECT_LT(test::rel_error(out.data(), ref.data(), out.size()), 1e-6) << rows << "x" << width;
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(dout);
  }
}

}  // namespace
}  // namespace ekva
