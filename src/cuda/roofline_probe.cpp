#include "cuda/roofline_probe.h"

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "core/error.h"
#include "cuda/check.cuh"
#include "cuda/matmul.cuh"
#include "cuda/probe.cuh"

namespace ekva::cuda {

namespace {

// Median seconds of `runs` timed calls of fn (after one warm-up), with events on `stream`.
template <typename Fn>
std::vector<double> time_runs(cudaStream_t stream, int runs, Fn&& fn) {
  cudaEvent_t a = nullptr, b = nullptr;
  EKVA_CUDA_CHECK(cudaEventCreate(&a));
  EKVA_CUDA_CHECK(cudaEventCreate(&b));
  fn();
  std::vector<double> s;
  for (int r = 0; r < runs; ++r) {
    EKVA_CUDA_CHECK(cudaEventRecord(a, stream));
    fn();
    EKVA_CUDA_CHECK(cudaEventRecord(b, stream));
    EKVA_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    EKVA_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    s.push_back(ms * 1e-3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(s.begin(), s.end());
  return s;
}

double median(const std::vector<double>& v) { return v[v.size() / 2]; }

// The datasheet row whose name the device's contains ("NVIDIA H200" -> "h200"), the
// longest such name; nullptr when none does.
const DatasheetPart* datasheet_for(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  const DatasheetPart* best = nullptr;
  for (const DatasheetPart& p : datasheet_parts())
    if (name.find(p.name) != std::string::npos &&
        (best == nullptr || std::string_view(p.name).size() > std::string_view(best->name).size()))
      best = &p;
  return best;
}

}  // namespace

Ceilings probe_device(int device, int runs) {
  if (runs < 1) fail("roofline probe: --runs must be at least 1, got {}", runs);
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  if (device < 0 || device >= count)
    fail("roofline probe: device cuda:{}: {}", device,
         count == 0 ? std::string("no CUDA device is present")
                    : fmt::format("there are only {} CUDA device(s)", count));
  EKVA_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  EKVA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  Ceilings c;
  c.name = fmt::format("cuda:{}", device);
  c.device = device_description(device);
  c.source = "measured";
  c.memory_bytes = static_cast<double>(prop.totalGlobalMem);

  const ReadCeiling read = measure_read_ceiling(size_t{2} << 30, std::max(runs, 5));
  c.memory_gb_per_s = read.bytes_per_s / 1e9;

  cudaStream_t stream = nullptr;
  EKVA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // Copy: 1 GiB device to device; bytes moved = read + written.
  const size_t copy_bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  EKVA_CUDA_CHECK(cudaMalloc(&src, copy_bytes));
  EKVA_CUDA_CHECK(cudaMalloc(&dst, copy_bytes));
  EKVA_CUDA_CHECK(cudaMemsetAsync(src, 1, copy_bytes, stream));
  const auto copy_s = time_runs(stream, runs, [&] {
    EKVA_CUDA_CHECK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
  });
  const double copy_gb_per_s = 2.0 * static_cast<double>(copy_bytes) / median(copy_s) / 1e9;
  EKVA_CUDA_CHECK(cudaFree(dst));
  EKVA_CUDA_CHECK(cudaFree(src));

  // bf16 GEMM through cuBLAS at square sizes; the best size's median is the roof.
  cublasHandle_t blas = nullptr;
  EKVA_CUBLAS_CHECK(cublasCreate(&blas));
  EKVA_CUBLAS_CHECK(cublasSetStream(blas, stream));
  nlohmann::json gemm = nlohmann::json::array();
  double best = 0;
  for (const int n : {4096, 8192, 16384}) {
    void *a = nullptr, *b = nullptr, *y = nullptr;
    const auto nn = static_cast<size_t>(n) * static_cast<size_t>(n);
    EKVA_CUDA_CHECK(cudaMalloc(&a, nn * 2));
    EKVA_CUDA_CHECK(cudaMalloc(&b, nn * 2));
    EKVA_CUDA_CHECK(cudaMalloc(&y, nn * 4));
    EKVA_CUDA_CHECK(cudaMemsetAsync(a, 0x3c, nn * 2, stream));  // small finite bf16 values
    EKVA_CUDA_CHECK(cudaMemsetAsync(b, 0x3c, nn * 2, stream));
    const float alpha = 1.f, beta = 0.f;
    const auto s = time_runs(stream, runs, [&] {
      EKVA_CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a,
                                     CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta, y, CUDA_R_32F, n,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
    const double tflops = 2.0 * n * static_cast<double>(n) * n / median(s) / 1e12;
    gemm.push_back({{"n", n},
                    {"median_s", median(s)},
                    {"tflop_per_s", tflops},
                    {"range_tflop_per_s",
                     {2.0 * n * static_cast<double>(n) * n / s.back() / 1e12,
                      2.0 * n * static_cast<double>(n) * n / s.front() / 1e12}}});
    best = std::max(best, tflops);
    cudaFree(a);
    cudaFree(b);
    cudaFree(y);
  }
  cublasDestroy(blas);
  c.compute_gflop_per_s = best * 1e3;
  c.compute_kind = "bf16 tensor (cuBLAS, f32 accumulate), dense";

  // One small kernel: launch overhead (the read of one 16-byte vector, back to back).
  unsigned* sink = nullptr;
  void* tiny = nullptr;
  EKVA_CUDA_CHECK(cudaMalloc(&sink, 16));
  EKVA_CUDA_CHECK(cudaMalloc(&tiny, 256));
  constexpr int kLaunches = 1000;
  const auto launch_s = time_runs(stream, runs, [&] {
    for (int i = 0; i < kLaunches; ++i) launch_read(tiny, 16, sink, stream);
  });
  c.op_overhead_us = median(launch_s) / kLaunches * 1e6;
  cudaFree(sink);
  cudaFree(tiny);
  EKVA_CUDA_CHECK(cudaStreamDestroy(stream));

  c.measurements = {
      {"memory_read_gb_per_s",
       {{"median", c.memory_gb_per_s},
        {"range", {read.min_bytes_per_s / 1e9, read.max_bytes_per_s / 1e9}},
        {"bytes", read.bytes},
        {"runs", read.runs}}},
      {"copy_gb_per_s",
       {{"median", copy_gb_per_s},
        {"range",
         {2.0 * copy_bytes / copy_s.back() / 1e9, 2.0 * copy_bytes / copy_s.front() / 1e9}},
        {"bytes_copied", copy_bytes},
        {"counted", "read + written"},
        {"runs", runs}}},
      {"bf16_gemm", gemm},
      {"launch_overhead_us", c.op_overhead_us},
      {"sms", prop.multiProcessorCount},
  };
  if (const DatasheetPart* p = datasheet_for(prop.name)) {
    c.measurements["datasheet"] = {{"name", p->name},
                                   {"memory_gb_per_s", p->memory_gb_per_s},
                                   {"bf16_tflop_per_s", p->bf16_tflop_per_s}};
  }
  return c;
}

}  // namespace ekva::cuda
