// The multi-GPU placement plan (runtime/placement.h): every routed expert on exactly
// one device, at most ceil(E / N) a device, the largest loads spread (against the
// optimum on hand-made loads), kv-heads split in equal ranges, bytes conserved on the
// shipped model with its calibration profile; clear errors for what cannot split.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>

#include "kv/profile.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "runtime/placement.h"
#include "test_util.h"

namespace ekva {
namespace {

const std::filesystem::path kModel =
    std::filesystem::path(EKVA_SOURCE_DIR) / "models" / "ekva-moe-tiny";

std::vector<TensorBytes> tensors_of(const std::filesystem::path& dir) {
  const TensorStore store = TensorStore::open_model_dir(dir);
  std::vector<TensorBytes> out;
  for (const std::string& n : store.names()) out.push_back({n, store.get(n).nbytes});
  return out;
}

TEST(Placement, ShippedModelSplitsOverItsKvHeads) {
  const ModelConfig c = ModelConfig::from_file(kModel / "config.json");
  const auto tensors = tensors_of(kModel);
  const CalibrationProfile profile = CalibrationProfile::load(
      std::filesystem::path(EKVA_SOURCE_DIR) / "bench/results/profile_ekva-moe-tiny.json", c);
  for (const int N : {1, 2}) {  // its 2 kv-heads
    const PlacementPlan p = plan_placement(c, tensors, &profile, N);
    ASSERT_EQ(p.devices.size(), static_cast<size_t>(N));
    EXPECT_EQ(p.load_source, "calibration profile (top-1 routing share)");
    // kv-heads: equal consecutive ranges covering all.
    for (int d = 0; d < N; ++d) {
      EXPECT_EQ(p.devices[static_cast<size_t>(d)].kv_head_begin, d * c.n_kv_heads / N);
      EXPECT_EQ(p.devices[static_cast<size_t>(d)].kv_head_end, (d + 1) * c.n_kv_heads / N);
    }
    // Every expert of every layer exactly once, at most E / N a device.
    const int E = c.router.n_experts;
    for (int l = 0; l < c.n_layers; ++l) {
      std::multiset<int> all;
      for (const DevicePlacement& dev : p.devices) {
        EXPECT_LE(static_cast<int>(dev.experts[static_cast<size_t>(l)].size()), E / N);
        all.insert(dev.experts[static_cast<size_t>(l)].begin(),
                   dev.experts[static_cast<size_t>(l)].end());
      }
      std::vector<int> want(static_cast<size_t>(E));
      std::iota(want.begin(), want.end(), 0);
      EXPECT_EQ(std::vector<int>(all.begin(), all.end()), want) << "layer " << l;
      EXPECT_GE(p.layer_imbalance[static_cast<size_t>(l)], 1.0 - 1e-9);
    }
    // Bytes: the split parts once, the replicated part on every device.
    size_t held = 0;
    for (const DevicePlacement& dev : p.devices) held += dev.weight_bytes;
    EXPECT_EQ(held, p.total_bytes + static_cast<size_t>(N - 1) * p.replicated_bytes);
    size_t total = 0;
    for (const TensorBytes& t : tensors) total += t.bytes;
    EXPECT_EQ(p.total_bytes, total);
    if (N == 1) {
      EXPECT_DOUBLE_EQ(p.max_imbalance(), 1.0);
    }
  }
}

// Hand-made loads: 8 experts over 2 devices, 4 each. Largest first onto the lighter
// device: 0.30 A, 0.20 B, 0.15 B, 0.10 A (expert 0), 0.10 B (expert 6), 0.06 A, 0.05 B
// (A 0.46 > B 0.45), 0.04 A: {0.30, 0.10, 0.06, 0.04} and {0.20, 0.15, 0.10, 0.05},
// 0.50 each, the optimum. Round-robin by index would give 0.40 / 0.60.
TEST(Placement, BalancesMeasuredLoadsWithinCapacity) {
  ModelConfig c = ModelConfig::from_file(kModel / "config.json");
  ASSERT_EQ(c.router.n_experts, 8);
  CalibrationProfile profile;
  profile.n_layers = c.n_layers;
  profile.n_kv_heads = c.n_kv_heads;
  profile.n_experts = 8;
  profile.layers.resize(static_cast<size_t>(c.n_layers));
  const double loads[8] = {0.10, 0.30, 0.04, 0.20, 0.06, 0.15, 0.10, 0.05};
  for (auto& L : profile.layers) {
    L.experts.resize(8);
    for (int e = 0; e < 8; ++e) L.experts[static_cast<size_t>(e)].routing_top1_frequency = loads[e];
  }
  const PlacementPlan p = plan_placement(c, {}, &profile, 2);
  const size_t moe = static_cast<size_t>(
      std::find_if(c.layer_is_moe.begin(), c.layer_is_moe.end(), [](auto v) { return v != 0; }) -
      c.layer_is_moe.begin());
  ASSERT_LT(moe, static_cast<size_t>(c.n_layers));
  EXPECT_EQ(p.devices[0].experts[moe], (std::vector<int>{0, 1, 2, 4}));
  EXPECT_EQ(p.devices[1].experts[moe], (std::vector<int>{3, 5, 6, 7}));
  EXPECT_NEAR(p.devices[0].load[moe], 0.50, 1e-9);
  EXPECT_NEAR(p.layer_imbalance[moe], 1.0, 1e-9);
  // Without a profile: uniform loads, perfectly balanced (over 4, as if it had 4 kv-heads).
  c.n_kv_heads = 4;
  const PlacementPlan u = plan_placement(c, {}, nullptr, 4);
  EXPECT_EQ(u.load_source, "uniform");
  EXPECT_NEAR(u.max_imbalance(), 1.0, 1e-9);
}

TEST(Placement, WhatCannotSplitIsAnError) {
  ModelConfig c = ModelConfig::from_file(kModel / "config.json");
  test::expect_error([&] { plan_placement(c, {}, nullptr, 0); }, {"at least 1"});
  test::expect_error([&] { plan_placement(c, {}, nullptr, 3); },
                     {"kv-heads do not split evenly over 3 devices"});
  ModelConfig wide = c;
  wide.n_kv_heads = 16;  // heads would split; its 8 experts would not
  test::expect_error([&] { plan_placement(wide, {}, nullptr, 16); },
                     {"16 devices but only 8 experts"});
  CalibrationProfile other;
  other.n_layers = c.n_layers + 1;
  other.n_experts = c.router.n_experts;
  test::expect_error([&] { plan_placement(c, {}, &other, 2); }, {"calibration profile"});
}

}  // namespace
}  // namespace ekva
