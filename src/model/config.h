// config.json of a Hugging Face checkpoint, read into one struct and validated
// before any weight is touched: every field the forward pass uses is present, in
// range and consistent with the others; anything missing or contradictory is an
// error naming config.json and the field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/dtype.h"
#include "kv/model_shape.h"
#include "ops/ops.h"

namespace ekva {

enum class Architecture {
  kMixtral,
  kQwen2Moe,
  kQwen3Moe,
  kOlmoe,
  kMistral,
  kLlama,
  kDeepseekV2,
  kDeepseekV3
};

// Where the RMSNorms of q and k sit, after the projections and before RoPE.
enum class QkNorm {
  kNone,
  kWholeProjection,  // OLMoE: over all of q ([q_dim]) and k ([kv_dim]), before the head split
  kPerHead,          // Qwen3-MoE: over each head of q and k, one [head_dim] weight for all heads
};

// How a MoE layer's router turns logits into expert weights (RouteParams in ops/ops.h
// carries the same fields to the route op). Mixtral, Qwen and OLMoE: a softmax over all
// experts, the top-k, renormalised or not. DeepSeek-V2: softmax, the top-k of all
// experts (greedy) or of the best top_groups groups by their best expert
// (group_limited_greedy), times routed_scaling_factor. DeepSeek-V3 (noaux_tc): sigmoid
// scores; e_score_correction_bias added for the choice only; groups ranked by the sum of
// their two best biased scores; weights the unbiased scores of the chosen experts,
// renormalised with norm_topk_prob, then times routed_scaling_factor.
struct RouterRule {
  int n_experts = 0;
  int top_k = 0;
  bool renormalize = false;  // Mixtral: always; the others: norm_topk_prob
  RouterScoring scoring = RouterScoring::kSoftmax;
  bool selection_bias = false;  // DeepSeek-V3: mlp.gate.e_score_correction_bias [n_experts]
  int n_groups = 1;             // n_group; 1: no groups
  int top_groups = 1;           // topk_group
  GroupScore group_score = GroupScore::kMax;
  float scale = 1.f;  // routed_scaling_factor
};

// Multi-head latent attention (DeepSeek-V2/V3), as transformers' DeepseekV2Attention /
// DeepseekV3Attention define it. Query heads are [qk_nope_head_dim | qk_rope_head_dim];
// the keys and values of all heads come from one latent per token: c = kv_a_layernorm(
// kv_a_proj_with_mqa(x)[:kv_lora_rank]) and the shared rope key k_rope (the last
// qk_rope_head_dim of that projection, after RoPE). The cache stores [c | k_rope] and
// attention runs in the absorbed form (model.cpp).
struct MlaConfig {
  int q_lora_rank = 0;  // 0: q_proj; else q_a_proj -> q_a_layernorm -> q_b_proj
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  // RoPE rotates pairs (2i, 2i + 1) of the rope dims (V2 always, V3 with rope_interleave):
  // the rope rows of the q and kv_a projections are reordered at load (even dims, then
  // odd) so that the rotate_half RoPE op computes the same scores.
  bool rope_pairs = false;
  bool attention_bias = false;  // biases on q_a_proj, kv_a_proj_with_mqa and o_proj
  float softmax_scale = 0.f;    // qk_head_dim^-0.5, times mscale^2 under YaRN with mscale_all_dim

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }  // one cache entry
};

struct RopeConfig {
  float theta = 10000.f;
  // "default", "linear", "llama3" or (DeepSeek) "yarn" (the scalings this engine implements).
  std::string type = "default";
  float factor = 1.f;
  float low_freq_factor = 1.f;
  float high_freq_factor = 4.f;
  int original_max_position = 8192;
  // YaRN (transformers' _compute_yarn_parameters)
  float beta_fast = 32.f;
  float beta_slow = 1.f;
  bool truncate = true;
  float mscale_all_dim = 0.f;  // the softmax-scale correction of DeepSeek's attention
};

struct ModelConfig {
  Architecture arch = Architecture::kMixtral;
  std::string arch_name;  // as written in config.json "architectures"
  DType torch_dtype = DType::kBF16;

  int vocab_size = 0;
  int hidden_size = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // MLA: the latent entry's width, kv_lora_rank + qk_rope_head_dim
  int rope_dim = 0;  // dims RoPE rotates per head: head_dim; MLA: qk_rope_head_dim
  float rms_norm_eps = 1e-5f;
  RopeConfig rope;
  int max_position_embeddings = 0;
  int sliding_window = 0;  // 0: none; otherwise a query sees keys with q - k < sliding_window
  bool tie_word_embeddings = false;

  bool qkv_bias = false;  // Qwen2-MoE; Llama, Qwen3-MoE with attention_bias
  bool o_bias = false;    // Llama, Qwen3-MoE with attention_bias
  bool mlp_bias = false;  // Llama with mlp_bias
  QkNorm qk_norm = QkNorm::kNone;
  float clip_qkv = 0.f;  // OLMoE: clamp q, k, v to [-clip, clip]; 0: off

  RouterRule router;
  int expert_intermediate_size = 0;  // per routed expert
  int dense_intermediate_size = 0;   // dense MLP layers (Mistral/Llama, Qwen mlp_only_layers)
  int shared_expert_intermediate_size = 0;  // Qwen2-MoE / DeepSeek shared expert; 0: none
  MlaConfig mla;                            // DeepSeek-V2/V3; kv_lora_rank 0: not MLA
  std::vector<uint8_t> layer_is_moe;        // [n_layers]

  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  bool is_moe_layer(int layer) const { return layer_is_moe[static_cast<size_t>(layer)] != 0; }
  // MLA: n_kv_heads is 1 (the latent) and a query is [n_heads, head_dim] in latent space.
  bool is_mla() const { return mla.kv_lora_rank > 0; }
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  int group_size() const { return n_heads / n_kv_heads; }
  // Sizes of the q_norm / k_norm weights (0: none); q is normed in q_dim() / q_norm_size()
  // pieces of that size, k likewise.
  int q_norm_size() const;
  int k_norm_size() const;
  // The shape the KV layer works with (kv_shape_of); implicit so that callers of
  // the kv API written against ModelConfig keep compiling.
  operator KvModelShape() const;  // NOLINT(google-explicit-constructor)

  // Throws ekva::Error naming `source` (the file) and the field at fault.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::filesystem::path& config_json);
};

std::string_view architecture_name(Architecture arch);

// What src/kv needs of a model (kv must not include model/).
KvModelShape kv_shape_of(const ModelConfig& config);

}  // namespace ekva
