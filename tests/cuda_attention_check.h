// The CUDA ragged attention against ref::attention on random ragged problems: one
// table of cases, run by the gtest suite (test_cuda_attention.cpp) and by the
// standalone checker of bench/cuda/ (which builds without gtest, fmt or the library).
// Needs a CUDA device; uses only the CUDA runtime, ops/, the plan and the reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ekva::test {

// Tolerances, norm-wise relative (||gpu - ref|| / ||ref||). Both sides read the same
// stored bf16 K/V, so the difference is the GPU's arithmetic against the reference's
// double: the tensor cores take q (scaled by scale * log2 e) and the softmax weights p
// rounded to TF32 (unit roundoff 2^-11 = 4.9e-4; K/V widen exactly), accumulate in
// fp32, and the partials merge by log-sum-exp in fp32. Rounding errors of q and p are
// independent across the dot product's terms and the entries, so the output's error
// is a fraction of a TF32 ulp: 1e-4 to 3e-4 on these cases (tools/cuda_emu). 1e-3
// leaves a factor of three for peaked softmaxes where one large logit amplifies its
// rounding.
constexpr double kCudaAttentionTolerance = 1e-3;
// A batched run against single-sequence runs: the same arithmetic cut differently by
// the planner, so a weight is rounded to TF32 relative to another running maximum and
// sums run in another order: at most one TF32 ulp (5e-4) apart.
constexpr double kCudaPerRequestTolerance = 5e-4;

struct CudaAttentionCase {
  std::string name;
  int64_t head_dim = 128;
  int64_t n_kv_heads = 8;
  int64_t group = 4;                     // query heads per kv-head
  std::vector<int64_t> queries_per_seq;  // one entry per sequence
  int64_t window = 0;
  bool scored = false;
  int64_t block = 0;      // most entries per chunk (0: one chunk per expert segment)
  int64_t huge = 4000;    // the largest list length the distribution draws
  int64_t min_tasks = 0;  // plan options; 0: cuda::attention_plan_options
  int64_t min_item_entries = 0;
  uint64_t seed = 1;
};

struct CudaAttentionResult {
  bool ok = false;
  double out_err = 0, score_err = 0, per_request_err = 0, graph_diff = 0;
  int64_t entries = 0, items = 0, tasks = 0;
  std::string detail;  // what failed, or a summary line
};

// The table; `small` keeps the short cases (for compute-sanitizer runs).
std::vector<CudaAttentionCase> cuda_attention_cases(bool small);
CudaAttentionResult run_cuda_attention_case(const CudaAttentionCase& c);
// Unsupported shapes and dtypes must throw ekva::Error naming the value; needs no
// GPU (the checks run before any CUDA call). Returns "" when all behave, else why not.
std::string check_cuda_attention_rejects();

}  // namespace ekva::test
