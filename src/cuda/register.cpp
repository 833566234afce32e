#include "cuda/register.h"

#include "core/error.h"
#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/device_kv_arena.h"
#include "cuda/device_kv_cache.h"
#include "cuda/event_timer.h"
#include "cuda/roofline_probe.h"
#include "runtime/devices.h"

namespace ekva::cuda {

namespace {
CudaBackend& cuda_backend(Backend& backend) {
  auto* gpu = dynamic_cast<CudaBackend*>(&backend);
  EKVA_CHECK(gpu != nullptr, "device KV memory needs the cuda backend, not {}", backend.name());
  return *gpu;
}
}  // namespace

void register_cuda() {
  register_device_support(
      "cuda", {.device_count = [] { return device_count(); },
               .make_backend = [](int device) -> std::unique_ptr<Backend> {
                 return std::make_unique<CudaBackend>(device);
               },
               .make_full_cache = [](Backend& backend, KvShape shape, int64_t capacity,
                                     DType kv_dtype) -> std::unique_ptr<KvCache> {
                 return std::make_unique<DeviceFullKvCache>(cuda_backend(backend), shape, capacity,
                                                            kv_dtype);
               },
               .make_arena_memory = [](Backend& backend) -> std::unique_ptr<KvArenaMemory> {
                 return std::make_unique<DeviceKvArenaMemory>(cuda_backend(backend));
               },
               .probe = [](int device, int runs) { return probe_device(device, runs); },
               .make_op_timer = [](Backend& backend) -> std::unique_ptr<OpTimer> {
                 return std::make_unique<EventOpTimer>(cuda_backend(backend));
               }});
}

}  // namespace ekva::cuda
