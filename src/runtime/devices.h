// Which machine a forward pass runs on: "cpu" or a GPU ("cuda", "cuda:N"). The GPU
// backends live in their own library (ekva_cuda, built where nvcc is found), which
// registers what it provides here at program start (the `ekva` CLI does it in main),
// so the runtime names no device and a build without CUDA still links.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/dtype.h"
#include "kv/kv_arena.h"
#include "kv/kv_cache.h"
#include "ops/backend.h"
#include "ops/profiling_backend.h"
#include "roofline/hardware.h"

namespace ekva {

// What a GPU library provides: its backend for a device index, the full KV cache that
// lives in that backend's memory, and the memory the compressed store's arena keeps
// its blocks in there.
struct DeviceSupport {
  std::function<int()> device_count;
  std::function<std::unique_ptr<Backend>(int device)> make_backend;
  std::function<std::unique_ptr<KvCache>(Backend& backend, KvShape shape, int64_t capacity,
                                         DType kv_dtype)>
      make_full_cache;
  std::function<std::unique_ptr<KvArenaMemory>(Backend& backend)> make_arena_memory;
  // The device's measured ceilings (`ekva roofline probe --device`), `runs` per figure.
  std::function<Ceilings(int device, int runs)> probe;
  // The op profile's timer for ops queued on `backend` (CUDA events on its stream).
  std::function<std::unique_ptr<OpTimer>(Backend& backend)> make_op_timer;
};

void register_device_support(std::string_view kind, DeviceSupport support);

struct DeviceSpec {
  std::string kind = "cpu";  // "cpu" or "cuda"
  int index = 0;

  // "cpu", "cuda", "cuda:N"; anything else throws naming the choices.
  static DeviceSpec parse(std::string_view text);
  bool is_cpu() const { return kind == "cpu"; }
  std::string str() const;
};

// The backend of a GPU spec; throws when this build has no such backend or the
// machine no such device (naming what there is).
std::unique_ptr<Backend> open_device_backend(const DeviceSpec& spec);
// A full KV cache in the memory of `backend` (a GPU backend of `spec`).
std::unique_ptr<KvCache> make_device_full_cache(const DeviceSpec& spec, Backend& backend,
                                                KvShape shape, int64_t capacity, DType kv_dtype);
// A timer for the op profile of ops on that GPU's backend.
std::unique_ptr<OpTimer> make_device_op_timer(const DeviceSpec& spec, Backend& backend);
// The GPU's ceilings measured on it (read, copy, bf16 matrix rate, launch cost).
Ceilings probe_device_ceilings(const DeviceSpec& spec, int runs);
// The memory a compressed store's arena keeps its K/V in on that GPU.
std::unique_ptr<KvArenaMemory> make_device_arena_memory(const DeviceSpec& spec, Backend& backend);

}  // namespace ekva
