// The model's weights, bound by name from the checkpoint and checked against the
// config: every expected tensor present with the exact shape, a supported dtype,
// and no tensor left over that the architecture does not use. bf16 and f32 matrices
// are used in place from the map; f16 ones are widened to f32 once at load.
#pragma once

#include <deque>
#include <optional>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"
#include "ops/ops.h"

namespace ekva {

// gate/up: [intermediate, hidden]; down: [hidden, intermediate] (SwiGLU).
struct MlpWeights {
  WeightMatrix gate, up, down;
};

// Multi-head latent attention (DeepSeek-V2/V3), laid out for the absorbed form. With
// rope_pairs the rope rows of q and kv_a_rope are reordered (even dims, then odd), so
// the rotate_half RoPE op rotates the pairs (2i, 2i + 1) the checkpoint means.
struct MlaWeights {
  WeightMatrix q_a;             // [q_lora_rank, hidden]; empty without a query LoRA
  std::vector<float> q_a_bias;  // [q_lora_rank] with attention_bias
  std::vector<float> q_a_norm;  // [q_lora_rank]
  WeightMatrix q_b;             // [n_heads * qk_head_dim, q_lora_rank or hidden] (q_proj)
  WeightMatrix kv_a_c;          // [kv_lora_rank, hidden]: rows of kv_a_proj_with_mqa
  WeightMatrix kv_a_rope;       // [qk_rope_head_dim, hidden]: its last rows
  std::vector<float> kv_a_c_bias, kv_a_rope_bias;  // with attention_bias
  std::vector<float> kv_a_norm;                    // [kv_lora_rank]
  // kv_b_proj [n_heads * (qk_nope + v_head), kv_lora_rank] per head: W_UK (its first
  // qk_nope rows) transposed, [kv_lora_rank, qk_nope], so that q_nope · W_UK c = (W_UK^T
  // q_nope) · c is a matmul; W_UV (its last v_head rows) as it is, [v_head, kv_lora_rank].
  std::vector<WeightMatrix> uk_t;  // [n_heads]
  std::vector<WeightMatrix> uv;    // [n_heads], views into kv_b_proj
};

struct LayerWeights {
  std::vector<float> input_norm;      // [hidden]
  std::vector<float> post_attn_norm;  // [hidden]
  WeightMatrix q, k, v, o;  // q: [q_dim, hidden], k/v: [kv_dim, hidden], o: [hidden, q_dim]
  std::vector<float> q_bias, k_bias, v_bias, o_bias;  // empty when absent
  std::vector<float> q_norm, k_norm;  // OLMoE: [q_dim], [kv_dim]; Qwen3-MoE: [head_dim] each
  // MoE layers
  WeightMatrix router;              // [n_experts, hidden]
  std::vector<MlpWeights> experts;  // [n_experts]
  std::optional<MlpWeights> shared_expert;
  WeightMatrix shared_expert_gate;    // [1, hidden] (Qwen2-MoE)
  std::vector<float> selection_bias;  // DeepSeek-V3 e_score_correction_bias [n_experts]
  std::optional<MlaWeights> mla;
  // Dense layers
  std::optional<MlpWeights> mlp;
};

struct ModelWeights {
  WeightMatrix embed;    // [vocab, hidden]
  WeightMatrix lm_head;  // [vocab, hidden]; the embedding when tied
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;
  // f32 copies of f16 tensors; deque so that pointers stay valid as it grows.
  std::deque<std::vector<float>> owned;
  // Reordered or transposed copies in the checkpoint's dtype (MLA), same reason.
  std::deque<std::vector<std::byte>> owned_bytes;

  static ModelWeights bind(const ModelConfig& config, const TensorStore& store);
};

}  // namespace ekva
