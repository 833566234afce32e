// Fake CUDA runtime for tools/cuda_emu: runs the kernels of src/cuda/ as host
// threads (one per CUDA thread) on machines without a GPU. Verification only.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct int4 {
  int x, y, z, w;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
struct dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

typedef int cudaError_t;
constexpr int cudaSuccess = 0;
typedef void* cudaStream_t;
typedef void* cudaGraph_t;
typedef void* cudaGraphExec_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal };

inline int min(int a, int b) { return a < b ? a : b; }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
namespace emu {
struct Block {
  std::unique_ptr<std::barrier<>> block_barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barrier;
  std::vector<float> xchg;
  std::vector<uint64_t> xchg64;  // [threads, 8]: the lanes' operands of a warp-wide instruction
  std::vector<unsigned char> smem;
};
inline Block* g_block = nullptr;
inline std::mutex atomic_mutex;
}  // namespace emu
inline void __syncthreads() { emu::g_block->block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int off) {
  const unsigned t = threadIdx.x;
  auto& b = *emu::g_block->warp_barrier[t / 32];
  emu::g_block->xchg[t] = v;
  b.arrive_and_wait();
  const float r = emu::g_block->xchg[t ^ static_cast<unsigned>(off)];
  b.arrive_and_wait();
  return r;
}
// ldmatrix .x4 (PTX semantics): lane l gives the address of row l % 8 of matrix l / 8;
// of matrix i it gets row l / 4, columns 2 (l % 4) and + 1 (transposed: rows 2 (l % 4)
// and + 1 of column l / 4), the first in the low half of r<i>.
inline void emu_ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                            const uint16_t* row, bool trans) {
  const unsigned t = threadIdx.x, lane = t % 32, base = t - lane;
  auto& b = *emu::g_block->warp_barrier[t / 32];
  auto& x = emu::g_block->xchg64;
  x[t * 8] = reinterpret_cast<uint64_t>(row);
  b.arrive_and_wait();
  uint32_t r[4];
  for (unsigned i = 0; i < 4; ++i) {
    uint32_t e[2];
    for (unsigned j = 0; j < 2; ++j) {
      const unsigned rr = trans ? (lane % 4) * 2 + j : lane / 4;
      const unsigned cc = trans ? lane / 4 : (lane % 4) * 2 + j;
      e[j] = reinterpret_cast<const uint16_t*>(x[(base + 8 * i + rr) * 8])[cc];
    }
    r[i] = e[0] | (e[1] << 16);
  }
  b.arrive_and_wait();
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
// mma.sync.m16n8k8 .tf32 (PTX fragment layout; the MMA reads the operands' top 19 bits).
inline void emu_mma_tf32(float& c0, float& c1, float& c2, float& c3, uint32_t a0, uint32_t a1,
                         uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  const unsigned t = threadIdx.x, lane = t % 32, base = t - lane;
  auto& b = *emu::g_block->warp_barrier[t / 32];
  auto& x = emu::g_block->xchg64;
  const uint32_t mine[6] = {a0, a1, a2, a3, b0, b1};
  for (int i = 0; i < 6; ++i) x[t * 8 + i] = mine[i];
  b.arrive_and_wait();
  const auto tf32 = [](uint64_t bits) {
    return __uint_as_float(static_cast<unsigned>(bits) & 0xffffe000u);
  };
  const auto A = [&](unsigned row,
                     unsigned k) {  // a0 (g, t) a1 (g + 8, t) a2 (g, t + 4) a3 (g + 8, t + 4)
    return tf32(x[(base + (row % 8) * 4 + k % 4) * 8 + (row >= 8) + 2 * (k >= 4)]);
  };
  const auto B = [&](unsigned k, unsigned n) {  // b0 (t, g) b1 (t + 4, g)
    return tf32(x[(base + n * 4 + k % 4) * 8 + 4 + (k >= 4)]);
  };
  float* c[4] = {&c0, &c1, &c2, &c3};
  float sum[4];
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = lane / 4 + (i >= 2 ? 8 : 0), col = (lane % 4) * 2 + (i & 1);
    double acc = 0;
    for (unsigned k = 0; k < 8; ++k) acc += double{A(row, k)} * double{B(k, col)};
    sum[i] = static_cast<float>(acc);
  }
  b.arrive_and_wait();
  for (unsigned i = 0; i < 4; ++i) *c[i] += sum[i];
}
// cvt.rna.tf32.f32: round to nearest, ties away from zero, on the top 19 bits.
inline uint32_t emu_to_tf32(float v) {
  const unsigned u = __float_as_uint(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, nan
  return (u + 0x1000u) & 0xffffe000u;
}
inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex);
  const float old = *p;
  *p += v;
  return old;
}

template <typename Kernel, typename Params>
void emu_launch(Kernel kernel, unsigned grid, unsigned threads, size_t smem_bytes,
                const Params& p) {
  for (unsigned b = 0; b < grid; ++b) {
    emu::Block blk;
    blk.block_barrier = std::make_unique<std::barrier<>>(threads);
    for (unsigned w = 0; w < (threads + 31) / 32; ++w)
      blk.warp_barrier.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
    blk.xchg.assign(threads, 0.f);
    blk.xchg64.assign(size_t{threads} * 8, 0);
    blk.smem.assign(smem_bytes + 16, 0xff);  // NaN poison: reading unwritten smem shows
    emu::g_block = &blk;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        threadIdx.x = t;
        blockIdx.x = b;
        blockDim.x = threads;
        gridDim.x = grid;
        kernel(p);
      });
    for (auto& t : ts) t.join();
  }
}
inline unsigned char* emu_smem() { return emu::g_block->smem.data(); }

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 132;
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* d, int v, size_t n) {
  std::memset(d, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
  std::memset(d, v, n);
  return cudaSuccess;
}
constexpr int cudaErrorMemoryAllocation = 2;
namespace emu {
// What cudaMalloc handed out, so that cudaPointerGetAttributes can tell device memory.
inline std::mutex alloc_mutex;
inline std::vector<std::pair<uintptr_t, size_t>> allocations;
}  // namespace emu
template <typename T>
inline cudaError_t cudaMalloc(T** p, size_t n) {
  *p = static_cast<T*>(std::aligned_alloc(256, (n + 255) / 256 * 256));
  if (*p == nullptr) return cudaErrorMemoryAllocation;
  std::lock_guard<std::mutex> g(emu::alloc_mutex);
  emu::allocations.emplace_back(reinterpret_cast<uintptr_t>(*p), n);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  {
    std::lock_guard<std::mutex> g(emu::alloc_mutex);
    auto& a = emu::allocations;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].first == reinterpret_cast<uintptr_t>(p)) {
        a.erase(a.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
  }
  std::free(p);
  return cudaSuccess;
}
enum cudaMemoryType { cudaMemoryTypeUnregistered, cudaMemoryTypeHost, cudaMemoryTypeDevice };
struct cudaPointerAttributes {
  cudaMemoryType type = cudaMemoryTypeUnregistered;
};
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  std::lock_guard<std::mutex> g(emu::alloc_mutex);
  attr->type = cudaMemoryTypeUnregistered;
  const auto u = reinterpret_cast<uintptr_t>(p);
  for (const auto& [base, n] : emu::allocations)
    if (u >= base && u < base + std::max<size_t>(n, 1)) attr->type = cudaMemoryTypeDevice;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaErrorMemoryAllocation ? "out of memory" : "emulated error";
}
inline const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation" : "cudaErrorUnknown";
}
inline int atomicCAS(int* p, int compare, int value) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex);
  const int old = *p;
  if (old == compare) *p = value;
  return old;
}
// Kernels of any signature (the ops' launches pass several arguments).
template <typename Kernel, typename... Args>
void emu_launch_args(Kernel kernel, unsigned grid, unsigned threads, size_t smem_bytes,
                     const Args&... args) {
  struct Pack {};
  emu_launch([&](const Pack&) { kernel(args...); }, grid, threads, smem_bytes, Pack{});
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// "Capture" runs the launches at once; the graph replays nothing.
inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* g) {
  *g = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t, unsigned long long) {
  *e = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return cudaSuccess; }
inline cudaError_t cudaGraphDestroy(cudaGraph_t) { return cudaSuccess; }
