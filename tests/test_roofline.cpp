// The roofline model's host parts: ceilings (datasheet rows, JSON and its errors),
// the report's classification and expert test on a synthetic profile, and the
// planner on a synthetic model and hardware table, against figures worked out by
// hand.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "kv/profile.h"
#include "model/config.h"
#include "roofline/ceilings.h"
#include "roofline/hardware.h"
#include "roofline/planner.h"
#include "roofline/roofline_report.h"
#include "test_util.h"

namespace ekva {
namespace {

Ceilings synthetic_hardware() {
  Ceilings c;
  c.name = "synthetic";
  c.device = "test part";
  c.source = "test";
  c.memory_gb_per_s = 100;
  c.compute_gflop_per_s = 1000;  // ridge 10 FLOP/byte
  c.compute_kind = "f32";
  c.memory_bytes = 1e9;
  return c;
}

TEST(Ceilings, DatasheetRowsAndRoofs) {
  const Ceilings h200 = datasheet_ceilings("h200");
  EXPECT_DOUBLE_EQ(h200.memory_gb_per_s, 4800);
  EXPECT_DOUBLE_EQ(h200.compute_gflop_per_s, 989e3);  // bf16 dense
  EXPECT_DOUBLE_EQ(h200.memory_bytes, 141e9);
  EXPECT_NEAR(h200.ridge_flop_per_byte(), 206.0, 0.1);
  EXPECT_DOUBLE_EQ(datasheet_ceilings("cpu").compute_gflop_per_s, 768);  // f32 for the CPU
  for (const char* n : {"a100", "h100-sxm", "h100-pcie", "l40s", "rtx4090"})
    EXPECT_GT(datasheet_ceilings(n).ridge_flop_per_byte(), 50) << n;
  test::expect_error([] { datasheet_ceilings("tpu"); }, {"unknown hardware 'tpu'", "h200"});
  const Ceilings c = synthetic_hardware();
  EXPECT_DOUBLE_EQ(c.roof_gflop_per_s(1), 100);
  EXPECT_DOUBLE_EQ(c.roof_gflop_per_s(100), 1000);
  EXPECT_DOUBLE_EQ(c.roof_seconds(1e9, 1e9), 1e-2);
  EXPECT_DOUBLE_EQ(c.roof_seconds(1e6, 1e12), 1.0);
}

TEST(Ceilings, JsonRoundTripAndErrors) {
  const Ceilings c = datasheet_ceilings("l40s");
  const Ceilings d = Ceilings::from_json(c.to_json(), "c.json");
  EXPECT_EQ(d.to_json(), c.to_json());
  nlohmann::json j = c.to_json();
  j.erase("memory_gb_per_s");
  test::expect_error([&] { Ceilings::from_json(j, "c.json"); },
                     {"c.json", "missing field 'memory_gb_per_s'"});
  j = c.to_json();
  j["compute_gflop_per_s"] = -3;
  test::expect_error([&] { Ceilings::from_json(j, "c.json"); }, {"compute_gflop_per_s"});
  const auto dir = test::temp_dir("ceilings");
  test::write_file(dir / "bad.json", "{\"format\": ");
  test::expect_error([&] { Ceilings::load(dir / "bad.json"); }, {"bad.json", "not valid JSON"});
  test::expect_error([&] { Ceilings::load(dir / "none.json"); },
                     {"none.json", "cannot open ceilings file"});
}

TEST(Ceilings, ProbeMeasuresThisMachine) {
  ThreadPool pool(2);
  CpuProbeOptions o;
  o.runs = 2;
  o.read_bytes = 16 << 20;
  o.cache_read_bytes = 1 << 20;
  o.fma_iterations = 1 << 16;
  const Ceilings c = probe_cpu(pool, o);
  EXPECT_EQ(c.source, "measured");
  EXPECT_GT(c.memory_gb_per_s, 0.1);
  EXPECT_EQ(c.measurements["cache_sweep_gb_per_s"].size(), 1u);
  EXPECT_GT(c.compute_gflop_per_s, 1);
  EXPECT_GE(c.op_overhead_us, 0);
  EXPECT_GT(c.memory_bytes, 0);
  EXPECT_EQ(c.measurements["fma_gflop_per_s"]["rates"].size(), 2u);
}

TEST(RooflineReport, SpearmanRanks) {
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3}, {2, 4, 6}), 1);
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3}, {3, 2, 1}), -1);
  EXPECT_NEAR(spearman({1, 1, 2, 2}, {1, 2, 3, 4}), 4 / std::sqrt(20.0), 1e-12);  // ties
  EXPECT_TRUE(std::isnan(spearman({1, 1, 1}, {1, 2, 3})));
  EXPECT_TRUE(std::isnan(spearman({1, 2}, {1, 2})));
}

OpRecord record(const char* name, int layer, int expert, int64_t rows, double seconds, double bytes,
                double flops) {
  return {"decode", name, OpKind::kMatmul, layer, expert, 1, rows, seconds, bytes, flops};
}

TEST(RooflineReport, BoundsFractionsAndTheExpertTest) {
  OpProfile p;
  p.phases.push_back({"decode", 1, 1, 1, 1e-3, 0, 0, {1e-3}});
  // Intensity 1 at half the memory roof; intensity 100 at half the compute roof.
  p.ops.push_back(record("a", 0, -1, 1, 2e-5, 1e6, 1e6));
  p.ops.push_back(record("b", 0, -1, 1, 2e-4, 1e6, 1e8));
  // Four experts of layer 1 with 1..4 tokens a call: intensity grows with the tokens.
  for (int e = 0; e < 4; ++e) {
    p.ops.push_back(record("expert_gate", 1, e, e + 1, 1e-5, 1e5, 1e5 * (e + 1)));
    p.ops.push_back(record("expert_down", 1, e, e + 1, 1e-5, 1e5, 1e5 * (e + 1)));
  }
  p.ops.push_back(record("a", 0, -1, 1, 1, 1, 1));
  p.ops.back().phase = "prefill";
  // Entropy falls as the routing frequency (and so the tokens) rises.
  CalibrationProfile cal;
  cal.layers.resize(2);
  cal.layers[1].experts.resize(4);
  for (int e = 0; e < 4; ++e) {
    cal.layers[1].experts[static_cast<size_t>(e)].query_entropy = 4.0 - e;
    cal.layers[1].experts[static_cast<size_t>(e)].routing_top1_frequency = 0.1 * (e + 1);
  }
  const RooflineReport r = make_roofline_report(p, synthetic_hardware(), "decode", &cal);
  ASSERT_EQ(r.ops.size(), 4u);     // a, b, expert_gate, expert_down
  EXPECT_EQ(r.ops[0].label, "b");  // by time
  EXPECT_FALSE(r.ops[0].memory_bound);
  EXPECT_DOUBLE_EQ(r.ops[0].intensity, 100);
  EXPECT_DOUBLE_EQ(r.ops[0].roof_fraction, 0.5);
  const RooflinePoint& a = r.ops[3];
  EXPECT_EQ(a.label, "a");
  EXPECT_TRUE(a.memory_bound);
  EXPECT_DOUBLE_EQ(a.gb_per_s, 50);
  EXPECT_DOUBLE_EQ(a.roof_fraction, 0.5);
  EXPECT_EQ(a.calls, 1);  // the prefill record is not in this phase
  ASSERT_EQ(r.experts.size(), 4u);
  EXPECT_EQ(r.experts[2].rows, 3);  // an expert's tokens: its first matmul's, not summed
  EXPECT_DOUBLE_EQ(r.experts[2].bytes, 2e5);
  EXPECT_DOUBLE_EQ(r.experts[2].query_entropy, 2.0);
  EXPECT_DOUBLE_EQ(r.rho_entropy_intensity, -1);
  EXPECT_DOUBLE_EQ(r.rho_frequency_intensity, 1);
  ASSERT_EQ(r.layers.size(), 2u);
  EXPECT_DOUBLE_EQ(r.layers[0].seconds, 2.2e-4);
  const std::string md = r.markdown();
  EXPECT_NE(md.find("| b | matmul |"), std::string::npos);
  const std::string all = nlohmann::json(r.diagnosis).dump();
  EXPECT_NE(all.find("follows the tokens routed to it"), std::string::npos) << all;
  test::expect_error([&] { make_roofline_report(p, synthetic_hardware(), "mixed"); },
                     {"no ops in phase 'mixed'", "decode, prefill"});
}

// A Mixtral-shaped model small enough to cost by hand: hidden 64, 4 heads of 16 over
// 2 kv-heads, 8 experts of 128 (top 2), 2 layers, 384 tokens, bf16.
ModelConfig synthetic_model() {
  return ModelConfig::from_json(nlohmann::json::parse(R"({
    "architectures": ["MixtralForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "num_hidden_layers": 2, "num_local_experts": 8, "num_experts_per_tok": 2,
    "vocab_size": 384, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_theta": 1e6, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2})"),
                                "synthetic.json");
}

TEST(Planner, DecodeStepByHand) {
  const ModelConfig m = synthetic_model();
  Ceilings hw = synthetic_hardware();
  // Batch 1, 100 entries kept per (layer, kv-head). Bytes of each op (f32 activations):
  const double embed = 64 * (2 + 4) + 4;
  const double norm = 64 * 2 * 4 + 64 * 4;
  const double q = 64 * 64 * 2 + (64 + 64) * 4, kv = 32 * 64 * 2 + (64 + 32) * 4;
  const double rope = 4 * 16 * 8 + 2 * 16 * 8;
  const double attention = 2 * 100 * (2 * 16 * 2 + 4) + 4 * 16 * 2 * 4;
  const double o = q, add = 64 * 3 * 4;
  const double router = 8 * 64 * 2 + (64 + 8) * 4, route = 8 * 4 + 2 * 8;
  // One token to each of its 2 experts (8 (1 - (6/8)^1) = 2 touched, 1 token each):
  // gate and up read their row by id, act, down, the scatter back.
  const double expert = 2 * (128 * 64 * 2 + (64 + 128) * 4 + 4) + 128 * 3 * 4 +
                        (64 * 128 * 2 + (128 + 64) * 4) + (64 * 3 * 4 + 8);
  const double layer =
      norm + q + 2 * kv + rope + attention + o + add + norm + router + route + 2 * expert + add;
  const double lm_head = 384 * 64 * 2 + (64 + 384) * 4;
  const double bytes = embed + 2 * layer + norm + lm_head;
  const StepPrediction s = predict_decode_step(m, DType::kBF16, hw, 1, 100, DType::kBF16);
  EXPECT_DOUBLE_EQ(s.bytes, bytes);
  EXPECT_DOUBLE_EQ(s.experts_touched, 2);
  EXPECT_DOUBLE_EQ(s.kv_bytes, 2 * 2 * 100 * (2 * 16 * 2 + 4));
  // Every op is under the ridge (10 FLOP/byte) at one token: the step is its bytes at
  // 100 GB/s. 34 pool calls: per layer norm, q, k, v, 2 ropes, attention, o, norm,
  // router, 2 x 3 expert matmuls; then the final norm and the LM head.
  EXPECT_NEAR(s.seconds, bytes / 100e9, 1e-15);
  EXPECT_EQ(s.op_calls, 34);
  hw.op_overhead_us = 1;
  EXPECT_NEAR(predict_decode_step(m, DType::kBF16, hw, 1, 100, DType::kBF16).seconds,
              bytes / 100e9 + 34e-6, 1e-15);
  // Batch 4: 8 (1 - 0.75^4) experts touched per layer.
  EXPECT_NEAR(predict_decode_step(m, DType::kBF16, hw, 4, 100, DType::kBF16).experts_touched,
              8 * (1 - std::pow(0.75, 4)), 1e-12);
  // A step that fits in the cache is read at the cache's rate.
  hw.op_overhead_us = 0;
  hw.cache_gb_per_s = 1000;
  hw.cache_bytes = 64e6;
  const StepPrediction cached = predict_decode_step(m, DType::kBF16, hw, 1, 100, DType::kBF16);
  EXPECT_DOUBLE_EQ(cached.memory_gb_per_s, 1000);
  EXPECT_LT(cached.seconds, s.seconds);
}

TEST(Planner, KernelRatesBoundMatmulAndAttention) {
  const ModelConfig m = synthetic_model();
  Ceilings hw = synthetic_hardware();
  const StepPrediction roofs = predict_decode_step(m, DType::kBF16, hw, 1, 100, DType::kBF16);
  EXPECT_FALSE(roofs.kernel_rates);
  // Kernels measured at this model's shapes, far below the roofs: matmuls compute at
  // 1 GFLOP/s and read weights at the full bandwidth; attention reads K/V at 1 GB/s.
  KernelRates& k = hw.kernels;
  k.matmul_k = 64;
  k.matmul_n = 64;
  k.matmul_tokens = {1, 64};
  k.matmul_gflop_per_s = {1, 1};
  k.matmul_stream_gb_per_s = {100, 100};
  k.head_dim = 16;
  k.group = 2;
  k.attention_gb_per_s = 1;
  EXPECT_EQ(Ceilings::from_json(hw.to_json(), "k.json").to_json(), hw.to_json());
  const StepPrediction bounded = predict_decode_step(m, DType::kBF16, hw, 1, 100, DType::kBF16);
  EXPECT_TRUE(bounded.kernel_rates);
  // The two layers' attention alone now takes its bytes at 1 GB/s.
  const double attention_bytes = 2 * 100 * (2 * 16 * 2 + 4) + 4 * 16 * 2 * 4;
  EXPECT_GT(bounded.seconds, 2 * attention_bytes / 1e9);
  EXPECT_GT(bounded.seconds, 10 * roofs.seconds);
  // Rates at another model's shapes are not used.
  k.matmul_k = 4096;
  k.head_dim = 128;
  EXPECT_FALSE(predict_decode_step(m, DType::kBF16, hw, 1, 100, DType::kBF16).kernel_rates);
  EXPECT_DOUBLE_EQ(k.matmul_rate(8), 1);
  k.matmul_gflop_per_s = {1, 7};
  EXPECT_DOUBLE_EQ(k.matmul_rate(8), 4);  // halfway in log(tokens)
  k.matmul_cache_stream_gb_per_s = {300, 500};
  EXPECT_DOUBLE_EQ(k.matmul_stream_rate(8, true), 400);
  EXPECT_DOUBLE_EQ(k.matmul_stream_rate(8, false), 100);
}

TEST(Planner, BudgetForATargetMemoryAndLargestBatch) {
  const ModelConfig m = synthetic_model();
  const Ceilings hw = synthetic_hardware();
  const auto step = [&](int64_t batch, int64_t kept) {
    return predict_decode_step(m, DType::kBF16, hw, batch, static_cast<double>(kept), DType::kBF16)
        .seconds;
  };
  PlanRequest q;
  q.context = 4096;
  q.batch = 8;
  // A target just above the step at 1000 entries: 1000 is the largest budget meeting it.
  q.tpot_ms = (step(8, 1000) + 1e-10) * 1e3;
  const Plan p = plan_decode(m, hw, q);
  EXPECT_EQ(p.kept, 1000);
  EXPECT_FALSE(p.full_cache_meets_target);
  EXPECT_DOUBLE_EQ(p.budget_fraction, 1000.0 / 4096);
  EXPECT_DOUBLE_EQ(p.kv_bytes_per_sequence, 2 * 2 * 1000 * 2 * 16 * 2);
  EXPECT_DOUBLE_EQ(p.weight_bytes, model_weight_bytes(m, DType::kBF16));
  EXPECT_DOUBLE_EQ(p.memory_bytes, p.weight_bytes + 8 * p.kv_bytes_per_sequence);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.max_batch_memory,
            static_cast<int64_t>((0.9e9 - p.weight_bytes) / p.kv_bytes_per_sequence));
  EXPECT_DOUBLE_EQ(p.tokens_per_second, 8 / step(8, 1000));
  // The largest batch meeting the target at this budget: it does, one more does not.
  ASSERT_GE(p.max_batch_target, 8);
  EXPECT_LE(step(p.max_batch_target, 1000), q.tpot_ms * 1e-3);
  EXPECT_GT(step(p.max_batch_target + 1, 1000), q.tpot_ms * 1e-3);
  // A generous target: the full cache.
  q.tpot_ms = 1e3;
  EXPECT_TRUE(plan_decode(m, hw, q).full_cache_meets_target);
  EXPECT_EQ(plan_decode(m, hw, q).kept, 4096);
  // Without a target, the budget asked for.
  q.tpot_ms = 0;
  q.budget = 0.1;
  EXPECT_EQ(plan_decode(m, hw, q).kept, 410);
  // Impossible: below what the weights alone take.
  q.tpot_ms = 1e-6;
  test::expect_error([&] { plan_decode(m, hw, q); },
                     {"cannot be met at batch 8", "36 protected entries"});
  q.tpot_ms = 0;
  q.context = 0;
  test::expect_error([&] { plan_decode(m, hw, q); }, {"--context"});
}

TEST(Planner, WeightBytesOfTheShippedModel) {
  const ModelConfig m = ModelConfig::from_file(std::filesystem::path(EKVA_SOURCE_DIR) /
                                               "models/ekva-moe-tiny/config.json");
  // The checkpoint's bf16 tensors (tied embeddings, norms in bf16 as well): 46.8 MB.
  EXPECT_NEAR(model_weight_bytes(m, DType::kBF16) / 1e6, 46.8, 0.1);
}

}  // namespace
}  // namespace ekva
