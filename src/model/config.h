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

namespace ekva {

enum class Architecture { kMixtral, kQwen2Moe, kQwen3Moe, kOlmoe, kMistral, kLlama };

// Where the RMSNorms of q and k sit, after the projections and before RoPE.
enum class QkNorm {
  kNone,
  kWholeProjection,  // OLMoE: over all of q ([q_dim]) and k ([kv_dim]), before the head split
  kPerHead,          // Qwen3-MoE: over each head of q and k, one [head_dim] weight for all heads
};

// How a MoE layer's router turns logits into expert weights. All supported MoE
// families take a softmax over all experts in f32, then the top-k; they differ in
// whether the k weights are renormalised to sum to one.
struct RouterRule {
  int n_experts = 0;
  int top_k = 0;
  bool renormalize = false;  // Mixtral: always; Qwen2-MoE, Qwen3-MoE, OLMoE: norm_topk_prob
};

struct RopeConfig {
  float theta = 10000.f;
  // "default", "linear" or "llama3" (the scalings this engine implements).
  std::string type = "default";
  float factor = 1.f;
  float low_freq_factor = 1.f;
  float high_freq_factor = 4.f;
  int original_max_position = 8192;
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
  int head_dim = 0;
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
  int shared_expert_intermediate_size = 0;  // Qwen2-MoE shared expert; 0: none
  std::vector<uint8_t> layer_is_moe;        // [n_layers]

  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  bool is_moe_layer(int layer) const { return layer_is_moe[static_cast<size_t>(layer)] != 0; }
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
