#include <cuda_runtime.h>

#include <fmt/format.h>

#include "core/error.h"
#include "cuda/check.cuh"

namespace ekva::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_description(int device) {
  cudaDeviceProp prop{};
  EKVA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", prop.name, prop.major, prop.minor,
                     prop.multiProcessorCount,
                     static_cast<double>(prop.totalGlobalMem) / (1 << 30));
}

void check(int status, const char* what, const char* file, int line) {
  if (status != cudaSuccess)
    fail("{}:{}: {} failed: {} ({})", file, line, what,
         cudaGetErrorString(static_cast<cudaError_t>(status)),
         cudaGetErrorName(static_cast<cudaError_t>(status)));
}

void fail_argument(const char* message, const char* file, int line) {
  fail("{}:{}: {}", file, line, message);
}

}  // namespace ekva::cuda
