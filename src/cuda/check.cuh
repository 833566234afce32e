// CUDA error checks and device queries, host side only.
#pragma once

#include <string>

namespace ekva::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no GPU (never throws),
// so tests can skip cleanly on machines without one.
int device_count();
// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)".
std::string device_description(int device);

// Throws ekva::Error naming the call site when `status` is not cudaSuccess.
void check(int status, const char* what, const char* file, int line);
// Throws ekva::Error for a bad argument of a host entry point. (Host code in .cu
// files reports through these two, compiled by the C++ compiler: fmt's consteval
// format strings do not pass nvcc's front end.)
[[noreturn]] void fail_argument(const char* message, const char* file, int line);

}  // namespace ekva::cuda

#define EKVA_CUDA_CHECK(call) ::ekva::cuda::check(static_cast<int>(call), #call, __FILE__, __LINE__)
// After every kernel launch: catches bad launch configurations at once.
#define EKVA_CUDA_CHECK_LAUNCH() EKVA_CUDA_CHECK(cudaGetLastError())
#define EKVA_CUDA_REQUIRE(cond, message)                                   \
  do {                                                                     \
    if (!(cond)) ::ekva::cuda::fail_argument(message, __FILE__, __LINE__); \
  } while (0)
