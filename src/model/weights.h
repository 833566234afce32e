// The model's weights, bound by name from the checkpoint and checked against the
// config: every expected tensor present with the exact shape, a supported dtype,
// and no tensor left over that the architecture does not use. bf16 and f32 matrices
// are used in place from the map; f16 ones are widened to f32 once at load.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "ops/ops.h"

namespace ekva {

class Backend;

// A weight vector (a norm's weights, a projection's bias) in f32, in host memory or,
// once placed (PlacedWeights), in a backend's. Empty when the tensor is absent.
struct WeightVector {
  const float* ptr = nullptr;
  int64_t n = 0;

  const float* data() const { return ptr; }
  int64_t size() const { return n; }
  bool empty() const { return n == 0; }
  size_t nbytes() const { return static_cast<size_t>(n) * sizeof(float); }
};

// gate/up: [intermediate, hidden]; down: [hidden, intermediate] (SwiGLU).
struct MlpWeights {
  WeightMatrix gate, up, down;
};

// Multi-head latent attention (DeepSeek-V2/V3), laid out for the absorbed form. With
// rope_pairs the rope rows of q and kv_a_rope are reordered (even dims, then odd), so
// the rotate_half RoPE op rotates the pairs (2i, 2i + 1) the checkpoint means.
struct MlaWeights {
  WeightMatrix q_a;        // [q_lora_rank, hidden]; empty without a query LoRA
  WeightVector q_a_bias;   // [q_lora_rank] with attention_bias
  WeightVector q_a_norm;   // [q_lora_rank]
  WeightMatrix q_b;        // [n_heads * qk_head_dim, q_lora_rank or hidden] (q_proj)
  WeightMatrix kv_a_c;     // [kv_lora_rank, hidden]: rows of kv_a_proj_with_mqa
  WeightMatrix kv_a_rope;  // [qk_rope_head_dim, hidden]: its last rows
  WeightVector kv_a_c_bias, kv_a_rope_bias;  // with attention_bias
  WeightVector kv_a_norm;                    // [kv_lora_rank]
  // kv_b_proj [n_heads * (qk_nope + v_head), kv_lora_rank] per head: W_UK (its first
  // qk_nope rows) transposed, [kv_lora_rank, qk_nope], so that q_nope · W_UK c = (W_UK^T
  // q_nope) · c is a matmul; W_UV (its last v_head rows) as it is, [v_head, kv_lora_rank].
  std::vector<WeightMatrix> uk_t;  // [n_heads]
  std::vector<WeightMatrix> uv;    // [n_heads], views into kv_b_proj
};

struct LayerWeights {
  WeightVector input_norm;      // [hidden]
  WeightVector post_attn_norm;  // [hidden]
  WeightMatrix q, k, v, o;      // q: [q_dim, hidden], k/v: [kv_dim, hidden], o: [hidden, q_dim]
  WeightVector q_bias, k_bias, v_bias, o_bias;  // empty when absent
  WeightVector q_norm, k_norm;  // OLMoE: [q_dim], [kv_dim]; Qwen3-MoE: [head_dim] each
  // MoE layers
  WeightMatrix router;              // [n_experts, hidden]
  std::vector<MlpWeights> experts;  // [n_experts]
  std::optional<MlpWeights> shared_expert;
  WeightMatrix shared_expert_gate;  // [1, hidden] (Qwen2-MoE)
  WeightVector selection_bias;      // DeepSeek-V3 e_score_correction_bias [n_experts]
  std::optional<MlaWeights> mla;
  // Dense layers
  std::optional<MlpWeights> mlp;
};

struct ModelWeights {
  WeightMatrix embed;    // [vocab, hidden]
  WeightMatrix lm_head;  // [vocab, hidden]; the embedding when tied
  WeightVector final_norm;
  std::vector<LayerWeights> layers;
  // f32 copies of f16 matrices and of every vector; a deque so that pointers stay
  // valid as it grows, shared so that a copy of the weights (PlacedWeights) is cheap.
  std::shared_ptr<std::deque<std::vector<float>>> owned;
  // Reordered or transposed copies in the checkpoint's dtype (MLA), same reason.
  std::shared_ptr<std::deque<std::vector<std::byte>>> owned_bytes;

  static ModelWeights bind(const ModelConfig& config, const TensorStore& store);

  // Calls f(WeightMatrix&) and f(WeightVector&) for every tensor (the tied LM head
  // too: it shares the embedding's data pointer).
  template <typename F>
  void for_each(F&& f) {
    f(embed), f(lm_head), f(final_norm);
    const auto mlp = [&](MlpWeights& m) { f(m.gate), f(m.up), f(m.down); };
    for (LayerWeights& L : layers) {
      f(L.input_norm), f(L.post_attn_norm), f(L.q), f(L.k), f(L.v), f(L.o);
      f(L.q_bias), f(L.k_bias), f(L.v_bias), f(L.o_bias), f(L.q_norm), f(L.k_norm);
      f(L.router), f(L.shared_expert_gate);
      for (MlpWeights& e : L.experts) mlp(e);
      if (L.shared_expert) mlp(*L.shared_expert);
      if (L.mlp) mlp(*L.mlp);
      f(L.selection_bias);
      if (L.mla) {
        MlaWeights& a = *L.mla;
        f(a.q_a), f(a.q_a_bias), f(a.q_a_norm), f(a.q_b), f(a.kv_a_c), f(a.kv_a_rope);
        f(a.kv_a_c_bias), f(a.kv_a_rope_bias), f(a.kv_a_norm);
        for (WeightMatrix& m : a.uk_t) f(m);
        for (WeightMatrix& m : a.uv) f(m);
      }
    }
  }
};

// A model's weights copied into a backend's memory (a GPU's), each tensor once
// (tied ones share), for forward passes on backends of that memory domain.
struct PlacedWeights {
  int memory_domain = 0;
  ModelWeights weights;        // the same tensors, pointing at `buffers`
  WeightVector rope_inv_freq;  // [rotary dims / 2]
  size_t bytes = 0;            // device memory the tensors take
  std::vector<std::shared_ptr<void>> buffers;
};

// Copies `host` (and the RoPE frequencies) to `backend`'s memory. Throws naming the
// sizes when the backend cannot hold them.
std::unique_ptr<PlacedWeights> place_weights(const ModelWeights& host,
                                             std::span<const float> rope_inv_freq,
                                             Backend& backend);

}  // namespace ekva
