// The budget planner: from a model's config, a device's ceilings, a context length,
// a batch and a time-per-output-token target, the KV budget that meets the target,
// the memory it takes, the predicted decode throughput and the largest batch that
// fits. A decode step is predicted op by op with the cost model of ops/ops.h (each
// op's params built for the step's shapes, cost() called on them): each op takes
// the least time its roofs allow, max(bytes / bandwidth, FLOPs / compute rate), plus
// the device's fixed cost per op call. Where the ceilings carry the engine's kernel
// rates at the model's shapes (Ceilings::kernels), a matmul's compute rate is the
// measured one at its token count and attention reads K/V no faster than measured.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "model/config.h"
#include "roofline/hardware.h"

namespace ekva {

struct StepPrediction {
  double seconds = 0;           // the step: roof time of every op plus the overheads
  double roof_seconds = 0;      // without the overheads
  double overhead_seconds = 0;  // op calls x the device's fixed cost per call
  double bytes = 0;
  double flops = 0;
  double weight_bytes = 0;     // weights read (every matrix once; the experts routed to)
  double kv_bytes = 0;         // K, V and positions read by attention
  double memory_gb_per_s = 0;  // the bandwidth used: the cache's when the step fits in it
  double experts_touched = 0;  // per MoE layer, expected
  int64_t op_calls = 0;
  bool kernel_rates = false;  // the ceilings' kernel rates bounded matmul and attention
};

// Decode step of `batch` sequences, each attending over `kept` entries per (layer,
// kv-head). Routing is taken as uniform and independent across tokens: a MoE layer
// touches E (1 - (1 - k/E)^batch) experts on average, with batch k / touched tokens
// each. The step runs from the last-level cache when its bytes fit in the effective
// cache the probe found (Ceilings::cache_bytes) and the ceilings have its read rate;
// otherwise from memory.
StepPrediction predict_decode_step(const ModelConfig& model, DType weight_dtype,
                                   const Ceilings& ceilings, int64_t batch, double kept,
                                   DType kv_dtype);

struct PlanRequest {
  int64_t context = 0;  // tokens per sequence
  int64_t batch = 1;
  double tpot_ms = 0;  // time-per-output-token target (each step gives every sequence one);
                       // 0: none, `budget` is planned
  double budget = 1;   // without a target: the fraction of the context kept (1: full cache)
  DType weight_dtype = DType::kBF16;
  DType kv_dtype = DType::kBF16;
  double memory_fraction = 0.9;  // of the device's memory for weights and KV
  // Entries a compressed cache never evicts, per (layer, kv-head): 4 attention sinks and
  // the 32-token recent window (kv/compressed_cache.h defaults).
  int64_t protected_entries = 36;
};

struct Plan {
  PlanRequest request;
  std::string hardware;        // the ceilings' name and source
  int64_t kept = 0;            // KV entries kept per (sequence, layer, kv-head)
  double budget_fraction = 0;  // kept / context
  bool full_cache_meets_target = false;
  double weight_bytes = 0;  // all weights, held once
  double kv_bytes_per_sequence = 0;
  double memory_bytes = 0;      // weights + batch x KV
  double memory_available = 0;  // memory_fraction x the device's
  bool fits = false;
  StepPrediction step;
  double tokens_per_second = 0;  // batch / step
  int64_t max_batch_memory = 0;  // the largest batch whose KV fits at this budget
  int64_t max_batch_target = 0;  // the largest that also meets the target (0: no target)
  std::vector<std::string> notes;

  nlohmann::json to_json() const;
};

// Throws ekva::Error when the target cannot be met even with only the protected
// entries kept, or the request is malformed.
Plan plan_decode(const ModelConfig& model, const Ceilings& ceilings, const PlanRequest& request);

// Bytes of every weight of the model, held once (tied embeddings counted once).
double model_weight_bytes(const ModelConfig& model, DType weight_dtype);

}  // namespace ekva
