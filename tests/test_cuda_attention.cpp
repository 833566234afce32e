// The CUDA ragged attention against ref::attention (outputs and entry scores), per
// request against single-sequence runs, and replayed from a captured graph; the cases
// live in cuda_attention_check.cpp so that bench/cuda/ runs the same table without
// gtest. The GPU cases skip where there is no device; the shape checks run anywhere.
#include <gtest/gtest.h>

#include <ostream>

#include "cuda/check.cuh"
#include "cuda_attention_check.h"

namespace ekva {
namespace test {
// Case names, not bytes, in gtest's parameter listing.
void PrintTo(const CudaAttentionCase& c, std::ostream* os) { *os << c.name; }
}  // namespace test

namespace {

class CudaAttention : public ::testing::TestWithParam<test::CudaAttentionCase> {};

TEST_P(CudaAttention, MatchesReference) {
  if (cuda::device_count() == 0)
    GTEST_SKIP() << "no CUDA device: the CUDA attention cases need a GPU";
  const test::CudaAttentionResult r = test::run_cuda_attention_case(GetParam());
  EXPECT_TRUE(r.ok) << r.detail;
  EXPECT_LT(r.out_err, test::kCudaAttentionTolerance) << r.detail;
  EXPECT_LT(r.score_err, test::kCudaAttentionTolerance) << r.detail;
  EXPECT_LT(r.per_request_err, test::kCudaPerRequestTolerance) << r.detail;
  EXPECT_EQ(r.graph_diff, 0.0) << r.detail;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaAttention,
                         ::testing::ValuesIn(test::cuda_attention_cases(false)),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(CudaAttentionShapes, UnsupportedShapesThrowNamingTheValue) {
  EXPECT_EQ(test::check_cuda_attention_rejects(), "");
}

}  // namespace
}  // namespace ekva
