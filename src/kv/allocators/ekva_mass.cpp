// ekva-mass: EKVA's allocator. Give the budget to the (layer, expert) segments where it
// keeps the most attention mass, all layers and experts competing for it together.
//
// Objective. Segment s (layer l, expert tag e, n_s live entries) is expected to receive
// a share M_s of its layer's attention mass; keeping its b best entries keeps
// M_s * c_s(b / n_s) of it, c_s being the calibrated coverage curve of (l, e). Maximise
// sum_s M_s * c_s(b_s / n_s) over 0 <= b_s <= n_s, sum_s b_s = min(evictable_budget,
// sum_s n_s).
//
// Mass. Every layer's attention sums to one per query, and the calibration says nothing
// about one layer's output mattering more than another's, so layers weigh equally: M_s is
// normalised within its layer,
//   M_s = n_s * rho_s / sum_{s' in layer l} n_s' * rho_s',
//   rho_s = mass_received_{l,e} / entries_fraction_{l,e}
// rho is the mass one key of expert e receives relative to the layer's average key. The
// live sequence is routed differently from the calibration text (a code prompt fills
// other experts than prose), so a segment's mass follows its live entries times that
// density rather than the calibration share mass_received itself, which would credit an
// expert with 3 live entries with all the mass its 30% of calibration keys received.
// Segments without expert statistics (untagged entries, dense layers, or an expert that
// no calibration key was tagged with) have the layer's average density (rho = 1, their
// mass is their share of the entries) and the layer's `all` curve.
//
// Algorithm. Greedy water-filling: hand out chunks of max(1, total / 4096) entries, each
// to the segment whose next chunk keeps the most mass per entry, from a priority queue:
// O((4096 + S) log S) for S segments. Coverage curves are concave (entries sorted by the
// mass they receive), so each segment's successive chunks gain less and less, and this
// marginal allocation is optimal for a separable concave objective (Gross 1956; Fox
// 1966, "Discrete optimization via marginal analysis"): exactly with chunks of one
// entry, and within S * chunk * mu of the optimum otherwise, mu being the gain per entry
// of the last chunk handed out (every chunk taken gained at least mu per entry on
// average, every one left gains at most mu, so only the curvature inside one chunk per
// segment can be misplaced). Ties go to the segment listed first.
#include <algorithm>
#include <cmath>
#include <queue>
#include <string>

#include "core/error.h"
#include "kv/allocator.h"

namespace ekva {

namespace {

constexpr int64_t kChunks = 4096;  // the budget is handed out in about this many chunks

struct Segment {
  const CoverageCurve* curve = nullptr;
  double mass = 0;  // M_s
  int64_t live = 0;
  int64_t budget = 0;
};

// Mass per entry that the next chunk of `chunk` entries would keep.
double next_gain(const Segment& s, int64_t chunk) {
  const int64_t step = std::min(chunk, s.live - s.budget);
  const double n = static_cast<double>(s.live);
  const double before = coverage_at(*s.curve, static_cast<double>(s.budget) / n);
  const double after = coverage_at(*s.curve, static_cast<double>(s.budget + step) / n);
  return s.mass * (after - before) / static_cast<double>(step);
}

class EkvaMassAllocator final : public Allocator {
 public:
  std::string_view name() const override { return "ekva-mass"; }
  Granularity granularity() const override { return Granularity::kPerExpert; }
  bool needs_profile() const override { return true; }

  Allocation allocate(const AllocationInput& input) const override {
    check_allocation_input(*this, input);
    std::vector<Segment> segments;  // [S] layer after layer, as flat_live_entries
    for (size_t l = 0; l < input.segments.size(); ++l)
      add_layer(*input.profile, static_cast<int>(l), input.segments[l], segments);
    fill(segments, input.evictable_budget);
    std::vector<int64_t> budgets(segments.size());
    for (size_t i = 0; i < segments.size(); ++i) budgets[i] = segments[i].budget;
    return unflatten(input, budgets);
  }

  // Not exact per layer: the layers compete for one budget through the mass of their
  // segments, which for the later layers is not known yet. Each later layer is
  // predicted from the calibration profile: as many live entries as `layer`, split
  // over the experts in proportion to the layer's calibrated entries_fraction (what
  // the calibration text routed to each). What the earlier layers were committed is
  // spent; `layer` and the predicted ones share the rest by the same water-filling.
  std::vector<int64_t> allocate_layer(const AllocationInput& input, int layer,
                                      std::span<const int64_t> committed) const override {
    check_layer_allocation_input(*this, input, layer, committed);
    const auto& own = input.segments[static_cast<size_t>(layer)];
    std::vector<Segment> segments;  // [S] `layer` first, then the predicted layers
    add_layer(*input.profile, layer, own, segments);
    int64_t live = 0;
    for (const SegmentInfo& s : own) live += s.n_entries;
    std::vector<SegmentInfo> predicted;
    for (int l = layer + 1; l < input.n_layers; ++l) {
      predict_layer(*input.profile, l, live, predicted);
      add_layer(*input.profile, l, predicted, segments);
    }
    fill(segments, uncommitted_budget(input, layer, committed));
    std::vector<int64_t> budgets(own.size());
    for (size_t i = 0; i < own.size(); ++i) budgets[i] = segments[i].budget;
    return budgets;
  }

 private:
  // Appends the segments of one layer with their mass M_s, normalised within the layer.
  static void add_layer(const CalibrationProfile& profile, int layer,
                        std::span<const SegmentInfo> infos, std::vector<Segment>& segments) {
    const LayerStats& stats = profile.layers[static_cast<size_t>(layer)];
    const size_t first = segments.size();
    double layer_mass = 0;
    for (const SegmentInfo& info : infos) {
      const auto [curve, density] = statistics(stats, layer, info.key.expert);
      segments.push_back({curve, static_cast<double>(info.n_entries) * density, info.n_entries, 0});
      layer_mass += segments.back().mass;
    }
    for (size_t i = first; i < segments.size(); ++i)
      segments[i].mass = layer_mass > 0 ? segments[i].mass / layer_mass : 0.0;
  }

  // The segments a layer not yet seen is expected to hold, `live` entries in all:
  // split over its experts by the calibrated entries_fraction (one untagged segment
  // for a dense layer, or one whose experts the calibration never saw).
  static void predict_layer(const CalibrationProfile& profile, int layer, int64_t live,
                            std::vector<SegmentInfo>& out) {
    out.clear();
    const LayerStats& stats = profile.layers[static_cast<size_t>(layer)];
    std::vector<double> fraction;
    for (const ExpertStats& e : stats.experts)
      fraction.push_back(std::isfinite(e.entries_fraction) ? std::max(0.0, e.entries_fraction)
                                                           : 0.0);
    const bool any = std::any_of(fraction.begin(), fraction.end(), [](double f) { return f > 0; });
    if (!stats.moe || !any) {
      if (live > 0) out.push_back({0, {layer, kAllHeads, kNoExpert}, live, 0});
      return;
    }
    const std::vector<int64_t> caps(fraction.size(), live);
    const std::vector<int64_t> n = water_fill(live, fraction, caps);
    for (size_t e = 0; e < n.size(); ++e)
      if (n[e] > 0) out.push_back({0, {layer, kAllHeads, static_cast<int>(e)}, n[e], 0});
  }

  // Greedy water-filling of `total` (at most the live entries) over the segments.
  static void fill(std::vector<Segment>& segments, int64_t total) {
    int64_t live = 0;
    for (const Segment& s : segments) live += s.live;
    int64_t remaining = std::min(total, live);
    const int64_t chunk = std::max<int64_t>(1, remaining / kChunks);
    // (gain per entry, segment index); the top is the highest gain, then the lowest index.
    using Item = std::pair<double, size_t>;
    const auto lower = [](const Item& a, const Item& b) {
      return a.first != b.first ? a.first < b.first : a.second > b.second;
    };
    std::priority_queue<Item, std::vector<Item>, decltype(lower)> queue(lower);
    for (size_t i = 0; i < segments.size(); ++i)
      if (segments[i].live > 0) queue.push({next_gain(segments[i], chunk), i});
    while (remaining > 0) {
      const size_t i = queue.top().second;
      queue.pop();
      Segment& s = segments[i];
      const int64_t step = std::min({chunk, s.live - s.budget, remaining});
      s.budget += step;
      remaining -= step;
      if (s.budget < s.live) queue.push({next_gain(s, chunk), i});
    }
  }

  // The coverage curve and the density rho of a segment tagged `expert` in `layer`.
  static std::pair<const CoverageCurve*, double> statistics(const LayerStats& stats, int layer,
                                                            int expert) {
    if (expert >= 0) {
      const ExpertStats& e = stats.experts[static_cast<size_t>(expert)];
      if (!(e.entries_fraction >= 0 && e.entries_fraction <= 1) ||
          !(e.mass_received >= 0 && e.mass_received <= 1))
        fail(
            "allocator 'ekva-mass': calibration profile layer {} expert {} has entries_fraction "
            "{} and mass_received {}; expected both in [0, 1]",
            layer, expert, e.entries_fraction, e.mass_received);
      if (e.entries_fraction > 0) {
        check_coverage_curve(e.coverage, fmt::format("allocator 'ekva-mass': calibration profile "
                                                     "layer {} expert {}",
                                                     layer, expert));
        return {&e.coverage, e.mass_received / e.entries_fraction};
      }
    }
    check_coverage_curve(
        stats.all.coverage,
        fmt::format("allocator 'ekva-mass': calibration profile layer {} (all)", layer));
    return {&stats.all.coverage, 1.0};
  }
};

}  // namespace

std::unique_ptr<Allocator> make_ekva_mass_allocator() {
  return std::make_unique<EkvaMassAllocator>();
}

}  // namespace ekva
