#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <optional>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "ops/ops.h"

namespace ekva {

using nlohmann::json;

namespace {

// Every supported architecture with its config.json "architectures" name.
constexpr std::pair<Architecture, std::string_view> kArchitectures[] = {
    {Architecture::kMixtral, "MixtralForCausalLM"},
    {Architecture::kQwen2Moe, "Qwen2MoeForCausalLM"},
    {Architecture::kQwen3Moe, "Qwen3MoeForCausalLM"},
    {Architecture::kOlmoe, "OlmoeForCausalLM"},
    {Architecture::kMistral, "MistralForCausalLM"},
    {Architecture::kLlama, "LlamaForCausalLM"},
    {Architecture::kDeepseekV2, "DeepseekV2ForCausalLM"},
    {Architecture::kDeepseekV3, "DeepseekV3ForCausalLM"},
};

}  // namespace

std::string_view architecture_name(Architecture arch) {
  for (const auto& [a, name] : kArchitectures)
    if (a == arch) return name;
  return "?";
}

namespace {

// Typed field access that names the file and the field in every error.
class Fields {
 public:
  Fields(const json& j, const std::string& source) : j_(j), source_(source) {}

  const json* find(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }

  int require_int(const char* key, int min_value) const {
    const json* v = find(key);
    if (v == nullptr) fail("{}: missing required field '{}'", source_, key);
    return check_int(key, *v, min_value);
  }

  int int_or(const char* key, int fallback, int min_value) const {
    const json* v = find(key);
    return v == nullptr ? fallback : check_int(key, *v, min_value);
  }

  float float_or(const char* key, float fallback, float min_exclusive) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) fail("{}: field '{}' must be a number", source_, key);
    const double d = v->get<double>();
    if (!(d > min_exclusive))
      fail("{}: field '{}' = {} must be > {}", source_, key, d, min_exclusive);
    return static_cast<float>(d);
  }

  // A number (any sign) or the fallback when absent.
  float number_or(const char* key, float fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) fail("{}: field '{}' must be a number", source_, key);
    return static_cast<float>(v->get<double>());
  }

  std::string string_or(const char* key, const char* fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_string()) fail("{}: field '{}' must be a string", source_, key);
    return v->get<std::string>();
  }

  bool present(const char* key) const { return j_.find(key) != j_.end(); }

  bool bool_or(const char* key, bool fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) fail("{}: field '{}' must be true or false", source_, key);
    return v->get<bool>();
  }

  const std::string& source() const { return source_; }

 private:
  int check_int(const char* key, const json& v, int min_value) const {
    if (!v.is_number_integer()) fail("{}: field '{}' must be an integer", source_, key);
    const auto n = v.get<int64_t>();
    if (n < min_value || n > (int64_t{1} << 30))
      fail("{}: field '{}' = {} is out of range (min {})", source_, key, n, min_value);
    return static_cast<int>(n);
  }

  const json& j_;
  const std::string& source_;
};

// transformers' get_mscale (yarn_get_mscale in DeepSeek's code).
double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

RopeConfig parse_rope(const Fields& f, const std::string& source, bool yarn_allowed) {
  RopeConfig rope;
  // transformers 5 writes rope_parameters {rope_type, rope_theta, ...}; 4.x writes
  // rope_theta at the top and an optional rope_scaling object.
  const json* params = f.find("rope_parameters");
  if (params == nullptr) params = f.find("rope_scaling");
  rope.theta = f.float_or("rope_theta", 10000.f, 0.f);
  if (params == nullptr) return rope;
  if (!params->is_object()) fail("{}: 'rope_parameters'/'rope_scaling' must be an object", source);
  const Fields p(*params, source);
  rope.theta = p.float_or("rope_theta", rope.theta, 0.f);
  std::string type = "default";
  if (const json* t = p.find("rope_type"); t != nullptr && t->is_string())
    type = t->get<std::string>();
  else if (const json* t2 = p.find("type"); t2 != nullptr && t2->is_string())
    type = t2->get<std::string>();
  if (type == "yarn" && !yarn_allowed)
    fail("{}: rope type 'yarn' is not supported for this architecture (DeepSeek-V2/V3 only)",
         source);
  if (type != "default" && type != "linear" && type != "llama3" && type != "yarn")
    fail("{}: rope_scaling type '{}' is not supported (supported: default, linear, llama3{})",
         source, type, yarn_allowed ? ", yarn" : "");
  if (yarn_allowed && type != "default" && type != "yarn")
    fail("{}: rope_scaling type '{}' is not supported for DeepSeek (supported: default, yarn)",
         source, type);
  rope.type = type;
  if (type != "default") rope.factor = p.float_or("factor", 1.f, 0.f);
  if (type == "llama3") {
    rope.low_freq_factor = p.float_or("low_freq_factor", 1.f, 0.f);
    rope.high_freq_factor = p.float_or("high_freq_factor", 4.f, 0.f);
    rope.original_max_position = p.require_int("original_max_position_embeddings", 1);
  }
  if (type == "yarn") {
    // transformers' _compute_yarn_parameters. Its attention_factor multiplies cos and
    // sin (so q and k): supported when it is 1, as in every DeepSeek checkpoint
    // (mscale == mscale_all_dim); the softmax-scale correction is mscale_all_dim's.
    rope.original_max_position = p.require_int("original_max_position_embeddings", 1);
    rope.beta_fast = p.float_or("beta_fast", 32.f, 0.f);
    rope.beta_slow = p.float_or("beta_slow", 1.f, 0.f);
    rope.truncate = p.bool_or("truncate", true);
    const float mscale = p.number_or("mscale", 0.f);
    rope.mscale_all_dim = p.number_or("mscale_all_dim", 0.f);
    double attention_factor = 0;
    if (p.find("attention_factor") != nullptr)
      attention_factor = p.float_or("attention_factor", 1.f, 0.f);
    else if (mscale != 0.f && rope.mscale_all_dim != 0.f)
      attention_factor =
          yarn_mscale(rope.factor, mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim);
    else
      attention_factor = yarn_mscale(rope.factor, 1.0);
    if (std::abs(attention_factor - 1.0) > 1e-6)
      fail(
          "{}: rope_scaling yarn with attention_factor {} (from factor, mscale and "
          "mscale_all_dim) is not supported: only 1, i.e. mscale == mscale_all_dim as DeepSeek "
          "checkpoints set it",
          source, attention_factor);
  }
  return rope;
}

// Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer: layer i is sparse iff it is not in
// mlp_only_layers and (i + 1) % decoder_sparse_step == 0. An index past the last layer
// is an error here (transformers ignores it): it is most likely a wrong config.
std::vector<uint8_t> qwen_sparse_layers(const Fields& f, int n_layers) {
  const int step = f.int_or("decoder_sparse_step", 1, 1);
  std::vector<uint8_t> sparse(static_cast<size_t>(n_layers), 0);
  for (int i = 0; i < n_layers; ++i) sparse[static_cast<size_t>(i)] = (i + 1) % step == 0;
  if (const json* m = f.find("mlp_only_layers")) {
    if (!m->is_array()) fail("{}: 'mlp_only_layers' must be an array", f.source());
    for (const auto& x : *m) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= n_layers)
        fail("{}: 'mlp_only_layers' entry {} is not a layer index below {}", f.source(), x.dump(),
             n_layers);
      sparse[x.get<size_t>()] = 0;
    }
  }
  return sparse;
}

std::vector<int> parse_token_ids(const json* v, const std::string& source, const char* key) {
  std::vector<int> ids;
  if (v == nullptr) return ids;
  const auto one = [&](const json& x) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0)
      fail("{}: field '{}' must hold non-negative token ids", source, key);
    ids.push_back(x.get<int>());
  };
  if (v->is_array()) {
    for (const auto& x : *v) one(x);
  } else {
    one(*v);
  }
  return ids;
}

// DeepSeek-V2 / V3 as transformers' configuration_deepseek_v2.py / _v3.py define the
// fields (defaults included) and modeling_deepseek_v2.py / _v3.py use them. Where
// transformers and DeepSeek's own modeling_deepseek.py disagree on a value a config
// can hold, that value is refused naming the field, rather than picking one.
void parse_deepseek(const Fields& f, ModelConfig& c) {
  const std::string& source = f.source();
  const bool v3 = c.arch == Architecture::kDeepseekV3;
  MlaConfig& m = c.mla;
  // q_lora_rank: null means q_proj; absent means the config class's default, 1536.
  m.q_lora_rank = f.present("q_lora_rank") ? f.int_or("q_lora_rank", 0, 1) : 1536;
  m.kv_lora_rank = f.require_int("kv_lora_rank", 1);
  m.qk_nope_head_dim = f.require_int("qk_nope_head_dim", 0);
  m.qk_rope_head_dim = f.require_int("qk_rope_head_dim", 2);
  m.v_head_dim = f.require_int("v_head_dim", 1);
  if (m.qk_rope_head_dim % 2 != 0)
    fail("{}: qk_rope_head_dim ({}) must be even for RoPE", source, m.qk_rope_head_dim);
  // The eager attention repeats the keys num_attention_heads / num_key_value_heads
  // times over heads that are already per query head: only equal counts work.
  if (c.n_kv_heads != c.n_heads)
    fail("{}: num_key_value_heads ({}) must equal num_attention_heads ({}) for MLA", source,
         c.n_kv_heads, c.n_heads);
  // V2 rotates pairs always (view_as_complex); V3 with rope_interleave (default true).
  m.rope_pairs = v3 ? f.bool_or("rope_interleave", true) : true;
  m.attention_bias = f.bool_or("attention_bias", false);
  // The cache's one "kv head": the latent [c | k_rope].
  c.n_kv_heads = 1;
  c.head_dim = m.latent_dim();
  c.rope_dim = m.qk_rope_head_dim;
  double scale = 1.0 / std::sqrt(static_cast<double>(m.qk_head_dim()));
  if (c.rope.type != "default" && c.rope.mscale_all_dim != 0.f) {
    const double ms = yarn_mscale(c.rope.factor, c.rope.mscale_all_dim);
    scale *= ms * ms;
  }
  m.softmax_scale = static_cast<float>(scale);

  RouterRule& r = c.router;
  r.n_experts = f.require_int("n_routed_experts", 1);
  r.top_k = f.require_int("num_experts_per_tok", 1);
  const std::string topk_method = f.string_or("topk_method", v3 ? "noaux_tc" : "greedy");
  const std::string scoring = f.string_or("scoring_func", v3 ? "sigmoid" : "softmax");
  if (v3) {
    // DeepseekV3TopkRouter implements noaux_tc with sigmoid scores, nothing else.
    if (topk_method != "noaux_tc")
      fail("{}: topk_method '{}' is not supported for DeepSeek-V3 (supported: noaux_tc)", source,
           topk_method);
    if (scoring != "sigmoid")
      fail("{}: scoring_func '{}' is not supported for DeepSeek-V3 (supported: sigmoid)", source,
           scoring);
    r.scoring = RouterScoring::kSigmoid;
    r.selection_bias = true;
    r.group_score = GroupScore::kTop2Sum;
    r.n_groups = f.int_or("n_group", 8, 1);
    r.top_groups = f.int_or("topk_group", 4, 1);
    r.renormalize = f.bool_or("norm_topk_prob", true);
    r.scale = f.float_or("routed_scaling_factor", 2.5f, 0.f);
  } else {
    if (topk_method != "greedy" && topk_method != "group_limited_greedy")
      fail(
          "{}: topk_method '{}' is not supported for DeepSeek-V2 (supported: greedy, "
          "group_limited_greedy)",
          source, topk_method);
    if (scoring != "softmax")
      fail("{}: scoring_func '{}' is not supported for DeepSeek-V2 (supported: softmax)", source,
           scoring);
    r.scoring = RouterScoring::kSoftmax;
    if (topk_method == "group_limited_greedy") {
      r.group_score = GroupScore::kMax;
      r.n_groups = f.require_int("n_group", 1);
      r.top_groups = f.require_int("topk_group", 1);
    }
    // transformers' DeepseekV2Moe always scales and never renormalises; DeepSeek's code
    // renormalises instead of scaling when norm_topk_prob: they differ, so refused.
    if (f.bool_or("norm_topk_prob", false) && r.top_k > 1)
      fail(
          "{}: norm_topk_prob true is not supported for DeepSeek-V2 (transformers ignores it, "
          "DeepSeek's reference renormalises instead of scaling)",
          source);
    r.scale = f.float_or("routed_scaling_factor", 1.f, 0.f);
  }
  if (r.n_experts % r.n_groups != 0)
    fail("{}: n_routed_experts ({}) is not a multiple of n_group ({})", source, r.n_experts,
         r.n_groups);
  if (r.top_groups > r.n_groups)
    fail("{}: topk_group ({}) exceeds n_group ({})", source, r.top_groups, r.n_groups);
  if (r.group_score == GroupScore::kTop2Sum && r.n_groups > 1 && r.n_experts / r.n_groups < 2)
    fail("{}: n_group ({}) leaves fewer than 2 experts per group (noaux_tc sums the top 2)", source,
         r.n_groups);
  if (r.top_k > r.top_groups * (r.n_experts / r.n_groups))
    fail("{}: num_experts_per_tok ({}) exceeds the experts of topk_group ({}) groups", source,
         r.top_k, r.top_groups);
  c.expert_intermediate_size = f.require_int("moe_intermediate_size", 1);
  const int n_shared = f.int_or("n_shared_experts", v3 ? 1 : 2, 0);
  c.shared_expert_intermediate_size = n_shared * c.expert_intermediate_size;
  // transformers: layer i routes iff i >= first_k_dense_replace; DeepSeek's code also
  // asks i % moe_layer_freq == 0, which transformers ignores: only 1 agrees.
  const int first_dense = f.int_or("first_k_dense_replace", v3 ? 3 : 0, 0);
  if (const int freq = f.int_or("moe_layer_freq", 1, 1); freq != 1)
    fail("{}: moe_layer_freq {} is not supported (only 1: transformers ignores the field)", source,
         freq);
  for (int i = 0; i < c.n_layers; ++i) c.layer_is_moe[static_cast<size_t>(i)] = i >= first_dense;
  if (first_dense > 0) c.dense_intermediate_size = f.require_int("intermediate_size", 1);
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: not a JSON object", source);
  const Fields f(j, source);
  ModelConfig c;

  const json* archs = f.find("architectures");
  if (archs == nullptr || !archs->is_array() || archs->empty() || !(*archs)[0].is_string())
    fail("{}: missing 'architectures' (e.g. [\"MixtralForCausalLM\"])", source);
  c.arch_name = (*archs)[0].get<std::string>();
  const auto* known = std::find_if(std::begin(kArchitectures), std::end(kArchitectures),
                                   [&](const auto& a) { return a.second == c.arch_name; });
  if (known == std::end(kArchitectures)) {
    std::vector<std::string_view> names;
    for (const auto& a : kArchitectures) names.push_back(a.second);
    fail("{}: architecture '{}' is not supported (supported: {})", source, c.arch_name,
         fmt::join(names, ", "));
  }
  c.arch = known->first;

  if (const json* dt = f.find("torch_dtype") ? f.find("torch_dtype") : f.find("dtype")) {
    if (!dt->is_string()) fail("{}: 'torch_dtype' must be a string", source);
    const auto s = dt->get<std::string>();
    if (s == "bfloat16")
      c.torch_dtype = DType::kBF16;
    else if (s == "float16")
      c.torch_dtype = DType::kF16;
    else if (s == "float32")
      c.torch_dtype = DType::kF32;
    else
      fail("{}: torch_dtype '{}' is not supported (bfloat16, float16, float32)", source, s);
  }

  c.vocab_size = f.require_int("vocab_size", 1);
  c.hidden_size = f.require_int("hidden_size", 1);
  c.n_layers = f.require_int("num_hidden_layers", 1);
  c.n_heads = f.require_int("num_attention_heads", 1);
  // Qwen3MoeConfig defaults num_key_value_heads to 4 (not to the query heads).
  c.n_kv_heads =
      f.int_or("num_key_value_heads", c.arch == Architecture::kQwen3Moe ? 4 : c.n_heads, 1);
  if (c.n_heads % c.n_kv_heads != 0)
    fail("{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", source,
         c.n_heads, c.n_kv_heads);
  const bool mla = c.arch == Architecture::kDeepseekV2 || c.arch == Architecture::kDeepseekV3;
  if (!mla && f.find("head_dim") == nullptr && c.hidden_size % c.n_heads != 0)
    fail(
        "{}: hidden_size ({}) is not a multiple of num_attention_heads ({}) and no head_dim is "
        "given",
        source, c.hidden_size, c.n_heads);
  // (DeepSeek's head_dim is qk_rope_head_dim, set by its config class: parse_deepseek.)
  c.head_dim = mla ? 2 : f.int_or("head_dim", c.hidden_size / c.n_heads, 2);
  if (c.head_dim % 2 != 0) fail("{}: head_dim ({}) must be even for RoPE", source, c.head_dim);
  c.rms_norm_eps = f.float_or("rms_norm_eps", 1e-6f, 0.f);
  c.rope = parse_rope(f, source, mla);
  c.rope_dim = c.head_dim;
  c.max_position_embeddings = f.require_int("max_position_embeddings", 1);
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);

  if (const json* act = f.find("hidden_act");
      act != nullptr && !(act->is_string() && act->get<std::string>() == "silu"))
    fail("{}: hidden_act '{}' is not supported (only silu)", source, act->dump());

  const bool qwen_moe = c.arch == Architecture::kQwen2Moe || c.arch == Architecture::kQwen3Moe;
  // Qwen's use_sliding_window windows only the layers from max_window_layers on, by a
  // rule that differs across transformers versions (and attention backends): refused.
  if (qwen_moe && f.bool_or("use_sliding_window", false))
    fail("{}: use_sliding_window with max_window_layers is not supported ({})", source,
         c.arch_name);
  if (c.arch == Architecture::kMixtral || c.arch == Architecture::kMistral)
    c.sliding_window = f.int_or("sliding_window", 0, 1);

  c.layer_is_moe.assign(static_cast<size_t>(c.n_layers), 0);
  switch (c.arch) {
    case Architecture::kMixtral:
      c.router.n_experts = f.require_int("num_local_experts", 1);
      c.router.top_k = f.require_int("num_experts_per_tok", 1);
      c.router.renormalize = true;
      c.expert_intermediate_size = f.require_int("intermediate_size", 1);
      c.layer_is_moe.assign(static_cast<size_t>(c.n_layers), 1);
      break;
    case Architecture::kOlmoe:
      c.router.n_experts = f.require_int("num_experts", 1);
      c.router.top_k = f.require_int("num_experts_per_tok", 1);
      c.router.renormalize = f.bool_or("norm_topk_prob", false);
      c.expert_intermediate_size = f.require_int("intermediate_size", 1);
      c.layer_is_moe.assign(static_cast<size_t>(c.n_layers), 1);
      c.qk_norm = QkNorm::kWholeProjection;
      c.clip_qkv = f.float_or("clip_qkv", 0.f, -1.f);
      if (f.bool_or("attention_bias", false))
        fail("{}: attention_bias is not supported for OLMoE", source);
      break;
    case Architecture::kQwen2Moe:
    case Architecture::kQwen3Moe:
      c.router.n_experts = f.require_int("num_experts", 1);
      c.router.top_k = f.require_int("num_experts_per_tok", 1);
      c.router.renormalize = f.bool_or("norm_topk_prob", false);
      c.expert_intermediate_size = f.require_int("moe_intermediate_size", 1);
      if (c.arch == Architecture::kQwen2Moe) {
        c.shared_expert_intermediate_size = f.int_or("shared_expert_intermediate_size", 0, 0);
        c.qkv_bias = f.bool_or("qkv_bias", true);
      } else {  // Qwen3-MoE: no shared expert; per-head q/k norms; biases on q, k, v and o
        c.qk_norm = QkNorm::kPerHead;
        c.qkv_bias = c.o_bias = f.bool_or("attention_bias", false);
      }
      c.layer_is_moe = qwen_sparse_layers(f, c.n_layers);
      // Only the dense layers (mlp_only_layers, decoder_sparse_step) use intermediate_size.
      if (std::count(c.layer_is_moe.begin(), c.layer_is_moe.end(), 0) > 0)
        c.dense_intermediate_size = f.require_int("intermediate_size", 1);
      break;
    case Architecture::kDeepseekV2:
    case Architecture::kDeepseekV3:
      parse_deepseek(f, c);
      break;
    case Architecture::kMistral:
    case Architecture::kLlama:
      c.dense_intermediate_size = f.require_int("intermediate_size", 1);
      if (c.arch == Architecture::kLlama) {
        c.qkv_bias = c.o_bias = f.bool_or("attention_bias", false);
        c.mlp_bias = f.bool_or("mlp_bias", false);
      }
      break;
  }
  if (c.router.n_experts > 0 && c.router.top_k > c.router.n_experts)
    fail("{}: num_experts_per_tok ({}) exceeds the number of experts ({})", source, c.router.top_k,
         c.router.n_experts);
  if (c.router.n_experts > kMaxRoutedExperts)
    fail("{}: {} experts per layer; the router supports at most {}", source, c.router.n_experts,
         kMaxRoutedExperts);
  if (c.mlp_bias) fail("{}: mlp_bias is not supported", source);

  if (mla) c.mlp_bias = f.bool_or("mlp_bias", false);
  if (c.mlp_bias) fail("{}: mlp_bias is not supported", source);

  c.bos_token_id = f.find("bos_token_id") ? f.int_or("bos_token_id", -1, 0) : -1;
  c.eos_token_ids = parse_token_ids(f.find("eos_token_id"), source, "eos_token_id");
  for (int id : c.eos_token_ids)
    if (id >= c.vocab_size)
      fail("{}: eos_token_id {} is not below vocab_size {}", source, id, c.vocab_size);
  if (c.bos_token_id >= c.vocab_size)
    fail("{}: bos_token_id {} is not below vocab_size {}", source, c.bos_token_id, c.vocab_size);
  return c;
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& config_json) {
  std::ifstream in(config_json);
  if (!in) fail("{}: cannot open", config_json.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", config_json.string(), e.what());
  }
  return from_json(j, config_json.string());
}

KvModelShape kv_shape_of(const ModelConfig& config) {
  KvModelShape s;
  s.architecture = config.arch_name;
  s.n_layers = config.n_layers;
  s.n_heads = config.n_heads;
  s.n_kv_heads = config.n_kv_heads;
  s.head_dim = config.head_dim;
  s.n_experts = config.router.n_experts;
  s.sliding_window = config.sliding_window;
  s.layer_is_moe = config.layer_is_moe;
  if (config.is_mla()) s.v_dim = config.mla.kv_lora_rank;
  return s;
}

int ModelConfig::q_norm_size() const {
  switch (qk_norm) {
    case QkNorm::kNone:
      return 0;
    case QkNorm::kWholeProjection:
      return q_dim();
    case QkNorm::kPerHead:
      return head_dim;
  }
  return 0;
}

int ModelConfig::k_norm_size() const {
  return qk_norm == QkNorm::kWholeProjection ? kv_dim() : q_norm_size();
}

ModelConfig::operator KvModelShape() const { return kv_shape_of(*this); }

}  // namespace ekva
