// matmul (SIMD, threaded) against the scalar reference on odd shapes, bf16 and f32.
#include <gtest/gtest.h>

#include "core/thread_pool.h"
#include "cpu/kernels.h"
#include "test_util.h"

namespace ekva {
namespace {

struct Shape {
  int64_t tokens, rows, cols;
};

class MatmulTest : public ::testing::TestWithParam<std::tuple<Shape, DType, int>> {};

TEST_P(MatmulTest, MatchesReference) {
  const auto [shape, dtype, threads] = GetParam();
  ThreadPool pool(threads);
  const auto x = test::random_floats(static_cast<size_t>(shape.tokens * shape.cols), 1);
  std::vector<float> wf;
  std::vector<uint16_t> wb;
  WeightMatrix w{dtype, shape.rows, shape.cols, nullptr};
  if (dtype == DType::kBF16) {
    wb = test::random_bf16(static_cast<size_t>(shape.rows * shape.cols), 2, 0.1f);
    w.data = wb.data();
  } else {
    wf = test::random_floats(static_cast<size_t>(shape.rows * shape.cols), 2, 0.1f);
    w.data = wf.data();
  }
  // Output rows padded (ldy > rows) and poisoned: every element must be written,
  // nothing past the row.
  const int64_t ldy = shape.rows + 3;
  std::vector<float> y(static_cast<size_t>(shape.tokens * ldy), NAN);
  std::vector<float> y_ref(y.size(), NAN);
  cpu::matmul({x.data(), shape.tokens, nullptr, w, y.data(), ldy}, pool);
  ref::matmul({x.data(), shape.tokens, nullptr, w, y_ref.data(), ldy});
  for (int64_t t = 0; t < shape.tokens; ++t) {
    const size_t off = static_cast<size_t>(t * ldy);
    EXPECT_LT(test::rel_error(&y[off], &y_ref[off], static_cast<size_t>(shape.rows)), 1e-6)
        << "token " << t;
    for (int64_t r = shape.rows; r < ldy; ++r)
      EXPECT_TRUE(std::isnan(y[off + static_cast<size_t>(r)]));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulTest,
    ::testing::Combine(::testing::Values(Shape{1, 17, 97}, Shape{1, 1023, 64}, Shape{3, 97, 17},
                                         Shape{5, 64, 1023}, Shape{17, 33, 129}, Shape{8, 256, 512},
                                         Shape{2, 31, 1000}, Shape{4, 19, 129}),
                       ::testing::Values(DType::kBF16, DType::kF32), ::testing::Values(1, 2, 3)));

TEST(MatmulRows, GathersTheNamedRows) {
  ThreadPool pool(2);
  const int64_t T = 9, R = 37, C = 61;
  const auto x = test::random_floats(static_cast<size_t>(T * C), 3);
  const auto wb = test::random_bf16(static_cast<size_t>(R * C), 4, 0.1f);
  const WeightMatrix w{DType::kBF16, R, C, wb.data()};
  const std::vector<int32_t> rows = {8, 0, 3, 3};
  std::vector<float> y(rows.size() * R), y_ref(static_cast<size_t>(R));
  cpu::matmul({x.data(), static_cast<int64_t>(rows.size()), rows.data(), w, y.data(), R}, pool);
  for (size_t i = 0; i < rows.size(); ++i) {
    ref::matmul({&x[static_cast<size_t>(rows[i] * C)], 1, nullptr, w, y_ref.data(), R});
    EXPECT_LT(test::rel_error(&y[i * R], y_ref.data(), R), 1e-6);
  }
}

}  // namespace
}  // namespace ekva
