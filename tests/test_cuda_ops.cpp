// Every op of the CUDA backend against the CPU backend (tests/cuda_ops_check.cpp's
// table, which bench/cuda/ also runs standalone against ref::); skipped where there is
// no GPU.
#include <gtest/gtest.h>

#include <ostream>

#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda_ops_check.h"
#include "test_util.h"

namespace ekva {
namespace test {
void PrintTo(const CudaOpsCase& c, std::ostream* os) { *os << c.name; }
}  // namespace test

namespace {

// One backend for all cases (its cuBLAS handle and scratch are worth reusing), never
// destroyed: a static destructor could run after the CUDA runtime has torn down.
cuda::CudaBackend& gpu() {
  static auto* backend = new cuda::CudaBackend(0);
  return *backend;
}

class CudaOps : public ::testing::TestWithParam<test::CudaOpsCase> {};

TEST_P(CudaOps, MatchesCpuBackend) {
  if (cuda::device_count() == 0)
    GTEST_SKIP() << "no CUDA device: the CUDA backend's op cases need a GPU";
  const test::CudaOpsResult r = test::run_cuda_ops_case(GetParam(), gpu(), test::cpu());
  EXPECT_TRUE(r.ok) << r.detail;
  EXPECT_FALSE(r.skipped) << r.detail;
  for (const test::CudaOpsMetric& m : r.metrics)
    EXPECT_LE(m.value, m.tolerance) << m.name << " in " << r.detail;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaOps, ::testing::ValuesIn(test::cuda_ops_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(CudaBackendNoDevice, ConstructionNamesTheMissingDevice) {
  const int n = cuda::device_count();
  test::expect_error([&] { cuda::CudaBackend backend(n); },
                     {"no CUDA device " + std::to_string(n)});
}

}  // namespace
}  // namespace ekva
