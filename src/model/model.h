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
#include "model/activations.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace ekva {

class Backend;

// Bytes one forward call had to read: the weights it touched (each matrix once,
// the routed experts only) and the KV entries attention visited.
struct ForwardCounters {
  size_t weight_bytes = 0;
  size_t kv_bytes = 0;
};

// Optional per-call hooks, for debugging, calibration and tests. `tensor` sees
// every named intermediate ("attn_norm", "q", "k", "v", "attn_out", "ffn_norm",
// "router_logits", "ffn_out", "hidden") as a [n_tokens, width] f32 array, all
// tokens of the batch in batch order.
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

// One sequence's part of a forward call: its next tokens (a prefill chunk or one
// decode token), at positions cache->length(), cache->length() + 1, ...
struct SequenceStep {
  KvCache* cache = nullptr;
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits of every token of the step, else of the last only
  // A prefill chunk with more of the prompt to come: the cache sees the entries and
  // tags but neither the queries nor the end of the call, so a compressing cache
  // scores and compresses once, after the prompt's last chunk, as if whole.
  bool prompt_continues = false;
};

// The op-site names (OpSite::name, ops/backend.h) of the four ops of a SwiGLU FFN.
struct FfnSiteNames {
  const char* gate;
  const char* up;
  const char* act;
  const char* down;
};

class Model {
 public:
  // Reads DIR/config.json and the safetensors checkpoint; validates everything.
  static std::unique_ptr<Model> load(const std::filesystem::path& dir);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const TensorStore& tensors() const { return store_; }
  // Copies the weights into `backend`'s memory, once per memory domain, so that
  // forward() can run on it (and on every backend of that domain: a profiling
  // decorator of it too); a host backend needs none. The backend must outlive the
  // model. Throws when the weights do not fit, naming the sizes.
  void place(Backend& backend);
  // The weights forward() reads on a backend of `memory_domain`.
  const ModelWeights& weights_for(int memory_domain) const;

  // Bytes of weights a single-token step reads on average: everything except the
  // experts not routed to, assuming top_k of n_experts (plus one embedding row).
  size_t active_weight_bytes_per_token() const;

  // Runs one step of a batch of sequences, each with its own KV cache (appended
  // to) and position. Every weight matrix is read once per call: the tokens of all
  // sequences form the rows of one GEMM, and MoE tokens are grouped per expert
  // across the batch. Logits land in act.logits, rows act.logit_begin[i] ..
  // act.logit_begin[i + 1] for batch entry i. Bad input (empty steps, a batch or
  // step over act.limits, token ids, positions past the context) throws.
  ForwardCounters forward(std::span<const SequenceStep> batch, Activations& act, Backend& backend,
                          const ForwardObserver* observer = nullptr) const;

  // One sequence, whole: runs `tokens` in steps of at most max_step tokens (0: all
  // at once) with activations of its own, and copies the logits of every token
  // (all_logits) or of the last one to `logits` [n_out, vocab]. For tools and tests;
  // serving keeps Activations across calls (runtime/).
  ForwardCounters forward(std::span<const int32_t> tokens, KvCache& cache,
                          std::vector<float>& logits, bool all_logits, Backend& backend,
                          const ForwardObserver* observer = nullptr, int64_t max_step = 0) const;

 private:
  Model() = default;
  struct Step;
  struct LayerOps;  // one layer's observer, op sites and projections (model.cpp)
  void attention_block(int layer, const Step& s, Activations& a, Backend& backend,
                       ForwardCounters& counters) const;
  void mla_block(int layer, const Step& s, Activations& a, Backend& backend,
                 ForwardCounters& counters) const;
  void moe_block(int layer, const Step& s, Activations& a, Backend& backend,
                 ForwardCounters& counters) const;
  void swiglu(const MlpWeights& m, const FfnSiteNames& names, int layer, int expert, const float* x,
              const int32_t* rows, int64_t n_rows, float* out, Activations& a, Backend& backend,
              ForwardCounters& counters) const;

  ModelConfig config_;
  TensorStore store_;
  ModelWeights weights_;
  std::vector<float> rope_inv_freq_;                    // [rope_dim / 2]
  std::vector<std::unique_ptr<PlacedWeights>> placed_;  // one per device memory domain
};

}  // namespace ekva
