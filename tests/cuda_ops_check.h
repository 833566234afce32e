// Every op of the CUDA backend (cuda::CudaBackend) against a reference backend on the
// host, on random inputs of odd shapes (never all-zero): one table of cases, run by the
// gtest suite (test_cuda_ops.cpp, against the CPU backend) and by the standalone checker
// of bench/cuda/ (ekva_cuda_ops_check, against ref:: behind the Backend interface; it
// builds with the CUDA toolkit only). Needs a CUDA device.
//
// Tolerances are norm-wise relative errors (||gpu - ref|| / ||ref||), per metric:
//   exact (0): embedding, add, add_bias, clamp, the router's expert choices;
//   1e-6: f32 arithmetic against double or against another f32 order (rmsnorm's f32 sum
//         of squares, expf against std::exp, fused multiply-adds): a few ulps;
//   matmul with bf16 weights: x is rounded to bf16 on the device (unit roundoff 2^-9,
//         an rms relative error of about 1.1e-3 on a dot product of random terms), so
//         8e-3 against the unrounded reference, and 2e-5 (f32 accumulation order only)
//         against the reference run on the same bf16-rounded x;
//   matmul with f32 weights: f32 accumulation over up to 1k terms in another order, 1e-5;
//   attention: the tensor-core kernel's TF32 rounding of q and p (cuda_attention_check.h),
//         1e-3.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "ops/backend.h"

namespace ekva::test {

struct CudaOpsMetric {
  std::string name;
  double value = 0;
  double tolerance = 0;  // passes when value <= tolerance (NaN never does)
};

struct CudaOpsCase {
  std::string name;    // op and shape
  std::string op;      // "matmul", "route", ...
  bool small = false;  // in the compute-sanitizer set
  std::function<std::vector<CudaOpsMetric>(cuda::CudaBackend& gpu, Backend& reference)> run;
  // Non-empty: runs only against the backend of this name (the router's f32 ties under
  // underflow are the CPU backend's; ref:: ranks in double), else it is skipped.
  std::string reference_only;
};

struct CudaOpsResult {
  bool ok = false;
  bool skipped = false;  // reference_only did not match (ok stays true)
  std::vector<CudaOpsMetric> metrics;
  std::string detail;  // one line: the metrics, or what threw
};

std::vector<CudaOpsCase> cuda_ops_cases();
// Runs the case; an exception from the GPU side is a failure with its message.
CudaOpsResult run_cuda_ops_case(const CudaOpsCase& c, cuda::CudaBackend& gpu, Backend& reference);

}  // namespace ekva::test
