// What the engine's sessions and schedulers share: the model, its tokenizer, the
// backend the forward pass runs on, the context per sequence, and how each
// sequence's KV cache is built.
#pragma once

#include <memory>
#include <optional>

#include "cpu/cpu_backend.h"
#include "kv/compressed_cache.h"
#include "kv/kv_cache.h"
#include "kv/profile.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "ops/profiling_backend.h"
#include "runtime/devices.h"

namespace ekva {

struct Runtime {
  // The GPU the forward pass runs on, when the device is not the CPU: the model's
  // weights are placed on it and every KV cache lives in its memory. First, so that
  // it outlives the weights and caches it holds.
  DeviceSpec device;
  std::unique_ptr<Backend> gpu;
  // Where compressed stores keep their K/V on the GPU (compression->memory).
  std::unique_ptr<KvArenaMemory> gpu_kv_memory;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<CpuBackend> cpu;
  // In front of the cpu or the gpu when the engine profiles its ops
  // (EngineOptions::profile_ops; on a GPU its timer is CUDA events).
  std::unique_ptr<ProfilingBackend> profiler;
  int64_t context = 0;          // tokens per sequence
  int64_t max_step_tokens = 0;  // tokens per forward call
  std::optional<CalibrationProfile> profile;
  std::optional<CompressionConfig> compression;  // none: the full cache
  // K/V element type of every cache, full or compressed (compression->kv_dtype too).
  DType kv_dtype = DType::kBF16;

  // What the forward pass runs on: the profiler when there is one, else the GPU's
  // backend or the CPU's.
  Backend& backend() const;
  // Steps of the profile (no-ops without a profiler): the forward calls between them
  // count towards `phase` ("decode", "prefill", "mixed").
  void begin_profile_step(std::string_view phase, std::span<const SequenceStep> batch) const;
  void end_profile_step() const;

  // A KV cache for one sequence of at most `capacity` tokens: the full cache, or
  // a compressed one in `store` (shared by a scheduler's sequences) or in a store
  // of its own when store == nullptr.
  std::unique_ptr<KvCache> make_cache(int64_t capacity, PagedKvStore* store) const;
  // The store layout the compression config needs, for sequences of the context.
  StoreConfig store_config() const;
  // K/V bytes an uncompressed cache of n tokens holds, in kv_dtype.
  size_t full_kv_bytes(int64_t n_tokens) const;
  // Checks a prompt before it joins anything: not empty, ids in the vocabulary,
  // room for at least one more token in the context.
  void check_prompt(std::span<const int32_t> ids) const;
};

}  // namespace ekva
