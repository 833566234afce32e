#include "kv/allocator.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <string>

#include "core/error.h"

namespace ekva {

namespace {

using Factory = std::unique_ptr<Allocator> (*)();

struct Entry {
  std::string_view name;
  Factory make;
};
constexpr std::array<Entry, 7> kAllocators = {{{"uniform", make_uniform_allocator},
                                               {"pyramidkv", make_pyramidkv_allocator},
                                               {"adakv", make_adakv_allocator},
                                               {"ekva-entropy", make_ekva_entropy_allocator},
                                               {"ekva-mass", make_ekva_mass_allocator},
                                               {"ekva-joint", make_ekva_joint_allocator},
                                               {"headkv", make_headkv_allocator}}};

std::string_view granularity_name(Granularity g) {
  switch (g) {
    case Granularity::kPerLayer:
      return "layer";
    case Granularity::kPerHead:
      return "(layer, kv-head)";
    case Granularity::kPerExpert:
      return "(layer, expert)";
    case Granularity::kPerHeadExpert:
      return "(layer, kv-head, expert)";
  }
  return "unknown granularity";
}

std::string describe(const SegmentKey& key) {
  const std::string head = key.kv_head == kAllHeads ? "all" : std::to_string(key.kv_head);
  const std::string expert = key.expert == kAllExperts ? "all"
                             : key.expert == kNoExpert ? "untagged"
                                                       : std::to_string(key.expert);
  return fmt::format("(layer {}, kv-head {}, expert {})", key.layer, head, expert);
}

void check_profile(std::string_view name, const AllocationInput& input) {
  if (input.profile == nullptr)
    fail("allocator '{}' needs a calibration profile (`ekva calibrate` writes one)", name);
  const CalibrationProfile& p = *input.profile;
  if (p.n_layers != input.n_layers || std::ssize(p.layers) != input.n_layers)
    fail("allocator '{}': the calibration profile has {} layers ({} layer entries), the model {}",
         name, p.n_layers, p.layers.size(), input.n_layers);
  if (p.n_kv_heads != input.n_kv_heads)
    fail("allocator '{}': the calibration profile has {} kv-heads, the model {}", name,
         p.n_kv_heads, input.n_kv_heads);
  if (p.n_experts != input.n_experts)
    fail("allocator '{}': the calibration profile has {} experts, the model {}", name, p.n_experts,
         input.n_experts);
  for (int l = 0; l < input.n_layers; ++l) {
    const LayerStats& layer = p.layers[static_cast<size_t>(l)];
    if (layer.moe && std::ssize(layer.experts) != input.n_experts)
      fail("allocator '{}': calibration profile layer {} has statistics of {} experts, expected {}",
           name, l, layer.experts.size(), input.n_experts);
    if (layer.moe) continue;
    for (const SegmentInfo& s : input.segments[static_cast<size_t>(l)])
      if (s.key.expert >= 0)
        fail(
            "allocator '{}': segment {} is tagged with an expert but layer {} of the calibration "
            "profile is dense",
            name, describe(s.key), l);
  }
}

// Live scores of layers [first, last].
void check_live_scores(std::string_view name, const AllocationInput& input, int first, int last) {
  if (std::ssize(input.live_scores) != input.n_layers)
    fail("allocator '{}' needs live scores: got them for {} layers, expected {}", name,
         input.live_scores.size(), input.n_layers);
  for (int l = first; l <= last; ++l) {
    const auto& segments = input.segments[static_cast<size_t>(l)];
    const auto& scores = input.live_scores[static_cast<size_t>(l)];
    if (scores.size() != segments.size())
      fail("allocator '{}': layer {} has live scores for {} segments, expected {}", name, l,
           scores.size(), segments.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      if (std::ssize(scores[i]) != segments[i].n_entries)
        fail("allocator '{}': segment {} has {} live scores for {} entries", name,
             describe(segments[i].key), scores[i].size(), segments[i].n_entries);
      const auto nan =
          std::find_if(scores[i].begin(), scores[i].end(), [](float v) { return std::isnan(v); });
      if (nan != scores[i].end())
        fail("allocator '{}': live score {} of segment {} is NaN", name, nan - scores[i].begin(),
             describe(segments[i].key));
    }
  }
}

}  // namespace

std::unique_ptr<Allocator> make_allocator(std::string_view name) {
  for (const Entry& e : kAllocators)
    if (e.name == name) return e.make();
  std::string names;
  for (const Entry& e : kAllocators)
    names += fmt::format("{}'{}'", names.empty() ? "" : ", ", e.name);
  fail("unknown allocator '{}'; expected one of {}", name, names);
}

namespace {

// check_allocation_input but for the live scores.
void check_segments_and_profile(const Allocator& allocator, const AllocationInput& input) {
  const std::string_view name = allocator.name();
  if (input.n_layers <= 0 || input.n_kv_heads <= 0 || input.n_experts < 0)
    fail(
        "allocator '{}': input needs n_layers > 0, n_kv_heads > 0, n_experts >= 0 (got {}, {}, {})",
        name, input.n_layers, input.n_kv_heads, input.n_experts);
  if (input.evictable_budget < 0)
    fail("allocator '{}': evictable_budget must not be negative, got {}", name,
         input.evictable_budget);
  if (std::ssize(input.segments) != input.n_layers)
    fail("allocator '{}': segments are listed for {} layers, expected n_layers = {}", name,
         input.segments.size(), input.n_layers);
  const Granularity g = allocator.granularity();
  const bool per_head = g == Granularity::kPerHead || g == Granularity::kPerHeadExpert;
  const bool per_expert = g == Granularity::kPerExpert || g == Granularity::kPerHeadExpert;
  for (int l = 0; l < input.n_layers; ++l) {
    for (const SegmentInfo& s : input.segments[static_cast<size_t>(l)]) {
      const SegmentKey& k = s.key;
      const bool head_ok =
          per_head ? k.kv_head >= 0 && k.kv_head < input.n_kv_heads : k.kv_head == kAllHeads;
      const bool expert_ok =
          per_expert ? k.expert == kNoExpert || (k.expert >= 0 && k.expert < input.n_experts)
                     : k.expert == kAllExperts;
      if (k.layer != l || !head_ok || !expert_ok)
        fail(
            "allocator '{}' allocates per {} of {} layers, {} kv-heads and {} experts; layer {} "
            "lists segment {}",
            name, granularity_name(g), input.n_layers, input.n_kv_heads, input.n_experts, l,
            describe(k));
      if (s.n_entries < 0)
        fail("allocator '{}': segment {} has {} live entries", name, describe(k), s.n_entries);
    }
  }
  if (allocator.needs_profile()) check_profile(name, input);
}

}  // namespace

void check_allocation_input(const Allocator& allocator, const AllocationInput& input) {
  check_segments_and_profile(allocator, input);
  if (allocator.needs_live_scores())
    check_live_scores(allocator.name(), input, 0, input.n_layers - 1);
}

void check_layer_allocation_input(const Allocator& allocator, const AllocationInput& input,
                                  int layer, std::span<const int64_t> committed) {
  const std::string_view name = allocator.name();
  if (layer < 0 || layer >= input.n_layers)
    fail("allocator '{}': layer {} to allocate is out of range (0..{})", name, layer,
         input.n_layers - 1);
  if (std::ssize(committed) != input.n_layers)
    fail("allocator '{}': budgets committed for {} layers, expected n_layers = {}", name,
         committed.size(), input.n_layers);
  int64_t sum = 0;
  for (int l = 0; l < layer; ++l) {
    if (committed[static_cast<size_t>(l)] < 0)
      fail("allocator '{}': layer {} was committed {} entries", name, l,
           committed[static_cast<size_t>(l)]);
    sum += committed[static_cast<size_t>(l)];
  }
  if (sum > input.evictable_budget)
    fail("allocator '{}': the layers before {} were committed {} entries, past the budget of {}",
         name, layer, sum, input.evictable_budget);
  for (int l = layer + 1; l < std::ssize(input.segments); ++l)
    if (!input.segments[static_cast<size_t>(l)].empty())
      fail("allocator '{}': allocating layer {}, but the later layer {} lists segments", name,
           layer, l);
  check_segments_and_profile(allocator, input);
  if (allocator.needs_live_scores()) check_live_scores(name, input, layer, layer);
}

std::vector<int64_t> Allocator::allocate_layer(const AllocationInput& input, int layer,
                                               std::span<const int64_t> committed) const {
  check_layer_allocation_input(*this, input, layer, committed);
  EKVA_CHECK(!needs_live_scores(),
             "allocator '{}' reads live scores of every layer: it must override allocate_layer",
             name());
  AllocationInput whole;
  whole.n_layers = input.n_layers;
  whole.n_kv_heads = input.n_kv_heads;
  whole.n_experts = input.n_experts;
  whole.evictable_budget = input.evictable_budget;
  whole.profile = input.profile;
  whole.segments = input.segments;
  for (int l = layer + 1; l < input.n_layers; ++l) {
    auto& predicted = whole.segments[static_cast<size_t>(l)];
    predicted = input.segments[static_cast<size_t>(layer)];
    for (SegmentInfo& s : predicted) s.key.layer = l;
  }
  std::vector<int64_t> out = std::move(allocate(whole)[static_cast<size_t>(layer)]);
  // A prediction that was off (layers that differ) must still not pass the budget.
  const int64_t left = uncommitted_budget(input, layer, committed);
  if (std::accumulate(out.begin(), out.end(), int64_t{0}) > left) {
    const std::vector<double> weights(out.begin(), out.end());
    out = water_fill(left, weights, out);
  }
  return out;
}

std::vector<int64_t> water_fill(int64_t total, std::span<const double> weights,
                                std::span<const int64_t> caps) {
  EKVA_CHECK(weights.size() == caps.size(), "{} weights for {} caps", weights.size(), caps.size());
  const size_t n = caps.size();
  for (size_t i = 0; i < n; ++i)
    EKVA_CHECK(caps[i] >= 0 && weights[i] >= 0 && std::isfinite(weights[i]),
               "item {}: cap {}, weight {}", i, caps[i], weights[i]);
  const int64_t target =
      std::min(std::max<int64_t>(total, 0), std::accumulate(caps.begin(), caps.end(), int64_t{0}));

  // Weighted items first; whatever they cannot hold goes to the weightless ones with
  // unit weights, so the whole target is used whenever the caps allow it.
  std::vector<size_t> weighted, weightless;
  int64_t weighted_caps = 0;
  for (size_t i = 0; i < n; ++i) {
    (weights[i] > 0 ? weighted : weightless).push_back(i);
    if (weights[i] > 0) weighted_caps += caps[i];
  }
  std::vector<double> share(n, 0.0);  // [n] the real-valued solution
  // Fills `items` with `amount` (< the sum of their caps): items fill in the order in
  // which the rising level reaches their caps (cap / weight ascending); the first one
  // the level does not reach, and all after it, stay below their caps.
  const auto fill = [&](std::vector<size_t>& items, double amount, auto weight_of) {
    std::sort(items.begin(), items.end(), [&](size_t a, size_t b) {
      const double ra = static_cast<double>(caps[a]) / weight_of(a);
      const double rb = static_cast<double>(caps[b]) / weight_of(b);
      return ra != rb ? ra < rb : a < b;
    });
    // [items + 1] weight of items[k..]: summed afresh rather than by subtracting the
    // capped ones, which would leave small weights with the rounding error of large ones.
    std::vector<double> weight_from(items.size() + 1, 0.0);
    for (size_t k = items.size(); k-- > 0;)
      weight_from[k] = weight_from[k + 1] + weight_of(items[k]);
    size_t k = 0;
    for (; k < items.size(); ++k) {
      const size_t i = items[k];
      if (static_cast<double>(caps[i]) > amount / weight_from[k] * weight_of(i)) break;
      share[i] = static_cast<double>(caps[i]);
      amount -= static_cast<double>(caps[i]);  // exact: whole numbers below 2^53
    }
    const double level = k < items.size() ? amount / weight_from[k] : 0.0;
    for (; k < items.size(); ++k) share[items[k]] = level * weight_of(items[k]);
  };
  if (target >= weighted_caps) {
    for (size_t i : weighted) share[i] = static_cast<double>(caps[i]);
    if (target > weighted_caps)
      fill(weightless, static_cast<double>(target - weighted_caps), [](size_t) { return 1.0; });
  } else {
    fill(weighted, static_cast<double>(target), [&](size_t i) { return weights[i]; });
  }

  // Largest-remainder rounding. The shares sum to `target` up to rounding error far
  // below one entry, so the floors leave 0 <= leftover <= items with room.
  std::vector<int64_t> out(n);
  std::vector<size_t> room;
  int64_t leftover = target;
  for (size_t i = 0; i < n; ++i) {
    out[i] = std::min(caps[i], static_cast<int64_t>(std::floor(share[i])));
    leftover -= out[i];
    if (out[i] < caps[i]) room.push_back(i);
  }
  std::stable_sort(room.begin(), room.end(), [&](size_t a, size_t b) {
    return share[a] - std::floor(share[a]) > share[b] - std::floor(share[b]);
  });
  EKVA_CHECK(leftover >= 0 && leftover <= std::ssize(room), "leftover {} for {} items with room",
             leftover, room.size());
  for (int64_t k = 0; k < leftover; ++k) ++out[room[static_cast<size_t>(k)]];
  return out;
}

std::vector<int64_t> flat_live_entries(const AllocationInput& input) {
  std::vector<int64_t> live;
  for (const auto& layer : input.segments)
    for (const SegmentInfo& s : layer) live.push_back(s.n_entries);
  return live;
}

Allocation unflatten(const AllocationInput& input, std::span<const int64_t> flat) {
  Allocation out(input.segments.size());
  size_t k = 0;
  for (size_t l = 0; l < input.segments.size(); ++l)
    for (size_t i = 0; i < input.segments[l].size(); ++i) out[l].push_back(flat[k++]);
  EKVA_CHECK(k == flat.size(), "{} budgets for {} segments", flat.size(), k);
  return out;
}

std::vector<int64_t> equal_layer_shares(const AllocationInput& input) {
  std::vector<int64_t> live(input.segments.size(), 0);  // [n_layers]
  for (size_t l = 0; l < live.size(); ++l)
    for (const SegmentInfo& s : input.segments[l]) live[l] += s.n_entries;
  return equal_layer_shares(input.evictable_budget, live);
}

std::vector<int64_t> equal_layer_shares(int64_t evictable_budget,
                                        std::span<const int64_t> layer_entries) {
  const std::vector<double> equal(layer_entries.size(), 1.0);
  return water_fill(evictable_budget, equal, layer_entries);
}

std::vector<int64_t> predicted_layer_entries(const AllocationInput& input, int layer) {
  std::vector<int64_t> live(input.segments.size(), 0);  // [n_layers]
  for (size_t l = 0; l <= static_cast<size_t>(layer); ++l)
    for (const SegmentInfo& s : input.segments[l]) live[l] += s.n_entries;
  for (size_t l = static_cast<size_t>(layer) + 1; l < live.size(); ++l)
    live[l] = live[static_cast<size_t>(layer)];
  return live;
}

int64_t uncommitted_budget(const AllocationInput& input, int layer,
                           std::span<const int64_t> committed) {
  const auto first = committed.begin();
  return input.evictable_budget - std::accumulate(first, first + layer, int64_t{0});
}

double coverage_at(const CoverageCurve& curve, double fraction) {
  const std::vector<float>& x = curve.fraction_kept;
  const std::vector<float>& y = curve.mass_covered;
  const double f = std::clamp(fraction, 0.0, 1.0);
  if (f <= x.front()) return y.front();
  if (f >= x.back()) return y.back();
  // x[i - 1] <= f < x[i]
  const size_t i = static_cast<size_t>(std::upper_bound(x.begin(), x.end(), f) - x.begin());
  const double t = (f - x[i - 1]) / (static_cast<double>(x[i]) - x[i - 1]);
  return y[i - 1] + t * (static_cast<double>(y[i]) - y[i - 1]);
}

void check_coverage_curve(const CoverageCurve& curve, std::string_view where) {
  const auto& x = curve.fraction_kept;
  const auto& y = curve.mass_covered;
  if (x.empty() || x.size() != y.size())
    fail(
        "{}: coverage curve needs as many fraction_kept as mass_covered points, at least one "
        "(got {} and {})",
        where, x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i]))
      fail("{}: coverage curve point {} is not finite ({}, {})", where, i, x[i], y[i]);
    if (i > 0 && !(x[i] > x[i - 1]))
      fail("{}: coverage curve fraction_kept must ascend strictly, but point {} is {} after {}",
           where, i, x[i], x[i - 1]);
  }
}

}  // namespace ekva
