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
  WeightMatrix shared_expert_gate;  // [1, hidden]
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

  static ModelWeights bind(const ModelConfig& config, const TensorStore& store);
};

}  // namespace ekva
