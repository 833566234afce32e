// Scalar reference for matmul: double accumulation, no blocking, no threads.
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"

namespace ekva::ref {

void matmul(const MatmulParams& p) {
  const WeightMatrix& w = p.w;
  EKVA_CHECK(w.dtype == DType::kBF16 || w.dtype == DType::kF32, "ref::matmul: dtype {}",
             dtype_name(w.dtype));
  for (int64_t i = 0; i < p.n_rows; ++i) {
    const float* x = p.x + (p.rows != nullptr ? int64_t{p.rows[i]} : i) * p.x_stride();
    for (int64_t r = 0; r < w.rows; ++r) {
      double sum = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        float wv;
        if (w.dtype == DType::kBF16) {
          uint16_t h;
          std::memcpy(&h, w.row(r) + c * 2, 2);
          wv = bf16_to_f32(h);
        } else {
          std::memcpy(&wv, w.row(r) + c * 4, 4);
        }
        sum += double{wv} * x[c];
      }
      p.y[i * p.ldy + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace ekva::ref
