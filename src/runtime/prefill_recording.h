// A prefill recorded for replay: the K, V, queries and expert tags that one
// forward call showed its KV cache, layer by layer. Replaying it into another cache
// makes exactly the calls Model::forward makes (per layer append, observe_queries,
// tag, end_layer; then end_forward), so many cache configurations can be compared after one
// prefill.
#pragma once

#include <span>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model.h"
#include "ops/backend.h"

namespace ekva {

struct PrefillRecording {
  std::vector<int32_t> positions;          // [T]
  std::vector<std::vector<float>> q;       // [layer][T * n_heads * head_dim], RoPE applied
  std::vector<std::vector<float>> k, v;    // [layer][T * n_kv_heads * head_dim]
  std::vector<std::vector<int32_t>> top1;  // [layer][T]; empty for dense layers
  std::vector<float> last_logits;          // [vocab]

  // Prefills `tokens` from position 0 with a full cache that stores K/V in kv_dtype
  // (what the prefill's own attention reads) and records it.
  static PrefillRecording record(const Model& model, std::span<const int32_t> tokens,
                                 Backend& backend, DType kv_dtype = DType::kF32);
  void replay(KvCache& cache) const;
};

}  // namespace ekva
