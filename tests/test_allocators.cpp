// Allocators: on random inputs of their granularity (segment counts, live counts,
// budgets of 0, tiny, and more than all live entries) every allocator keeps
// 0 <= budget <= live entries per segment, sums to min(evictable budget, live entries)
// and gives the same answer twice; each follows its own rule (uniform: equal shares;
// pyramidkv: the reference schedule; adakv: the layer's top scores above a floor;
// ekva-entropy: proportional to its weight; ekva-mass: the brute-force optimum of kept
// mass); bad names, profiles and inputs fail naming the problem.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "ekva/error.h"
#include "kv/allocator.h"

#include "test_util.h"

namespace ekva {
namespace {

constexpr std::array<const char*, 7> kNames = {"uniform",   "pyramidkv",  "adakv", "ekva-entropy",
                                               "ekva-mass", "ekva-joint", "headkv"};

using test::expect_error;

int64_t total(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

int64_t total(const Allocation& a) {
  int64_t sum = 0;
  for (const auto& layer : a) sum += total(layer);
  return sum;
}

int64_t live_entries(const AllocationInput& in) {
  int64_t sum = 0;
  for (const auto& layer : in.segments)
    for (const SegmentInfo& s : layer) sum += s.n_entries;
  return sum;
}

// ---- Inputs ----

void add_segment(AllocationInput& in, int layer, int head, int expert, int64_t live) {
  SegmentInfo s;
  s.id = static_cast<int>(in.segments[static_cast<size_t>(layer)].size());
  s.key = {layer, head, expert};
  s.n_entries = live;
  in.segments[static_cast<size_t>(layer)].push_back(s);
}

AllocationInput empty_input(int n_layers, int n_kv_heads, int n_experts, int64_t budget) {
  AllocationInput in;
  in.n_layers = n_layers;
  in.n_kv_heads = n_kv_heads;
  in.n_experts = n_experts;
  in.evictable_budget = budget;
  in.segments.resize(static_cast<size_t>(n_layers));
  return in;
}

// live[l]: one segment per layer (none where 0).
AllocationInput per_layer(const std::vector<int64_t>& live, int64_t budget) {
  AllocationInput in = empty_input(static_cast<int>(live.size()), 1, 0, budget);
  for (size_t l = 0; l < live.size(); ++l)
    if (live[l] > 0) add_segment(in, static_cast<int>(l), kAllHeads, kAllExperts, live[l]);
  return in;
}

// live[l][h]: one segment per (layer, kv-head) (none where 0).
AllocationInput per_head(const std::vector<std::vector<int64_t>>& live, int64_t budget) {
  size_t heads = 1;
  for (const auto& layer : live) heads = std::max(heads, layer.size());
  AllocationInput in =
      empty_input(static_cast<int>(live.size()), static_cast<int>(heads), 0, budget);
  for (size_t l = 0; l < live.size(); ++l)
    for (size_t h = 0; h < live[l].size(); ++h)
      if (live[l][h] > 0)
        add_segment(in, static_cast<int>(l), static_cast<int>(h), kAllExperts, live[l][h]);
  return in;
}

// ---- Profiles ----

CoverageCurve linear_curve() { return {{0.f, 1.f}, {0.f, 1.f}}; }

// A concave curve of `points` segments: random masses of equal-width groups of
// entries, sorted descending, accumulated. Fractions i / points are exact in float.
CoverageCurve random_curve(std::mt19937_64& rng, int points) {
  std::uniform_real_distribution<double> u(0.05, 1.0);
  std::vector<double> mass(static_cast<size_t>(points));
  const double skew = std::uniform_real_distribution<double>(0.5, 4.0)(rng);
  for (double& m : mass) m = std::pow(u(rng), skew);
  std::sort(mass.begin(), mass.end(), std::greater<double>());
  const double sum = std::accumulate(mass.begin(), mass.end(), 0.0);
  CoverageCurve c{{0.f}, {0.f}};
  double covered = 0;
  for (int i = 0; i < points; ++i) {
    covered += mass[static_cast<size_t>(i)];
    c.fraction_kept.push_back(static_cast<float>(i + 1) / static_cast<float>(points));
    c.mass_covered.push_back(i + 1 == points ? 1.f : static_cast<float>(covered / sum));
  }
  return c;
}

ExpertStats expert_stats(double entries_fraction, double mass, double entropy, double frequency,
                         CoverageCurve curve) {
  ExpertStats e;
  e.entries_fraction = entries_fraction;
  e.mass_received = mass;
  e.query_entropy = entropy;
  e.routing_top1_frequency = frequency;
  e.coverage = std::move(curve);
  return e;
}

LayerStats moe_layer(std::vector<ExpertStats> experts, CoverageCurve all = linear_curve()) {
  LayerStats l;
  l.moe = true;
  l.experts = std::move(experts);
  l.all.entries_fraction = l.all.mass_received = 1;
  l.all.coverage = std::move(all);
  return l;
}

LayerStats dense_layer(CoverageCurve all = linear_curve()) {
  LayerStats l;
  l.all.entries_fraction = l.all.mass_received = 1;
  l.all.coverage = std::move(all);
  return l;
}

CalibrationProfile make_profile(int n_kv_heads, int n_experts, std::vector<LayerStats> layers) {
  CalibrationProfile p;
  p.architecture = "MixtralForCausalLM";
  p.n_layers = static_cast<int>(layers.size());
  p.n_kv_heads = n_kv_heads;
  p.n_experts = n_experts;
  p.layers = std::move(layers);
  return p;
}

// Random expert statistics of one MoE layer: shares summing to one (some experts never
// tagged in calibration), entropies, frequencies, concave curves.
LayerStats random_moe_layer(std::mt19937_64& rng, int n_experts) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<double> entries(static_cast<size_t>(n_experts)), mass(entries.size());
  for (size_t e = 0; e < entries.size(); ++e) {
    entries[e] = u(rng) < 0.15 ? 0.0 : u(rng);
    mass[e] = entries[e] == 0 ? 0.0 : u(rng) * u(rng);
  }
  const double entries_sum = std::max(1e-9, std::accumulate(entries.begin(), entries.end(), 0.0));
  const double mass_sum = std::max(1e-9, std::accumulate(mass.begin(), mass.end(), 0.0));
  std::vector<ExpertStats> experts;
  for (size_t e = 0; e < entries.size(); ++e)
    experts.push_back(expert_stats(entries[e] / entries_sum, mass[e] / mass_sum, 4 * u(rng),
                                   entries[e] / entries_sum,
                                   random_curve(rng, 1 + static_cast<int>(rng() % 6))));
  return moe_layer(std::move(experts), random_curve(rng, 1 + static_cast<int>(rng() % 6)));
}

// ---- Random cases of every granularity ----

struct Case {
  AllocationInput input;
  CalibrationProfile profile;
};

int64_t random_live(std::mt19937_64& rng) {
  switch (rng() % 4) {
    case 0:
      return 1 + static_cast<int64_t>(rng() % 3);
    case 1:
    case 2:
      return 1 + static_cast<int64_t>(rng() % 200);
    default:
      return 1 + static_cast<int64_t>(rng() % 5000);
  }
}

// Fills `c` in place (input.profile points into it).
void random_case(std::mt19937_64& rng, Granularity granularity, Case& c) {
  const int n_layers = 1 + static_cast<int>(rng() % 6);
  const int n_kv_heads = 1 + static_cast<int>(rng() % 4);
  const int n_experts = rng() % 4 == 0 ? 0 : 2 + static_cast<int>(rng() % 7);
  c.input = empty_input(n_layers, n_kv_heads, n_experts, 0);
  std::vector<LayerStats> layers;
  for (int l = 0; l < n_layers; ++l)
    layers.push_back(n_experts > 0 && rng() % 4 != 0 ? random_moe_layer(rng, n_experts)
                                                     : dense_layer(random_curve(rng, 4)));
  const auto present = [&] { return rng() % 8 != 0; };  // some segments are empty
  for (int l = 0; l < n_layers; ++l) {
    const bool moe = layers[static_cast<size_t>(l)].moe;
    switch (granularity) {
      case Granularity::kPerLayer:
        if (present()) add_segment(c.input, l, kAllHeads, kAllExperts, random_live(rng));
        break;
      case Granularity::kPerHead:
        for (int h = 0; h < n_kv_heads; ++h)
          if (present()) add_segment(c.input, l, h, kAllExperts, random_live(rng));
        break;
      case Granularity::kPerExpert:
        for (int e = 0; moe && e < n_experts; ++e)
          if (present()) add_segment(c.input, l, kAllHeads, e, random_live(rng));
        if (!moe || rng() % 3 == 0) add_segment(c.input, l, kAllHeads, kNoExpert, random_live(rng));
        break;
      case Granularity::kPerHeadExpert:
        for (int h = 0; h < n_kv_heads; ++h) {
          for (int e = 0; moe && e < n_experts; ++e)
            if (present()) add_segment(c.input, l, h, e, random_live(rng));
          if (!moe || rng() % 3 == 0) add_segment(c.input, l, h, kNoExpert, random_live(rng));
        }
        break;
    }
  }
  // Scores on a coarse grid, so that ties between heads and entries occur.
  c.input.live_scores.resize(c.input.segments.size());
  for (size_t l = 0; l < c.input.segments.size(); ++l)
    for (const SegmentInfo& s : c.input.segments[l]) {
      std::vector<float> scores(static_cast<size_t>(s.n_entries));
      for (float& v : scores) v = static_cast<float>(rng() % 64) / 16.f;
      c.input.live_scores[l].push_back(std::move(scores));
    }
  const int64_t live = live_entries(c.input);
  const std::array<int64_t, 6> budgets = {
      0,    1 + static_cast<int64_t>(rng() % 3),          static_cast<int64_t>(rng() % (live + 1)),
      live, live + 1 + static_cast<int64_t>(rng() % 100), 10 * live + 7};
  c.input.evictable_budget = budgets[rng() % budgets.size()];
  // Retrieval masses per kv-head (headkv), some zero.
  for (LayerStats& L : layers) {
    L.head_retrieval.resize(static_cast<size_t>(n_kv_heads));
    for (double& r : L.head_retrieval)
      r = rng() % 3 == 0 ? 0.0 : static_cast<double>(rng() % 100) / 200;
  }
  c.profile = make_profile(n_kv_heads, n_experts, std::move(layers));
  c.input.profile = &c.profile;
}

// The allocation has the input's shape, 0 <= budget <= live per segment, and uses the
// whole budget the live entries allow.
void expect_valid(const AllocationInput& in, const Allocation& a) {
  ASSERT_EQ(a.size(), in.segments.size());
  for (size_t l = 0; l < a.size(); ++l) {
    ASSERT_EQ(a[l].size(), in.segments[l].size()) << "layer " << l;
    for (size_t i = 0; i < a[l].size(); ++i) {
      EXPECT_GE(a[l][i], 0) << "layer " << l << " segment " << i;
      EXPECT_LE(a[l][i], in.segments[l][i].n_entries) << "layer " << l << " segment " << i;
    }
  }
  EXPECT_EQ(total(a), std::min(in.evictable_budget, live_entries(in)));
}

TEST(Allocators, InvariantsOnRandomInputs) {
  std::mt19937_64 rng(20240611);
  for (const char* name : kNames) {
    const auto allocator = make_allocator(name);
    for (int trial = 0; trial < 400; ++trial) {
      SCOPED_TRACE(fmt::format("{} trial {}", name, trial));
      Case c;
      random_case(rng, allocator->granularity(), c);
      const Allocation a = allocator->allocate(c.input);
      expect_valid(c.input, a);
      EXPECT_EQ(a, allocator->allocate(c.input)) << "not deterministic";
      if (::testing::Test::HasFailure()) return;
    }
  }
}

TEST(Allocators, NamesAndNeeds) {
  for (const char* name : kNames) EXPECT_EQ(make_allocator(name)->name(), name);
  EXPECT_EQ(make_allocator("uniform")->granularity(), Granularity::kPerHead);
  EXPECT_EQ(make_allocator("pyramidkv")->granularity(), Granularity::kPerLayer);
  EXPECT_EQ(make_allocator("adakv")->granularity(), Granularity::kPerHead);
  EXPECT_EQ(make_allocator("ekva-entropy")->granularity(), Granularity::kPerExpert);
  EXPECT_EQ(make_allocator("ekva-mass")->granularity(), Granularity::kPerExpert);
  EXPECT_EQ(make_allocator("ekva-joint")->granularity(), Granularity::kPerHeadExpert);
  EXPECT_EQ(make_allocator("headkv")->granularity(), Granularity::kPerHead);
  for (const char* name : kNames) {
    const auto a = make_allocator(name);
    EXPECT_EQ(a->needs_profile(),
              std::string(name).starts_with("ekva-") || std::string(name) == "headkv")
        << name;
    EXPECT_EQ(a->needs_live_scores(),
              std::string(name) == "adakv" || std::string(name) == "ekva-joint")
        << name;
  }
}

// ---- water_fill ----

TEST(WaterFill, ProportionalCappedAndExact) {
  const std::vector<double> w = {1, 2, 3, 4};
  EXPECT_EQ(water_fill(100, w, std::vector<int64_t>{100, 100, 100, 100}),
            (std::vector<int64_t>{10, 20, 30, 40}));
  // Item 3 capped at 10: the other 90 split 1:2:3.
  EXPECT_EQ(water_fill(100, w, std::vector<int64_t>{100, 100, 100, 10}),
            (std::vector<int64_t>{15, 30, 45, 10}));
  // Rounding: largest remainders first, ties to the lower index.
  EXPECT_EQ(water_fill(10, std::vector<double>{1, 1, 1}, std::vector<int64_t>{9, 9, 9}),
            (std::vector<int64_t>{4, 3, 3}));
  // More than all caps: everything capped.
  EXPECT_EQ(water_fill(1000, w, std::vector<int64_t>{1, 2, 3, 4}),
            (std::vector<int64_t>{1, 2, 3, 4}));
  // Weightless items get what the weighted ones cannot take, equally.
  EXPECT_EQ(water_fill(10, std::vector<double>{0, 5, 0}, std::vector<int64_t>{9, 2, 9}),
            (std::vector<int64_t>{4, 2, 4}));
  EXPECT_EQ(water_fill(2, std::vector<double>{0, 5, 0}, std::vector<int64_t>{9, 2, 9}),
            (std::vector<int64_t>{0, 2, 0}));
  EXPECT_EQ(water_fill(0, w, std::vector<int64_t>{5, 5, 5, 5}), (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_EQ(water_fill(-3, w, std::vector<int64_t>{5, 5, 5, 5}),
            (std::vector<int64_t>{0, 0, 0, 0}));
}

TEST(WaterFill, RandomWeightsAndCaps) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 5000; ++trial) {
    const size_t n = 1 + rng() % 12;
    std::vector<double> w(n);
    std::vector<int64_t> caps(n);
    for (size_t i = 0; i < n; ++i) {
      w[i] = rng() % 5 == 0
                 ? 0.0
                 : std::ldexp(static_cast<double>(rng() % 1000 + 1), -static_cast<int>(rng() % 60));
      const std::array<uint64_t, 3> cap_range = {10, 100000, 10000000000};
      caps[i] = static_cast<int64_t>(rng() % cap_range[rng() % 3]);
    }
    const int64_t sum_caps = total(caps);
    const int64_t t = static_cast<int64_t>(rng() % static_cast<uint64_t>(sum_caps + 50 + 1));
    const std::vector<int64_t> x = water_fill(t, w, caps);
    ASSERT_EQ(total(x), std::min(t, sum_caps)) << "trial " << trial;
    // Water-filling: an uncapped weighted item sits at the common level, which no other
    // weighted item passes, up to one entry of rounding each:
    // (x_i + 1) / w_i >= (x_j - 1) / w_j whenever x_i < cap_i. Weightless items get
    // entries only once every weighted item is full.
    bool weighted_full = true;
    for (size_t i = 0; i < n; ++i)
      if (w[i] > 0 && x[i] < caps[i]) weighted_full = false;
    for (size_t i = 0; i < n; ++i) {
      ASSERT_GE(x[i], 0);
      ASSERT_LE(x[i], caps[i]);
      if (w[i] == 0 && x[i] > 0) {
        EXPECT_TRUE(weighted_full) << "trial " << trial << " item " << i;
      }
      for (size_t j = 0; j < n; ++j)
        if (x[i] < caps[i] && w[i] > 0 && w[j] > 0) {
          EXPECT_GE(static_cast<double>(x[i] + 1) / w[i], static_cast<double>(x[j] - 1) / w[j])
              << "trial " << trial << " items " << i << ", " << j;
        }
    }
  }
}

// ---- uniform ----

TEST(Uniform, EqualSharesWhenNothingIsCapped) {
  const std::vector<std::vector<int64_t>> live(3, std::vector<int64_t>(4, 1000));
  const auto uniform = make_allocator("uniform");
  for (const auto& layer : uniform->allocate(per_head(live, 1200)))
    for (int64_t b : layer) EXPECT_EQ(b, 100);
  // 1205 = 12 x 100 + 5: the five extra entries go to the first five segments.
  const Allocation a = uniform->allocate(per_head(live, 1205));
  for (size_t l = 0; l < 3; ++l)
    for (size_t h = 0; h < 4; ++h) EXPECT_EQ(a[l][h], l * 4 + h < 5 ? 101 : 100);
}

TEST(Uniform, RedistributesWhatACappedSegmentCannotUse) {
  std::vector<std::vector<int64_t>> live(3, std::vector<int64_t>(4, 1000));
  live[1][2] = 10;
  const Allocation a = make_allocator("uniform")->allocate(per_head(live, 1200));
  EXPECT_EQ(a[1][2], 10);
  EXPECT_EQ(total(a), 1200);
  for (size_t l = 0; l < 3; ++l)
    for (size_t h = 0; h < 4; ++h)
      if (l != 1 || h != 2) {
        EXPECT_TRUE(a[l][h] == 108 || a[l][h] == 109) << a[l][h];
      }
}

// ---- headkv ----

// A quarter of the budget evenly over the (layer, kv-head) segments, the rest by
// retrieval mass: the one head that retrieves gets 1/16 + 3/4 of the budget, the
// others 1/16 each.
TEST(HeadKv, FundsTheHeadsThatRetrieve) {
  const std::vector<std::vector<int64_t>> live(2, std::vector<int64_t>(2, 1000));
  AllocationInput in = per_head(live, 800);
  CalibrationProfile p = make_profile(2, 0, {dense_layer(), dense_layer()});
  p.layers[0].head_retrieval = {0.0, 0.0};
  p.layers[1].head_retrieval = {0.3, 0.0};
  in.profile = &p;
  const Allocation a = make_allocator("headkv")->allocate(in);
  EXPECT_EQ(a[1][0], 650);
  EXPECT_EQ(a[0][0], 50);
  EXPECT_EQ(a[0][1], 50);
  EXPECT_EQ(a[1][1], 50);
  // Capped at the live entries, the rest water-filled over the others.
  in = per_head({{1000, 1000}, {300, 1000}}, 800);
  in.profile = &p;
  const Allocation b = make_allocator("headkv")->allocate(in);
  EXPECT_EQ(b[1][0], 300);
  EXPECT_EQ(total(b), 800);
  // A profile without retrieval statistics is refused, naming how to make them.
  p.layers[1].head_retrieval.clear();
  expect_error([&] { make_allocator("headkv")->allocate(in); }, {"--retrieval-heads"});
}

// ---- pyramidkv ----

// The reference schedule: bottom = 2 mean - mean / 20, falling linearly to mean / 20.
TEST(PyramidKv, ReferenceScheduleDecreasesWithDepth) {
  const Allocation a =
      make_allocator("pyramidkv")->allocate(per_layer(std::vector<int64_t>(8, 10000), 8000));
  const double top = 1000.0 / 20, bottom = 2000 - top, step = (bottom - top) / 7;
  EXPECT_EQ(total(a), 8000);
  for (size_t l = 0; l < 8; ++l) {
    EXPECT_NEAR(static_cast<double>(a[l][0]), bottom - static_cast<double>(l) * step, 1.0) << l;
    if (l > 0) {
      EXPECT_LT(a[l][0], a[l - 1][0]) << l;
    }
  }
  EXPECT_EQ(a[0][0], 1950);
  EXPECT_EQ(a[7][0], 50);
}

// A bottom budget above the layer's live entries flattens the pyramid as the reference
// does: bottom = live entries, top = 2 mean - bottom.
TEST(PyramidKv, FlattensWhenTheBottomLayerIsShort) {
  const Allocation a =
      make_allocator("pyramidkv")->allocate(per_layer(std::vector<int64_t>(4, 1500), 4000));
  const std::array<double, 4> expected = {1500, 1500 - 1000.0 / 3, 500 + 1000.0 / 3, 500};
  EXPECT_EQ(total(a), 4000);
  for (size_t l = 0; l < 4; ++l) EXPECT_NEAR(static_cast<double>(a[l][0]), expected[l], 1.0) << l;
}

TEST(PyramidKv, CapsAndEmptyLayers) {
  const auto pyramid = make_allocator("pyramidkv");
  // Layer 1 can keep only 100 entries and layer 2 has none: the rest still decreases
  // with depth and the whole budget is used.
  const Allocation a = pyramid->allocate(per_layer({10000, 100, 0, 10000, 10000}, 5000));
  ASSERT_EQ(a[2].size(), 0u);
  EXPECT_EQ(a[1][0], 100);
  EXPECT_EQ(total(a), 5000);
  EXPECT_GT(a[0][0], a[3][0]);
  EXPECT_GT(a[3][0], a[4][0]);
  // An empty bottom layer does not flatten the pyramid of the others.
  const Allocation b = pyramid->allocate(per_layer({0, 10000, 10000, 10000}, 4000));
  EXPECT_EQ(total(b), 4000);
  EXPECT_GT(b[1][0], b[2][0]);
  EXPECT_GT(b[2][0], 10 * b[3][0]);
  // One layer takes it all; more budget than entries keeps them all.
  EXPECT_EQ(pyramid->allocate(per_layer({700}, 500))[0][0], 500);
  EXPECT_EQ(total(pyramid->allocate(per_layer({70, 80, 90}, 5000))), 240);
}

// ---- adakv ----

TEST(AdaKv, HeadWithTheHighScoresGetsTheMostAndEveryHeadItsFloor) {
  AllocationInput in = per_head({{100, 100, 100, 100}}, 80);
  for (size_t h = 0; h < 4; ++h) {
    std::vector<float> scores(100);
    for (size_t i = 0; i < 100; ++i)
      scores[i] = (h == 0 ? 10.f : 0.f) + static_cast<float>(i) / 100;
    in.live_scores.resize(1);
    in.live_scores[0].push_back(std::move(scores));
  }
  // Uniform share 20 per head, floor int(0.2 * 20) = 4; head 0 takes the other 68.
  EXPECT_EQ(make_allocator("adakv")->allocate(in), (Allocation{{68, 4, 4, 4}}));
}

// On random inputs: every head keeps at least its floor; past the floors the kept
// entries are the layer's highest scores (the lowest kept one beats the highest dropped
// one); layers get equal shares, capped.
TEST(AdaKv, FollowsTheScoresOnRandomInputs) {
  std::mt19937_64 rng(11);
  const auto adakv = make_allocator("adakv"), uniform = make_allocator("uniform");
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE(fmt::format("trial {}", trial));
    Case c;
    random_case(rng, Granularity::kPerHead, c);
    const AllocationInput& in = c.input;
    const Allocation a = adakv->allocate(in);
    // Layer shares: uniform over one segment per layer holding the layer's entries.
    std::vector<std::vector<int64_t>> layer_live(in.segments.size(), std::vector<int64_t>(1, 0));
    for (size_t l = 0; l < in.segments.size(); ++l)
      for (const SegmentInfo& s : in.segments[l]) layer_live[l][0] += s.n_entries;
    const Allocation shares = uniform->allocate(per_head(layer_live, in.evictable_budget));
    for (size_t l = 0; l < in.segments.size(); ++l) {
      const size_t heads = in.segments[l].size();
      if (heads == 0) continue;
      const int64_t layer_budget = total(a[l]);
      EXPECT_EQ(layer_budget, shares[l].empty() ? 0 : shares[l][0]);
      const auto floor = static_cast<int64_t>(0.2 * static_cast<double>(layer_budget) /
                                              static_cast<double>(heads));
      float lowest_kept = std::numeric_limits<float>::infinity();
      float highest_dropped = -std::numeric_limits<float>::infinity();
      for (size_t h = 0; h < heads; ++h) {
        const int64_t n = in.segments[l][h].n_entries, b = a[l][h], f = std::min(floor, n);
        EXPECT_GE(b, f) << "layer " << l << " head " << h;
        std::vector<float> sorted = in.live_scores[l][h];
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        if (b > f) lowest_kept = std::min(lowest_kept, sorted[static_cast<size_t>(b - 1)]);
        if (b < n) highest_dropped = std::max(highest_dropped, sorted[static_cast<size_t>(b)]);
      }
      EXPECT_GE(lowest_kept, highest_dropped) << "layer " << l;
    }
    if (::testing::Test::HasFailure()) return;
  }
}

// ---- ekva-joint ----

// Layers get what ekva-mass gives their (layer, expert) segments in all; within a layer
// every kv-head keeps its floor and past the floors the kept entries are the layer's
// highest scores, in whichever (kv-head, expert) segment they sit.
TEST(EkvaJoint, MassSharesAcrossLayersLiveScoresWithin) {
  std::mt19937_64 rng(29);
  const auto joint = make_allocator("ekva-joint"), mass = make_allocator("ekva-mass");
  int checked = 0;
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE(fmt::format("trial {}", trial));
    Case c;
    random_case(rng, Granularity::kPerHeadExpert, c);
    const AllocationInput& in = c.input;
    const Allocation a = joint->allocate(in);
    AllocationInput by_expert =
        empty_input(in.n_layers, in.n_kv_heads, in.n_experts, in.evictable_budget);
    by_expert.profile = in.profile;
    for (size_t l = 0; l < in.segments.size(); ++l) {
      std::map<int, int64_t> n;
      for (const SegmentInfo& s : in.segments[l]) n[s.key.expert] += s.n_entries;
      for (const auto& [e, live] : n)
        add_segment(by_expert, static_cast<int>(l), kAllHeads, e, live);
    }
    const Allocation shares = mass->allocate(by_expert);
    for (size_t l = 0; l < in.segments.size(); ++l) {
      const int64_t layer_budget = total(a[l]);
      EXPECT_EQ(layer_budget, total(shares[l])) << "layer " << l;
      const auto floor = static_cast<int64_t>(0.2 * static_cast<double>(layer_budget) /
                                              static_cast<double>(in.n_kv_heads));
      float lowest_kept = std::numeric_limits<float>::infinity();
      float highest_dropped = -std::numeric_limits<float>::infinity();
      for (int h = 0; h < in.n_kv_heads; ++h) {
        std::vector<float> kept, dropped;  // this head's entries, over its segments
        for (size_t i = 0; i < in.segments[l].size(); ++i) {
          if (in.segments[l][i].key.kv_head != h) continue;
          std::vector<float> sorted = in.live_scores[l][i];
          std::sort(sorted.begin(), sorted.end(), std::greater<float>());
          const auto b = static_cast<size_t>(a[l][i]);
          kept.insert(kept.end(), sorted.begin(), sorted.begin() + static_cast<ptrdiff_t>(b));
          dropped.insert(dropped.end(), sorted.begin() + static_cast<ptrdiff_t>(b), sorted.end());
        }
        const int64_t n = std::ssize(kept) + std::ssize(dropped);
        EXPECT_GE(std::ssize(kept), std::min(floor, n)) << "layer " << l << " head " << h;
        std::sort(kept.begin(), kept.end(), std::greater<float>());
        // The entries past the floor compete layer-wide.
        if (std::ssize(kept) > std::min(floor, n)) lowest_kept = std::min(lowest_kept, kept.back());
        for (float d : dropped) highest_dropped = std::max(highest_dropped, d);
        // Within a head the kept entries are its best: none dropped beats one kept.
        if (!kept.empty() && !dropped.empty()) {
          EXPECT_GE(kept.back(), *std::max_element(dropped.begin(), dropped.end()))
              << "layer " << l << " head " << h;
        }
      }
      EXPECT_GE(lowest_kept, highest_dropped) << "layer " << l;
      ++checked;
    }
    if (::testing::Test::HasFailure()) return;
  }
  EXPECT_GT(checked, 300);
}

// ---- ekva-entropy ----

double entropy_weight(double entropy, double frequency, int n_experts) {
  return entropy * std::log(1 + frequency * n_experts);
}

TEST(EkvaEntropy, BudgetsFollowTheWeights) {
  const std::array<double, 4> entropy = {1.0, 2.0, 3.0, 2.0}, frequency = {0.1, 0.2, 0.3, 0.4};
  std::vector<ExpertStats> experts;
  for (size_t e = 0; e < 4; ++e)
    experts.push_back(expert_stats(0.25, 0.25, entropy[e], frequency[e], linear_curve()));
  const CalibrationProfile profile = make_profile(1, 4, {moe_layer(experts)});
  AllocationInput in = empty_input(1, 1, 4, 4000);
  for (int e = 0; e < 4; ++e) add_segment(in, 0, kAllHeads, e, 10000);
  in.profile = &profile;
  const Allocation a = make_allocator("ekva-entropy")->allocate(in);
  // Minimum a tenth of the equal share (100), the other 3600 in proportion to w.
  std::array<double, 4> w{};
  for (size_t e = 0; e < 4; ++e) w[e] = entropy_weight(entropy[e], frequency[e], 4);
  const double w_sum = std::accumulate(w.begin(), w.end(), 0.0);
  for (size_t e = 0; e < 4; ++e)
    EXPECT_NEAR(static_cast<double>(a[0][e]), 100 + 3600 * w[e] / w_sum, 1.0) << e;
  EXPECT_EQ(total(a), 4000);
  for (size_t i = 0; i < 4; ++i)
    for (size_t j = 0; j < 4; ++j)
      if (w[i] > w[j]) {
        EXPECT_GT(a[0][i], a[0][j]) << i << " vs " << j;
      }
}

TEST(EkvaEntropy, MinimumUntaggedDenseAndCapped) {
  std::vector<ExpertStats> experts;
  experts.push_back(expert_stats(0.3, 0.3, 2.0, 0.0, linear_curve()));  // never routed: w = 0
  experts.push_back(expert_stats(0.3, 0.3, 2.0, 0.5, linear_curve()));
  experts.push_back(expert_stats(0.4, 0.4, 1.0, 0.5, linear_curve()));
  const CalibrationProfile profile = make_profile(1, 3, {moe_layer(experts), dense_layer()});
  AllocationInput in = empty_input(2, 1, 3, 8000);
  for (int e = 0; e < 3; ++e) add_segment(in, 0, kAllHeads, e, 10000);
  add_segment(in, 0, kAllHeads, kNoExpert, 10000);
  add_segment(in, 1, kAllHeads, kNoExpert, 10000);
  in.profile = &profile;
  const auto entropy = make_allocator("ekva-entropy");
  Allocation a = entropy->allocate(in);
  // Layers split equally; in layer 0 (4 segments, equal share 1000) the never-routed
  // expert keeps the minimum, the untagged segment the equal share.
  EXPECT_EQ(total(a[0]), 4000);
  EXPECT_EQ(a[1][0], 4000);
  EXPECT_EQ(a[0][0], 100);
  EXPECT_NEAR(static_cast<double>(a[0][3]), 1000, 1.0);
  EXPECT_GT(a[0][1], a[0][2]);  // same frequency, higher entropy
  // Expert 1 capped at 50 entries: the layer still uses its whole share.
  in.segments[0][1].n_entries = 50;
  a = entropy->allocate(in);
  EXPECT_EQ(a[0][1], 50);
  EXPECT_EQ(total(a[0]), 4000);
}

// ---- ekva-mass ----

// Independent of the allocator's own interpolation.
double curve_at(const CoverageCurve& c, double f) {
  f = std::clamp(f, 0.0, 1.0);
  if (f <= c.fraction_kept.front()) return c.mass_covered.front();
  for (size_t i = 1; i < c.fraction_kept.size(); ++i)
    if (f <= c.fraction_kept[i]) {
      const double x0 = c.fraction_kept[i - 1], x1 = c.fraction_kept[i];
      return c.mass_covered[i - 1] +
             (f - x0) / (x1 - x0) * (c.mass_covered[i] - c.mass_covered[i - 1]);
    }
  return c.mass_covered.back();
}

// Per segment of the flattened input: its curve and its layer-normalised mass M_s, as
// ekva_mass.cpp documents them.
struct MassTerm {
  const CoverageCurve* curve;
  double mass;
  int64_t live;
};

std::vector<MassTerm> mass_terms(const AllocationInput& in) {
  std::vector<MassTerm> terms;
  for (size_t l = 0; l < in.segments.size(); ++l) {
    const LayerStats& stats = in.profile->layers[l];
    const size_t first = terms.size();
    double layer_mass = 0;
    for (const SegmentInfo& s : in.segments[l]) {
      const int e = s.key.expert;
      const bool own = e >= 0 && stats.experts[static_cast<size_t>(e)].entries_fraction > 0;
      const ExpertStats* x = own ? &stats.experts[static_cast<size_t>(e)] : nullptr;
      const double density = own ? x->mass_received / x->entries_fraction : 1.0;
      terms.push_back({own ? &x->coverage : &stats.all.coverage,
                       static_cast<double>(s.n_entries) * density, s.n_entries});
      layer_mass += terms.back().mass;
    }
    for (size_t i = first; i < terms.size(); ++i)
      terms[i].mass = layer_mass > 0 ? terms[i].mass / layer_mass : 0;
  }
  return terms;
}

double kept_mass(const std::vector<MassTerm>& terms, const std::vector<int64_t>& budgets) {
  double sum = 0;
  for (size_t i = 0; i < terms.size(); ++i)
    if (terms[i].live > 0)
      sum += terms[i].mass * curve_at(*terms[i].curve, static_cast<double>(budgets[i]) /
                                                           static_cast<double>(terms[i].live));
  return sum;
}

// The best kept mass over every allocation of exactly `budget` entries (exhaustive).
double brute_force(const std::vector<MassTerm>& terms, int64_t budget) {
  std::vector<int64_t> b(terms.size(), 0);
  double best = -1;
  const std::function<void(size_t, int64_t)> visit = [&](size_t i, int64_t left) {
    if (i == terms.size()) {
      if (left == 0) best = std::max(best, kept_mass(terms, b));
      return;
    }
    for (int64_t x = 0; x <= std::min(left, terms[i].live); ++x) {
      b[i] = x;
      visit(i + 1, left - x);
    }
  };
  visit(0, budget);
  return best;
}

std::vector<int64_t> flat(const Allocation& a) {
  std::vector<int64_t> out;
  for (const auto& layer : a) out.insert(out.end(), layer.begin(), layer.end());
  return out;
}

// Tiny inputs hand out single entries, so the greedy must reach the exact optimum.
TEST(EkvaMass, EqualsTheBruteForceOptimumOnTinyInputs) {
  std::mt19937_64 rng(3);
  const auto mass = make_allocator("ekva-mass");
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE(fmt::format("trial {}", trial));
    const int n_layers = 1 + static_cast<int>(rng() % 2),
              n_experts = 2 + static_cast<int>(rng() % 2);
    std::vector<LayerStats> layers;
    for (int l = 0; l < n_layers; ++l)
      layers.push_back(rng() % 4 ? random_moe_layer(rng, n_experts)
                                 : dense_layer(random_curve(rng, 3)));
    const CalibrationProfile profile = make_profile(1, n_experts, std::move(layers));
    AllocationInput in = empty_input(n_layers, 1, n_experts, 0);
    in.profile = &profile;
    int segments = 0;
    for (int l = 0; l < n_layers; ++l) {
      const bool moe = profile.layers[static_cast<size_t>(l)].moe;
      for (int e = 0; moe && e < n_experts; ++e)
        if (rng() % 4 && segments < 4) {
          add_segment(in, l, kAllHeads, e, 1 + static_cast<int64_t>(rng() % 6));
          ++segments;
        }
      if ((!moe || rng() % 3 == 0) && segments < 4) {
        add_segment(in, l, kAllHeads, kNoExpert, 1 + static_cast<int64_t>(rng() % 6));
        ++segments;
      }
    }
    const int64_t live = live_entries(in);
    in.evictable_budget = static_cast<int64_t>(rng() % static_cast<uint64_t>(live + 3));
    const Allocation a = mass->allocate(in);
    expect_valid(in, a);
    const std::vector<MassTerm> terms = mass_terms(in);
    // Up to the float rounding of the curves' points.
    EXPECT_NEAR(kept_mass(terms, flat(a)), brute_force(terms, std::min(in.evictable_budget, live)),
                1e-6);
    if (::testing::Test::HasFailure()) return;
  }
}

// With chunks of more than one entry, the greedy stays within S * chunk * mu of the
// optimum (here found by dynamic programming over the segments).
TEST(EkvaMass, WithinChunksOfTheOptimumOnLargerInputs) {
  std::mt19937_64 rng(17);
  const auto mass = make_allocator("ekva-mass");
  for (int trial = 0; trial < 3; ++trial) {
    const CalibrationProfile profile = make_profile(1, 3, {random_moe_layer(rng, 3)});
    AllocationInput in = empty_input(1, 1, 3, 0);
    in.profile = &profile;
    for (int e = 0; e < 3; ++e)
      add_segment(in, 0, kAllHeads, e, 3000 + static_cast<int64_t>(rng() % 2000));
    in.evictable_budget = 8192 + static_cast<int64_t>(rng() % 800);  // chunks of 2 entries
    const int64_t target = std::min(in.evictable_budget, live_entries(in));
    const int64_t chunk = std::max<int64_t>(1, target / 4096);
    ASSERT_GE(chunk, 2);
    const std::vector<MassTerm> terms = mass_terms(in);

    // best[t]: the most mass the segments so far keep with t entries.
    const double none = -std::numeric_limits<double>::infinity();
    std::vector<double> best(static_cast<size_t>(target + 1), none), next;
    best[0] = 0;
    double mu = 0;  // the steepest gain per entry of any segment
    for (const MassTerm& s : terms) {
      std::vector<double> keep(static_cast<size_t>(s.live + 1));
      for (int64_t b = 0; b <= s.live; ++b)
        keep[static_cast<size_t>(b)] =
            s.mass * curve_at(*s.curve, static_cast<double>(b) / static_cast<double>(s.live));
      for (size_t b = 1; b < keep.size(); ++b) mu = std::max(mu, keep[b] - keep[b - 1]);
      next.assign(best.size(), none);
      for (int64_t t = 0; t <= target; ++t) {
        if (best[static_cast<size_t>(t)] == none) continue;
        for (int64_t b = 0; b <= std::min(s.live, target - t); ++b)
          next[static_cast<size_t>(t + b)] =
              std::max(next[static_cast<size_t>(t + b)],
                       best[static_cast<size_t>(t)] + keep[static_cast<size_t>(b)]);
      }
      best.swap(next);
    }
    const double optimum = best[static_cast<size_t>(target)];
    const double greedy = kept_mass(terms, flat(mass->allocate(in)));
    EXPECT_LE(greedy, optimum + 1e-6);
    EXPECT_GE(greedy, optimum - static_cast<double>(terms.size() * chunk) * mu);
    EXPECT_GE(greedy, optimum * (1 - 1e-4));
  }
}

TEST(EkvaMass, SteepCurvesGetMoreWhenTheBudgetIsTight) {
  const CoverageCurve steep{{0.f, 0.1f, 1.f}, {0.f, 0.8f, 1.f}};
  const CalibrationProfile profile =
      make_profile(1, 2,
                   {moe_layer({expert_stats(0.5, 0.5, 1, 0.5, steep),
                               expert_stats(0.5, 0.5, 1, 0.5, linear_curve())})});
  AllocationInput in = empty_input(1, 1, 2, 150);
  add_segment(in, 0, kAllHeads, 0, 1000);
  add_segment(in, 0, kAllHeads, 1, 1000);
  in.profile = &profile;
  // The steep expert's first 100 entries keep 8x the mass per entry of the linear one's;
  // past them its curve flattens below the linear one.
  EXPECT_EQ(make_allocator("ekva-mass")->allocate(in), (Allocation{{100, 50}}));
}

TEST(EkvaMass, LayersCompeteForTheBudget) {
  // Layer 0's mass sits in a tenth of its entries, layer 1's is spread evenly: the
  // budget an equal split would give layer 0 past that tenth goes to layer 1.
  const CoverageCurve concentrated{{0.f, 0.1f, 1.f}, {0.f, 0.95f, 1.f}};
  const CalibrationProfile profile = make_profile(1, 0, {dense_layer(concentrated), dense_layer()});
  AllocationInput in = empty_input(2, 1, 0, 1000);
  add_segment(in, 0, kAllHeads, kNoExpert, 1000);
  add_segment(in, 1, kAllHeads, kNoExpert, 1000);
  in.profile = &profile;
  EXPECT_EQ(make_allocator("ekva-mass")->allocate(in), (Allocation{{100}, {900}}));
}

TEST(EkvaMass, DenserExpertsFirstAndUntrackedExpertsAtTheLayerAverage) {
  // Same curves; expert 0's keys receive 0.8 of the mass on half the keys (density 1.6),
  // expert 1's 0.2 (0.4); expert 2 was never tagged in calibration (density 1).
  const CalibrationProfile profile =
      make_profile(1, 3,
                   {moe_layer({expert_stats(0.5, 0.8, 1, 0.5, linear_curve()),
                               expert_stats(0.5, 0.2, 1, 0.5, linear_curve()),
                               expert_stats(0.0, 0.0, 1, 0.0, linear_curve())})});
  AllocationInput in = empty_input(1, 1, 3, 150);
  for (int e = 0; e < 3; ++e) add_segment(in, 0, kAllHeads, e, 100);
  in.profile = &profile;
  EXPECT_EQ(make_allocator("ekva-mass")->allocate(in), (Allocation{{100, 0, 50}}));
}

// ---- errors ----

TEST(Allocators, UnknownNameListsTheChoices) {
  expect_error([] { make_allocator("snapkv"); },
               {"unknown allocator 'snapkv'", "'uniform'", "'pyramidkv'", "'adakv'",
                "'ekva-entropy'", "'ekva-mass'"});
}

TEST(Allocators, BadInputsNameTheProblem) {
  const auto uniform = make_allocator("uniform");
  AllocationInput in = per_head({{10, 10}, {10, 10}}, 10);
  in.evictable_budget = -1;
  expect_error([&] { uniform->allocate(in); },
               {"allocator 'uniform'", "evictable_budget must not be negative, got -1"});
  in = per_head({{10, 10}, {10, 10}}, 10);
  in.segments.pop_back();
  expect_error([&] { uniform->allocate(in); },
               {"segments are listed for 1 layers, expected n_layers = 2"});
  in = per_head({{10, 10}}, 10);
  in.n_layers = 0;
  expect_error([&] { uniform->allocate(in); }, {"n_layers > 0", "got 0, 2, 0"});
  in = per_head({{10, 10}}, 10);
  in.segments[0][1].n_entries = -4;
  expect_error([&] { uniform->allocate(in); },
               {"segment (layer 0, kv-head 1, expert all) has -4 live entries"});
  in = per_head({{10, 10}}, 10);
  in.segments[0][1].key.kv_head = 7;
  expect_error([&] { uniform->allocate(in); },
               {"allocator 'uniform' allocates per (layer, kv-head)", "2 kv-heads",
                "(layer 0, kv-head 7, expert all)"});
  // Keys of another granularity.
  expect_error(
      [&] {
        make_allocator("pyramidkv")->allocate(per_head({{10, 10}}, 10));
      },
      {"allocator 'pyramidkv' allocates per layer", "(layer 0, kv-head 0, expert all)"});
  expect_error([&] { uniform->allocate(per_layer({10}, 10)); },
               {"allocates per (layer, kv-head)", "(layer 0, kv-head all, expert all)"});
  in = per_head({{10}, {10}}, 10);
  in.segments[1][0].key.layer = 0;
  expect_error([&] { uniform->allocate(in); },
               {"layer 1 lists segment (layer 0, kv-head 0, expert all)"});
}

TEST(Allocators, AdaKvNeedsOneScorePerEntry) {
  const auto adakv = make_allocator("adakv");
  AllocationInput in = per_head({{3, 2}}, 4);
  expect_error([&] { adakv->allocate(in); },
               {"allocator 'adakv' needs live scores", "for 0 layers, expected 1"});
  in.live_scores = {{{1, 2, 3}}};
  expect_error([&] { adakv->allocate(in); },
               {"layer 0 has live scores for 1 segments, expected 2"});
  in.live_scores = {{{1, 2, 3}, {1, 2, 3}}};
  expect_error([&] { adakv->allocate(in); },
               {"segment (layer 0, kv-head 1, expert all) has 3 live scores for 2 entries"});
  in.live_scores = {{{1, 2, 3}, {1, std::nanf("")}}};
  expect_error([&] { adakv->allocate(in); },
               {"live score 1 of segment (layer 0, kv-head 1, expert all) is NaN"});
}

TEST(Allocators, EkvaProfilesMustFitTheModel) {
  std::vector<ExpertStats> experts(2, expert_stats(0.5, 0.5, 1, 0.5, linear_curve()));
  const auto input = [](const CalibrationProfile* p) {
    AllocationInput in = empty_input(2, 1, 2, 10);
    add_segment(in, 0, kAllHeads, 0, 10);
    add_segment(in, 1, kAllHeads, 1, 10);
    in.profile = p;
    return in;
  };
  for (const char* name : {"ekva-entropy", "ekva-mass"}) {
    SCOPED_TRACE(name);
    const auto a = make_allocator(name);
    const std::string who = fmt::format("allocator '{}'", name);
    expect_error([&] { a->allocate(input(nullptr)); }, {who + " needs a calibration profile"});
    CalibrationProfile p = make_profile(1, 2, {moe_layer(experts)});
    expect_error([&] { a->allocate(input(&p)); },
                 {who, "the calibration profile has 1 layers (1 layer entries), the model 2"});
    p = make_profile(1, 4, {moe_layer(experts), moe_layer(experts)});
    expect_error([&] { a->allocate(input(&p)); },
                 {"the calibration profile has 4 experts, the model 2"});
    p = make_profile(8, 2, {moe_layer(experts), moe_layer(experts)});
    expect_error([&] { a->allocate(input(&p)); },
                 {"the calibration profile has 8 kv-heads, the model 1"});
    p = make_profile(1, 2, {moe_layer(experts), moe_layer({experts[0]})});
    expect_error([&] { a->allocate(input(&p)); },
                 {"calibration profile layer 1 has statistics of 1 experts, expected 2"});
    p = make_profile(1, 2, {moe_layer(experts), dense_layer()});
    expect_error([&] { a->allocate(input(&p)); },
                 {"segment (layer 1, kv-head all, expert 1) is tagged with an expert but layer 1 "
                  "of the calibration profile is dense"});
  }
  // What each one reads must make sense.
  std::vector<ExpertStats> bad = experts;
  bad[1].query_entropy = -1;
  CalibrationProfile p = make_profile(1, 2, {moe_layer(experts), moe_layer(bad)});
  expect_error([&] { make_allocator("ekva-entropy")->allocate(input(&p)); },
               {"calibration profile layer 1 expert 1 has query_entropy -1"});
  bad = experts;
  bad[1].mass_received = 1.5;
  p = make_profile(1, 2, {moe_layer(experts), moe_layer(bad)});
  expect_error(
      [&] { make_allocator("ekva-mass")->allocate(input(&p)); },
      {"calibration profile layer 1 expert 1 has entries_fraction 0.5 and mass_received 1.5"});
  bad = experts;
  bad[1].coverage = {{0.f, 0.5f, 0.5f, 1.f}, {0.f, 0.6f, 0.7f, 1.f}};
  p = make_profile(1, 2, {moe_layer(experts), moe_layer(bad)});
  expect_error([&] { make_allocator("ekva-mass")->allocate(input(&p)); },
               {"calibration profile layer 1 expert 1: coverage curve fraction_kept must ascend "
                "strictly, but point 2 is 0.5 after 0.5"});
  bad[1].coverage = {{0.f, 1.f}, {0.f}};
  p = make_profile(1, 2, {moe_layer(experts), moe_layer(bad)});
  expect_error(
      [&] { make_allocator("ekva-mass")->allocate(input(&p)); },
      {"layer 1 expert 1: coverage curve needs as many fraction_kept as mass_covered points",
       "got 2 and 1"});
}

TEST(CoverageAt, InterpolatesAndClamps) {
  const CoverageCurve c{{0.f, 0.25f, 1.f}, {0.f, 0.5f, 1.f}};
  EXPECT_DOUBLE_EQ(coverage_at(c, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(coverage_at(c, 0.125), 0.25);
  EXPECT_DOUBLE_EQ(coverage_at(c, 0.25), 0.5);
  EXPECT_DOUBLE_EQ(coverage_at(c, 0.625), 0.75);
  EXPECT_DOUBLE_EQ(coverage_at(c, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(coverage_at(c, -1.0), 0.0);
  EXPECT_DOUBLE_EQ(coverage_at(c, 2.0), 1.0);
  const CoverageCurve from_a_quarter{{0.25f, 1.f}, {0.5f, 1.f}};
  EXPECT_DOUBLE_EQ(coverage_at(from_a_quarter, 0.1), 0.5);
}

}  // namespace
}  // namespace ekva
