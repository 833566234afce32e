#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/check.cuh"
#include "cuda/probe.cuh"

namespace ekva::cuda {

namespace {

__global__ void read_kernel(const uint4* p, size_t n, unsigned* sink) {
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
                d = __ldcs(p + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^
           d.w;
  }
  for (; i < n; i += stride) {
    const uint4 a = __ldcs(p + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

__global__ void fill_kernel(uint32_t* p, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    p[i] = static_cast<uint32_t>(i * 2654435761u);
}

int sm_count() {
  int device = 0, sms = 0;
  EKVA_CUDA_CHECK(cudaGetDevice(&device));
  EKVA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

}  // namespace

void launch_read(const void* p, size_t bytes, unsigned* sink, cudaStream_t stream) {
  static const int sms = sm_count();
  read_kernel<<<static_cast<unsigned>(sms) * 4, 1024, 0, stream>>>(static_cast<const uint4*>(p),
                                                                   bytes / 16, sink);
  EKVA_CUDA_CHECK_LAUNCH();
}

ReadCeiling measure_read_ceiling(size_t bytes, int runs) {
  EKVA_CUDA_REQUIRE(bytes >= 16 && bytes % 16 == 0 && runs > 0,
                    "measure_read_ceiling: bytes must be a positive multiple of 16");
  void* buf = nullptr;
  unsigned* sink = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  EKVA_CUDA_CHECK(cudaMalloc(&buf, bytes));
  EKVA_CUDA_CHECK(cudaMalloc(&sink, sizeof(unsigned)));
  EKVA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  EKVA_CUDA_CHECK(cudaEventCreate(&start));
  EKVA_CUDA_CHECK(cudaEventCreate(&stop));
  fill_kernel<<<1024, 256, 0, stream>>>(static_cast<uint32_t*>(buf), bytes / 4);
  EKVA_CUDA_CHECK_LAUNCH();
  launch_read(buf, bytes, sink, stream);  // warm-up
  std::vector<double> rates;
  for (int r = 0; r < runs; ++r) {
    EKVA_CUDA_CHECK(cudaEventRecord(start, stream));
    launch_read(buf, bytes, sink, stream);
    EKVA_CUDA_CHECK(cudaEventRecord(stop, stream));
    EKVA_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    EKVA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    rates.push_back(static_cast<double>(bytes) / (ms * 1e-3));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  cudaFree(sink);
  cudaFree(buf);
  std::sort(rates.begin(), rates.end());
  return {rates[rates.size() / 2], rates.front(), rates.back(), bytes, runs};
}

}  // namespace ekva::cuda
