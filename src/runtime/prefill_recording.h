// A prefill recorded for replay: the K, V, queries and expert tags that one
// forward call showed its KV cache, layer by layer. Replaying it into another cache
// makes exactly the calls Model::forward makes (per layer append, observe_queries,
// tag, end_layer; then end_forward), so many cache configurations can be compared after one
// prefill. A prefix of the recording replays as the prefill of that prefix would
// (causal attention: the first n tokens' K, V and queries do not depend on the rest).
#pragma once

#include <span>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model.h"
#include "ops/backend.h"

namespace ekva {

struct RecordOptions {
  // Also record what every query's attention gave every entry (the scores of H2O,
  // which would otherwise cost each replay a pass of attention over all queries).
  bool all_query_scores = false;
  // With all_query_scores: also those of the first `split` tokens' queries alone,
  // for a replay of that prefix (0: none).
  int64_t split = 0;
};

struct PrefillRecording {
  std::vector<int32_t> positions;          // [T]
  std::vector<std::vector<float>> q;       // [layer][T * n_heads * head_dim], RoPE applied
  std::vector<std::vector<float>> k, v;    // [layer][T * n_kv_heads * head_dim]
  std::vector<std::vector<int32_t>> top1;  // [layer][T]; empty for dense layers
  std::vector<float> last_logits;          // [vocab]
  int n_kv_heads = 0;
  // [layer][kv_head * n + i]: attention probability of entry i from the queries of
  // the first n tokens, summed over each GQA group (n = T; n = split). Empty when
  // not recorded.
  std::vector<std::vector<float>> scores, split_scores;
  int64_t split = 0;

  // Prefills `tokens` from position 0 with a full cache that stores K/V in kv_dtype
  // (what the prefill's own attention reads) and records it.
  static PrefillRecording record(const Model& model, std::span<const int32_t> tokens,
                                 Backend& backend, DType kv_dtype = DType::kF32,
                                 RecordOptions options = {});
  int64_t size() const { return static_cast<int64_t>(positions.size()); }
  // Replays the first n tokens (-1: all) as one forward call.
  void replay(KvCache& cache, int64_t n = -1) const;
};

}  // namespace ekva
