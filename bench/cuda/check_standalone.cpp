// src/cuda/check.cpp without fmt, for the standalone CUDA build (bench/cuda/).
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "cuda/check.cuh"
#include "ekva/error.h"

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
  char gib[32];
  std::snprintf(gib, sizeof(gib), "%.1f", static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) + " SMs, " +
         gib + " GiB)";
}

void check(int status, const char* what, const char* file, int line) {
  if (status != cudaSuccess)
    throw Error(std::string(file) + ":" + std::to_string(line) + ": " + what +
                " failed: " + cudaGetErrorString(static_cast<cudaError_t>(status)) + " (" +
                cudaGetErrorName(static_cast<cudaError_t>(status)) + ")");
}

void fail_argument(const char* message, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + message);
}

}  // namespace ekva::cuda
