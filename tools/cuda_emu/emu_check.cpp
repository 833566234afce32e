// ekva::cuda checks for tools/cuda_emu (no CUDA runtime behind them).
#include <cuda_runtime.h>
#include <string>
#include "cuda/check.cuh"
#include "ekva/error.h"
namespace ekva::cuda {
int device_count() { return 1; }
std::string device_description(int) { return "host emulation"; }
void check(int status, const char* what, const char* file, int line) {
  if (status != 0) throw Error(std::string(file) + ":" + std::to_string(line) + ": " + what);
}
void fail_argument(const char* message, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + message);
}
}  // namespace ekva::cuda
