// The profile mode (ops/profiling_backend.h) on real forward passes: the per-op times
// add up to the measured step time, every op call has a named site, expert FFNs are
// recorded per expert at the tokens routed to them, the recorded bytes are the ops'
// cost(), profiling changes no result, and the profile survives its JSON form.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "cpu/cpu_backend.h"
#include "ekva/ekva.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "ops/profiling_backend.h"
#include "test_util.h"

namespace ekva {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

const std::filesystem::path kModel =
    std::filesystem::path(EKVA_SOURCE_DIR) / "models/ekva-moe-tiny";

// Prefill of `prompt` tokens, then `steps` decode steps, each a profile step.
void run_profiled(const Model& model, ProfilingBackend& profiler, int prompt, int steps,
                  std::vector<float>* last_logits = nullptr) {
  const ModelConfig& c = model.config();
  FullKvCache cache(kv_cache_shape(c), prompt + steps + 1);
  Activations act(c, profiler, {.max_sequences = 1, .max_tokens = prompt});
  std::vector<int32_t> tokens(static_cast<size_t>(prompt));
  for (int i = 0; i < prompt; ++i) tokens[static_cast<size_t>(i)] = (1 + 37 * i) % c.vocab_size;
  int32_t next = 5;
  for (int s = 0; s <= steps; ++s) {
    const SequenceStep st =
        s == 0 ? SequenceStep{&cache, tokens} : SequenceStep{&cache, {&next, 1}};
    profiler.begin_step(s == 0 ? "prefill" : "decode", 1, static_cast<int64_t>(st.tokens.size()));
    model.forward({&st, 1}, act, profiler);
    profiler.end_step();
    next = (100 + 37 * s) % c.vocab_size;
  }
  if (last_logits != nullptr)
    last_logits->assign(act.host_logits(), act.host_logits() + c.vocab_size);
}

TEST(OpProfile, OpTimesAddUpToTheStepTime) {
  const auto model = Model::load(kModel);
  ProfilingBackend profiler(test::cpu());
  run_profiled(*model, profiler, 64, 12);
  const OpProfile p = profiler.profile();
  ASSERT_EQ(p.phases.size(), 2u);
  for (const PhaseTotals& t : p.phases) {
    double ops = 0;
    for (const OpRecord& r : p.ops)
      if (r.phase == t.phase) ops += r.seconds;
    EXPECT_NEAR(ops, t.op_seconds, 1e-9 * t.op_seconds) << t.phase;
    // The ops are most of the step; what is left is host work between them (cache
    // appends and views, grouping tokens per expert) and the profiler's bookkeeping.
    EXPECT_LE(t.op_seconds + t.profiler_seconds, t.wall_seconds) << t.phase;
    // (Under AddressSanitizer the host work between ops slows far more than the SIMD
    // kernels, and the share falls to about 0.6: only the optimised build checks it.)
    if (!kSanitized) {
      EXPECT_GE(t.op_seconds, 0.75 * t.wall_seconds) << t.phase;
    }
    double steps = 0;
    for (double s : t.step_seconds) steps += s;
    EXPECT_NEAR(steps, t.wall_seconds, 1e-9 * t.wall_seconds);
  }
  EXPECT_EQ(p.phases[0].phase, "decode");
  EXPECT_EQ(p.phases[0].steps, 12);
  EXPECT_EQ(p.phases[1].phase, "prefill");
  EXPECT_EQ(p.phases[1].tokens, 64);
}

TEST(OpProfile, RecordsEveryOpPerLayerAndExpertAtItsCost) {
  const auto model = Model::load(kModel);
  const ModelConfig& c = model->config();
  ProfilingBackend profiler(test::cpu());
  std::vector<float> profiled, plain;
  run_profiled(*model, profiler, 16, 3, &profiled);
  const OpProfile p = profiler.profile();
  std::map<std::pair<std::string, int>, int64_t> expert_tokens;  // (phase, layer)
  std::set<std::string> names;
  for (const OpRecord& r : p.ops) {
    EXPECT_FALSE(r.name.empty()) << "an op call without a site: " << op_kind_name(r.kind);
    EXPECT_GT(r.bytes, 0) << r.name;
    names.insert(r.name);
    if (r.name == "expert_gate") {
      EXPECT_GE(r.expert, 0);
      expert_tokens[{r.phase, r.layer}] += r.rows;
    }
    if (r.name == "attention" || r.name == "q_proj") {
      EXPECT_EQ(r.calls, r.phase == "decode" ? 3 : 1) << r.name << " layer " << r.layer;
    }
    if (r.name == "lm_head" && r.phase == "decode") {
      // One row of logits per step: the LM head's cost at one token, three times.
      const MatmulParams lm{nullptr, 1, nullptr, model->weights().lm_head, nullptr, c.vocab_size};
      EXPECT_DOUBLE_EQ(r.bytes, 3 * lm.cost().bytes);
      EXPECT_DOUBLE_EQ(r.flops, 3 * lm.cost().flops);
    }
  }
  // Every token goes to top_k experts in every layer.
  for (int layer = 0; layer < c.n_layers; ++layer) {
    EXPECT_EQ((expert_tokens[{"prefill", layer}]), 16 * c.router.top_k);
    EXPECT_EQ((expert_tokens[{"decode", layer}]), 3 * c.router.top_k);
  }
  for (const char* n :
       {"embed",      "attn_norm",   "q_proj",         "k_proj",       "v_proj",
        "rope_q",     "rope_k",      "attention",      "o_proj",       "attn_residual",
        "ffn_norm",   "router",      "route",          "expert_gate",  "expert_up",
        "expert_act", "expert_down", "expert_scatter", "ffn_residual", "final_norm",
        "lm_head"})
    EXPECT_TRUE(names.count(n)) << n;

  // The profiled pass computes what the plain one does.
  const ModelConfig& cc = model->config();
  FullKvCache cache({cc.n_layers, cc.n_kv_heads, cc.head_dim}, 32);
  Activations act(cc, test::cpu(), {.max_sequences = 1, .max_tokens = 16});
  std::vector<int32_t> tokens(16);
  for (int i = 0; i < 16; ++i) tokens[static_cast<size_t>(i)] = (1 + 37 * i) % cc.vocab_size;
  int32_t next = 5;
  for (int s = 0; s <= 3; ++s) {
    const SequenceStep st =
        s == 0 ? SequenceStep{&cache, tokens} : SequenceStep{&cache, {&next, 1}};
    model->forward({&st, 1}, act, test::cpu());
    next = (100 + 37 * s) % cc.vocab_size;
  }
  plain.assign(act.host_logits(), act.host_logits() + cc.vocab_size);
  EXPECT_EQ(plain, profiled);
}

TEST(OpProfile, SitesOfEveryArchitecture) {
  // Shared experts (Qwen2-MoE), q/k norms and clipping (OLMoE), dense MLPs (Llama).
  const std::map<std::string, std::vector<std::string>> want = {
      {"qwen2_moe", {"shared_gate", "shared_down", "shared_expert_gate", "shared_add"}},
      {"olmoe_clip", {"q_norm", "k_norm", "clip_qkv"}},
      {"llama", {"mlp_gate", "mlp_up", "mlp_act", "mlp_down"}}};
  for (const auto& [arch, names] : want) {
    const auto model = Model::load(test::reference_dir() / arch);
    ProfilingBackend profiler(test::cpu());
    run_profiled(*model, profiler, 5, 1);
    std::set<std::string> seen;
    for (const OpRecord& r : profiler.profile().ops) {
      EXPECT_FALSE(r.name.empty()) << arch << ": " << op_kind_name(r.kind);
      seen.insert(r.name);
    }
    for (const std::string& n : names) EXPECT_TRUE(seen.count(n)) << arch << ": " << n;
  }
}

TEST(OpProfile, JsonRoundTripAndBadInput) {
  const auto model = Model::load(kModel);
  ProfilingBackend profiler(test::cpu());
  run_profiled(*model, profiler, 4, 2);
  const OpProfile p = profiler.profile();
  const OpProfile q = OpProfile::from_json(p.to_json(), "p.json");
  ASSERT_EQ(q.ops.size(), p.ops.size());
  EXPECT_EQ(q.to_json(), p.to_json());
  nlohmann::json j = p.to_json();
  j["ops"][3].erase("flops");
  test::expect_error([&] { OpProfile::from_json(j, "p.json"); },
                     {"p.json", "missing field 'ops[3].flops'"});
  j = p.to_json();
  j["ops"][0]["kind"] = "conv2d";
  test::expect_error([&] { OpProfile::from_json(j, "p.json"); }, {"unknown op kind 'conv2d'"});
  j["format"] = "ekva-ceilings";
  test::expect_error([&] { OpProfile::from_json(j, "p.json"); }, {"p.json", "format"});
}

TEST(OpProfile, EngineProfilesGenerate) {
  EngineOptions o;
  o.profile_ops = true;
  const auto engine = Engine::open(kModel, o);
  engine->generate("The kernel", {.max_new_tokens = 4, .stop_at_eos = false}, nullptr);
  const OpProfile p = OpProfile::from_json(nlohmann::json::parse(engine->op_profile_json()), "e");
  int64_t decode_steps = 0;
  for (const PhaseTotals& t : p.phases)
    if (t.phase == "decode") decode_steps = t.steps;
  EXPECT_EQ(decode_steps, 3);  // the first token comes from the prefill's logits
  EXPECT_EQ(Engine::open(kModel)->op_profile_json(), "");
}

}  // namespace
}  // namespace ekva
