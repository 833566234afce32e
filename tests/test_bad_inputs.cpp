// Bad input gets one clear error naming the file, tensor or field at fault.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "ekva/error.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace ekva {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

std::string with_header(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

using test::expect_error;

class BadSafetensors : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("bad_st"); }
  std::filesystem::path write(const std::string& bytes) {
    const auto p = dir_ / "model.safetensors";
    test::write_file(p, bytes);
    return p;
  }
  std::filesystem::path dir_;
};

TEST_F(BadSafetensors, TooShortForTheHeaderLength) {
  const auto p = write("abc");
  expect_error([&] { SafetensorsFile::open(p); }, {"model.safetensors", "truncated"});
}

TEST_F(BadSafetensors, HeaderLengthPastTheEnd) {
  std::string bytes =
      with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "1234");
  bytes.resize(20);  // cut inside the header
  const auto p = write(bytes);
  expect_error([&] { SafetensorsFile::open(p); },
               {"model.safetensors", "header length", "past the end"});
}

TEST_F(BadSafetensors, ImplausibleHeaderLength) {
  std::string bytes(16, '\xff');
  const auto p = write(bytes);
  expect_error([&] { SafetensorsFile::open(p); }, {"implausible"});
}

TEST_F(BadSafetensors, HeaderIsNotJson) {
  const auto p = write(with_header("{not json", ""));
  expect_error([&] { SafetensorsFile::open(p); }, {"model.safetensors", "not valid JSON"});
}

TEST_F(BadSafetensors, UnknownDtype) {
  const auto p =
      write(with_header(R"({"w":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}})", "xx"));
  expect_error([&] { SafetensorsFile::open(p); }, {"tensor 'w'", "unknown dtype 'F8_E9'"});
}

TEST_F(BadSafetensors, OffsetsOutOfRange) {
  const auto p =
      write(with_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", "12345678"));
  expect_error([&] { SafetensorsFile::open(p); }, {"tensor 'w'", "out of range", "8 bytes"});
}

TEST_F(BadSafetensors, OffsetsDisagreeWithShape) {
  const auto p =
      write(with_header(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678"));
  expect_error([&] { SafetensorsFile::open(p); }, {"tensor 'w'", "span 8 bytes", "needs 12"});
}

TEST_F(BadSafetensors, OverlappingTensors) {
  const auto p = write(with_header(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      "123456789012"));
  expect_error([&] { SafetensorsFile::open(p); }, {"'a'", "'b'", "overlap"});
}

TEST_F(BadSafetensors, NegativeShape) {
  const auto p =
      write(with_header(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", ""));
  expect_error([&] { SafetensorsFile::open(p); }, {"tensor 'w'", "non-negative"});
}

TEST_F(BadSafetensors, NoCheckpointInDirectory) {
  expect_error([&] { TensorStore::open_model_dir(dir_); }, {"no model.safetensors"});
}

// --- Model directories derived from a valid reference case -----------------------

class BadModelDir : public ::testing::Test {
 protected:
  virtual const char* source_case() const { return "mixtral"; }
  void SetUp() override {
    dir_ = test::temp_dir("bad_model");
    const auto src = test::reference_dir() / source_case();
    ASSERT_TRUE(std::filesystem::exists(src)) << "run the make_reference fixture";
    for (const auto& e : std::filesystem::directory_iterator(src))
      std::filesystem::copy(e.path(), dir_ / e.path().filename());
    config_ = json::parse(test::read_file(dir_ / "config.json"));
  }
  void write_config() { test::write_file(dir_ / "config.json", config_.dump(2)); }

  // Rewrites model.safetensors with `edit` applied to the (name -> info) list.
  void rewrite_weights(const std::function<void(json& header, std::string& data)>& edit) {
    const auto bytes = test::read_file(dir_ / "model.safetensors");
    uint64_t n;
    std::memcpy(&n, bytes.data(), 8);
    json header = json::parse(bytes.substr(8, n));
    std::string data = bytes.substr(8 + n);
    edit(header, data);
    test::write_file(dir_ / "model.safetensors", with_header(header.dump(), data));
  }

  // Points tensor `name` at new zero bytes of `shape` (same dtype) past the end of the data.
  void reshape_tensor(const std::string& name, const std::vector<int64_t>& shape) {
    rewrite_weights([&](json& h, std::string& data) {
      auto& t = h.at(name);
      const auto old = t["data_offsets"].get<std::vector<uint64_t>>();
      uint64_t numel = 1;
      for (int64_t n : t["shape"]) numel *= static_cast<uint64_t>(n);
      uint64_t bytes = (old[1] - old[0]) / numel;
      for (int64_t n : shape) bytes *= static_cast<uint64_t>(n);
      t["shape"] = shape;
      t["data_offsets"] = {data.size(), data.size() + bytes};
      data.append(bytes, '\0');
    });
  }

  std::filesystem::path dir_;
  json config_;
};

TEST_F(BadModelDir, ValidCopyLoads) { EXPECT_NO_THROW(Model::load(dir_)); }

TEST_F(BadModelDir, MissingTensor) {
  rewrite_weights([](json& h, std::string&) { h.erase("model.layers.1.self_attn.k_proj.weight"); });
  expect_error([&] { Model::load(dir_); },
               {"missing tensor 'model.layers.1.self_attn.k_proj.weight'"});
}

TEST_F(BadModelDir, MisShapedTensor) {
  rewrite_weights([](json& h, std::string&) {
    auto& t = h["model.norm.weight"];
    const int64_t n = t["shape"][0].get<int64_t>();
    t["shape"] = {n / 2, 2};
  });
  expect_error([&] { Model::load(dir_); },
               {"model.safetensors", "'model.norm.weight'", "has shape", "config implies [64]"});
}

TEST_F(BadModelDir, IntegerWeights) {
  rewrite_weights([](json& h, std::string&) {
    auto& t = h["model.norm.weight"];
    t["dtype"] = "I16";
  });
  expect_error([&] { Model::load(dir_); }, {"'model.norm.weight'", "dtype I16"});
}

TEST_F(BadModelDir, ConfigMissingField) {
  config_.erase("num_hidden_layers");
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "missing required field 'num_hidden_layers'"});
}

TEST_F(BadModelDir, ConfigContradictoryHeads) {
  config_["num_key_value_heads"] = 3;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "num_attention_heads (4)", "num_key_value_heads (3)"});
}

TEST_F(BadModelDir, ConfigTopKAboveExperts) {
  config_["num_experts_per_tok"] = 9;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "num_experts_per_tok (9)", "experts (8)"});
}

TEST_F(BadModelDir, ConfigTooManyExperts) {
  config_["num_local_experts"] = 513;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "513 experts per layer", "the router supports at most 512"});
}

TEST_F(BadModelDir, ConfigWrongType) {
  config_["hidden_size"] = "64";
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "'hidden_size' must be an integer"});
}

TEST_F(BadModelDir, ConfigNotJson) {
  test::write_file(dir_ / "config.json", "{\"architectures\": [");
  expect_error([&] { Model::load(dir_); }, {"config.json", "not valid JSON"});
}

TEST_F(BadModelDir, UnsupportedArchitecture) {
  config_["architectures"] = {"GPT2LMHeadModel"};
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "'GPT2LMHeadModel' is not supported"});
}

TEST_F(BadModelDir, ConfigDisagreesWithWeights) {
  config_["hidden_size"] = 96;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"'model.embed_tokens.weight'", "has shape [384, 64]", "[384, 96]"});
}

TEST_F(BadModelDir, ExtraTensorsMeanWrongArchitecture) {
  config_["architectures"] = {"MistralForCausalLM"};
  config_["model_type"] = "mistral";
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"missing tensor 'model.layers.0.mlp.gate_proj.weight'"});
}

TEST_F(BadModelDir, UnsupportedRopeScaling) {
  config_["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "rope type 'yarn' is not supported"});
}

TEST_F(BadModelDir, SequenceLongerThanContext) {
  config_["max_position_embeddings"] = 8;
  write_config();
  const auto model = Model::load(dir_);
  const auto& c = model->config();
  FullKvCache cache(kv_cache_shape(c), 64);
  std::vector<int32_t> tokens(9, 1);
  std::vector<float> logits;
  expect_error([&] { model->forward(tokens, cache, logits, false, test::cpu()); },
               {"9 tokens", "context of 8"});
}

TEST_F(BadModelDir, TokenOutsideVocabulary) {
  const auto model = Model::load(dir_);
  const auto& c = model->config();
  FullKvCache cache(kv_cache_shape(c), 64);
  std::vector<int32_t> tokens = {1, 384};
  std::vector<float> logits;
  expect_error([&] { model->forward(tokens, cache, logits, false, test::cpu()); },
               {"token id 384", "outside the vocabulary"});
}

// --- Qwen3-MoE: per-head q/k norms, explicit head_dim, layer rules --------------

class BadQwen3Dir : public BadModelDir {
 protected:
  // 3 layers, 4 heads / 2 kv heads x head_dim 24, hidden 64, top-4 of 16 experts.
  const char* source_case() const override { return "qwen3_moe"; }
};

TEST_F(BadQwen3Dir, ValidCopyLoads) { EXPECT_NO_THROW(Model::load(dir_)); }

TEST_F(BadQwen3Dir, QNormOfTheWholeProjection) {
  // An OLMoE-style q_norm ([n_heads * head_dim]) where Qwen3-MoE norms each head.
  reshape_tensor("model.layers.1.self_attn.q_norm.weight", {96});
  expect_error([&] { Model::load(dir_); },
               {"model.safetensors", "'model.layers.1.self_attn.q_norm.weight'", "has shape [96]",
                "config implies [24]", "head_dim 24"});
}

TEST_F(BadQwen3Dir, HeadDimContradictsQProj) {
  config_["head_dim"] = 16;  // hidden / heads, but the projections are 4 x 24 wide
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"'model.layers.0.self_attn.q_proj.weight'", "has shape [96, 64]",
                "config implies [64, 64]", "num_attention_heads 4 x head_dim 16"});
}

TEST_F(BadQwen3Dir, TopKAboveExperts) {
  config_["num_experts_per_tok"] = 17;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "num_experts_per_tok (17)", "experts (16)"});
}

TEST_F(BadQwen3Dir, MlpOnlyLayerOutOfRange) {
  config_["mlp_only_layers"] = json::array({0, 3});
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "'mlp_only_layers' entry 3", "layer index below 3"});
}

TEST_F(BadQwen3Dir, MissingKNorm) {
  rewrite_weights([](json& h, std::string&) { h.erase("model.layers.2.self_attn.k_norm.weight"); });
  expect_error([&] { Model::load(dir_); },
               {"missing tensor 'model.layers.2.self_attn.k_norm.weight'"});
}

TEST_F(BadQwen3Dir, SlidingWindowRefused) {
  config_["use_sliding_window"] = true;
  config_["sliding_window"] = 8;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "use_sliding_window", "not supported", "Qwen3MoeForCausalLM"});
}

TEST_F(BadQwen3Dir, DefaultsAreQwen3MoeConfigs) {
  // Without the fields, transformers' Qwen3MoeConfig gives 4 kv heads (not the query
  // heads) and norm_topk_prob false; intermediate_size only matters for dense layers.
  config_.erase("num_key_value_heads");
  config_.erase("norm_topk_prob");
  config_.erase("intermediate_size");
  const ModelConfig c = ModelConfig::from_json(config_, "config.json");
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_FALSE(c.router.renormalize);
  EXPECT_EQ(c.qk_norm, QkNorm::kPerHead);
  EXPECT_EQ(c.q_norm_size(), 24);
  EXPECT_EQ(c.k_norm_size(), 24);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  config_["mlp_only_layers"] = json::array({1});
  expect_error([&] { ModelConfig::from_json(config_, "config.json"); },
               {"config.json", "missing required field 'intermediate_size'"});
}

// --- DeepSeek-V2/V3: MLA shapes, routing methods, RoPE scaling ------------------

class BadDeepseekDir : public BadModelDir {
 protected:
  // V3: 3 layers (0 dense), 4 heads x (16 nope + 8 rope), kv_lora_rank 32, q_lora_rank
  // 32, v_head_dim 16, 16 experts in 4 groups, top-4.
  const char* source_case() const override { return "deepseek_v3"; }
};

TEST_F(BadDeepseekDir, ValidCopyLoads) {
  const auto m = Model::load(dir_);
  const ModelConfig& c = m->config();
  EXPECT_TRUE(c.is_mla());
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 32 + 8);
  EXPECT_EQ(c.rope_dim, 8);
  EXPECT_EQ(c.router.scoring, RouterScoring::kSigmoid);
  EXPECT_EQ(c.router.group_score, GroupScore::kTop2Sum);
  EXPECT_EQ(c.router.n_groups, 4);
  EXPECT_EQ(c.router.top_groups, 2);
  EXPECT_FLOAT_EQ(c.router.scale, 2.5f);
  EXPECT_TRUE(c.router.renormalize);
  EXPECT_EQ(c.layer_is_moe, (std::vector<uint8_t>{0, 1, 1}));
  EXPECT_FLOAT_EQ(c.mla.softmax_scale, 1.f / std::sqrt(24.f));
  EXPECT_EQ(kv_shape_of(c).v_dim, 32);
}

TEST_F(BadDeepseekDir, KvLoraRankContradictsWeights) {
  config_["kv_lora_rank"] = 24;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"'model.layers.0.self_attn.kv_a_proj_with_mqa.weight'", "has shape [40, 64]",
                "config implies [32, 64]", "kv_lora_rank 24 + qk_rope_head_dim 8"});
}

TEST_F(BadDeepseekDir, NullQLoraRankContradictsWeights) {
  config_["q_lora_rank"] = nullptr;  // means q_proj, but the checkpoint has q_a/q_b
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"missing tensor 'model.layers.0.self_attn.q_proj.weight'"});
}

TEST_F(BadDeepseekDir, MissingCorrectionBias) {
  rewrite_weights(
      [](json& h, std::string&) { h.erase("model.layers.1.mlp.gate.e_score_correction_bias"); });
  expect_error([&] { Model::load(dir_); },
               {"missing tensor 'model.layers.1.mlp.gate.e_score_correction_bias'"});
}

TEST_F(BadDeepseekDir, UnsupportedTopkMethod) {
  config_["topk_method"] = "greedy";  // DeepseekV3TopkRouter implements noaux_tc only
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "topk_method 'greedy'", "not supported", "noaux_tc"});
}

TEST_F(BadDeepseekDir, UnsupportedScoringFunc) {
  config_["scoring_func"] = "softmax";
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "scoring_func 'softmax'", "not supported", "sigmoid"});
}

TEST_F(BadDeepseekDir, UnsupportedRopeScalingType) {
  config_["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "rope_scaling type 'dynamic'", "not supported", "yarn"});
}

TEST_F(BadDeepseekDir, YarnAttentionFactorOtherThanOne) {
  // mscale != mscale_all_dim scales cos/sin (so q and k) by their ratio: refused.
  config_["rope_scaling"] = {{"type", "yarn"},
                             {"factor", 4.0},
                             {"mscale", 0.707},
                             {"mscale_all_dim", 1.0},
                             {"original_max_position_embeddings", 64}};
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "yarn", "attention_factor"});
}

TEST_F(BadDeepseekDir, GroupsDoNotDivideExperts) {
  config_["n_group"] = 3;
  config_["topk_group"] = 2;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "n_routed_experts (16)", "multiple of n_group (3)"});
}

TEST_F(BadDeepseekDir, MoeLayerFreqRefused) {
  config_["moe_layer_freq"] = 2;
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "moe_layer_freq 2", "not supported"});
}

TEST_F(BadDeepseekDir, KvHeadsOtherThanHeads) {
  config_["num_key_value_heads"] = 2;
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "num_key_value_heads (2)", "num_attention_heads (4)", "MLA"});
}

TEST_F(BadDeepseekDir, DefaultsAreDeepseekV3Configs) {
  // DeepseekV3Config's defaults: noaux_tc with sigmoid, 8 groups / best 4, norm_topk_prob,
  // routed_scaling_factor 2.5, 3 dense layers, rope_interleave; q_lora_rank 1536.
  for (const char* k : {"topk_method", "scoring_func", "n_group", "topk_group", "norm_topk_prob",
                        "routed_scaling_factor", "first_k_dense_replace", "q_lora_rank"})
    config_.erase(k);
  config_["n_routed_experts"] = 16;
  const ModelConfig c = ModelConfig::from_json(config_, "config.json");
  EXPECT_EQ(c.router.n_groups, 8);
  EXPECT_EQ(c.router.top_groups, 4);
  EXPECT_TRUE(c.router.renormalize);
  EXPECT_FLOAT_EQ(c.router.scale, 2.5f);
  EXPECT_EQ(c.layer_is_moe, (std::vector<uint8_t>{0, 0, 0}));
  EXPECT_EQ(c.mla.q_lora_rank, 1536);
  EXPECT_TRUE(c.mla.rope_pairs);
}

class BadDeepseekV2Dir : public BadModelDir {
 protected:
  const char* source_case() const override { return "deepseek_v2"; }
};

TEST_F(BadDeepseekV2Dir, UnsupportedTopkMethod) {
  config_["topk_method"] = "noaux_tc";
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "topk_method 'noaux_tc'", "DeepSeek-V2",
                                            "greedy, group_limited_greedy"});
}

TEST_F(BadDeepseekV2Dir, UnsupportedScoringFunc) {
  config_["scoring_func"] = "sigmoid";
  write_config();
  expect_error([&] { Model::load(dir_); },
               {"config.json", "scoring_func 'sigmoid'", "DeepSeek-V2", "softmax"});
}

TEST_F(BadDeepseekV2Dir, NormTopkProbRefused) {
  config_["norm_topk_prob"] = true;
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "norm_topk_prob", "DeepSeek-V2"});
}

TEST_F(BadDeepseekV2Dir, GroupLimitedNeedsGroups) {
  config_["topk_method"] = "group_limited_greedy";
  config_.erase("n_group");
  write_config();
  expect_error([&] { Model::load(dir_); }, {"config.json", "missing required field 'n_group'"});
}

TEST_F(BadDeepseekV2Dir, SharedExpertWidthContradictsWeights) {
  config_["n_shared_experts"] = 3;  // the checkpoint's shared experts are 2 x 32 wide
  write_config();
  expect_error([&] { Model::load(dir_); }, {"'model.layers.1.mlp.shared_experts.gate_proj.weight'",
                                            "has shape [64, 64]", "config implies [96, 64]"});
}

TEST(BadShardedDir, IndexNamesMissingShard) {
  const auto dir = test::temp_dir("bad_index");
  const auto src = test::reference_dir() / "mixtral_sharded";
  for (const auto& e : std::filesystem::directory_iterator(src))
    std::filesystem::copy(e.path(), dir / e.path().filename());
  std::filesystem::remove(dir / "model-00002-of-00003.safetensors");
  expect_error([&] { Model::load(dir); }, {"model-00002-of-00003.safetensors", "cannot open"});
}

TEST(BadShardedDir, IndexEscapingTheDirectory) {
  const auto dir = test::temp_dir("bad_index2");
  const auto src = test::reference_dir() / "mixtral_sharded";
  for (const auto& e : std::filesystem::directory_iterator(src))
    std::filesystem::copy(e.path(), dir / e.path().filename());
  json index = json::parse(test::read_file(dir / "model.safetensors.index.json"));
  index["weight_map"]["model.norm.weight"] = "../../etc/passwd";
  test::write_file(dir / "model.safetensors.index.json", index.dump());
  expect_error([&] { Model::load(dir); },
               {"model.safetensors.index.json", "not a file in the model directory"});
}

}  // namespace
}  // namespace ekva
