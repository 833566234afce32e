// A loaded checkpoint and its forward pass. The model is immutable after load and
// can serve many sequences; each sequence brings its own KvCache.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace ekva {

class ThreadPool;

// Bytes one forward call had to read: the weights it touched (each matrix once,
// the routed experts only) and the KV entries attention visited.
struct ForwardCounters {
  size_t weight_bytes = 0;
  size_t kv_bytes = 0;
};

// Optional per-call hooks, for debugging, calibration and tests. `tensor` sees
// every named intermediate ("attn_norm", "q", "k", "v", "attn_out", "ffn_norm",
// "router_logits", "ffn_out", "hidden") as a [n_tokens, width] f32 array.
struct ForwardObserver {
  std::function<void(std::string_view name, int layer, const float* data, int64_t n_tokens,
                     int64_t width)>
      tensor;
  // Router decisions of a MoE layer: expert ids [n_tokens, top_k] (rank order) and
  // their weights after the architecture's renormalisation rule.
  std::function<void(int layer, const int32_t* experts, const float* weights, int64_t n_tokens,
                     int top_k)>
      routing;
};

class Model {
 public:
  // Reads DIR/config.json and the safetensors checkpoint; validates everything.
  static std::unique_ptr<Model> load(const std::filesystem::path& dir);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const TensorStore& tensors() const { return store_; }
  // Bytes of weights a single-token step reads on average: everything except the
  // experts not routed to, assuming top_k of n_experts (plus one embedding row).
  size_t active_weight_bytes_per_token() const;

  // Runs `tokens` at positions cache.length(), cache.length() + 1, ... through the
  // model, appending their KV to `cache`. Writes logits [n_out, vocab] to `logits`:
  // every token's when all_logits, else only the last token's.
  ForwardCounters forward(std::span<const int32_t> tokens, KvCache& cache, std::vector<float>& logits,
                          bool all_logits, ThreadPool& pool,
                          const ForwardObserver* observer = nullptr) const;

 private:
  Model() = default;
  struct Scratch;
  void attention_block(int layer, Scratch& s, KvCache& cache, ThreadPool& pool,
                       const ForwardObserver* observer, ForwardCounters& counters) const;
  void moe_block(int layer, Scratch& s, KvCache& cache, ThreadPool& pool,
                 const ForwardObserver* observer, ForwardCounters& counters) const;

  ModelConfig config_;
  TensorStore store_;
  ModelWeights weights_;
  std::vector<float> rope_inv_freq_;  // [head_dim / 2]
};

}  // namespace ekva
