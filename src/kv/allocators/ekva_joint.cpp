// ekva-joint: budgets per (layer, kv-head, expert) segment, from the calibration
// profile across layers and from the live scores within a layer.
//
// Across layers the split is ekva-mass's (ekva_mass.cpp): every layer's (layer, expert)
// segments, with their live entry counts and calibrated attention-mass densities and
// coverage curves, compete for the sequence's budget by water-filling; a layer's share
// B_l is what its experts won together. So a layer whose keys, as routed now, spread
// their attention over many entries gets more than one whose attention concentrates.
// Within a layer the split is Ada-KV's (adakv.cpp) over the (kv-head, expert) segments
// jointly: each kv-head keeps its top floor(alpha * B_l / H) entries by live score
// (alpha = 0.2, the safeguard), wherever its experts are, and the rest of B_l goes to
// the layer's highest live scores in any segment. A segment's budget is the number of
// its entries so chosen, so a score-ranking policy keeps exactly those entries.
//
// Why: measured on the shipped model (bench/results/eval_*), fixed per-expert shares
// from calibration lose to live-score allocation at practical budgets, because the
// entries a prompt needs are found by its own attention, not by its experts' averages;
// the calibrated part that remains is the one the profile measures well (how much
// budget a layer needs to keep its mass), combined with live scores where they matter.
// Ties between equal scores go to the lower segment, then the earlier entry.
#include <algorithm>
#include <functional>
#include <map>
#include <numeric>

#include "kv/allocator.h"

namespace ekva {

namespace {

constexpr double kAlpha = 0.2;

struct Candidate {
  float score;
  int32_t segment;  // index in its layer's segment list
  int64_t rank;     // rank within its kv-head, by score
};

// The (layer, expert) segments of a layer listed at (layer, kv-head, expert): live
// entries summed over the kv-heads.
std::vector<SegmentInfo> by_expert(std::span<const SegmentInfo> segments) {
  std::map<int, int64_t> n;
  for (const SegmentInfo& s : segments) n[s.key.expert] += s.n_entries;
  std::vector<SegmentInfo> out;
  for (const auto& [expert, entries] : n)
    if (entries > 0 && !segments.empty())
      out.push_back({static_cast<int>(out.size()),
                     {segments.front().key.layer, kAllHeads, expert},
                     entries,
                     0});
  return out;
}

class EkvaJointAllocator final : public Allocator {
 public:
  std::string_view name() const override { return "ekva-joint"; }
  Granularity granularity() const override { return Granularity::kPerHeadExpert; }
  bool needs_profile() const override { return true; }
  bool needs_live_scores() const override { return true; }

  Allocation allocate(const AllocationInput& input) const override {
    check_allocation_input(*this, input);
    AllocationInput experts = expert_input(input);
    const Allocation shares = mass_->allocate(experts);
    Allocation out(input.segments.size());
    for (size_t l = 0; l < input.segments.size(); ++l)
      out[l] = layer_budgets(input.segments[l], input.live_scores[l], input.n_kv_heads,
                             std::accumulate(shares[l].begin(), shares[l].end(), int64_t{0}));
    return out;
  }

  std::vector<int64_t> allocate_layer(const AllocationInput& input, int layer,
                                      std::span<const int64_t> committed) const override {
    check_layer_allocation_input(*this, input, layer, committed);
    AllocationInput experts = expert_input(input);
    const std::vector<int64_t> share = mass_->allocate_layer(experts, layer, committed);
    const auto l = static_cast<size_t>(layer);
    return layer_budgets(input.segments[l], input.live_scores[l], input.n_kv_heads,
                         std::accumulate(share.begin(), share.end(), int64_t{0}));
  }

 private:
  // The same input at (layer, expert) granularity, for ekva-mass.
  static AllocationInput expert_input(const AllocationInput& input) {
    AllocationInput e;
    e.n_layers = input.n_layers;
    e.n_kv_heads = input.n_kv_heads;
    e.n_experts = input.n_experts;
    e.evictable_budget = input.evictable_budget;
    e.profile = input.profile;
    e.segments.resize(input.segments.size());
    for (size_t l = 0; l < input.segments.size(); ++l) e.segments[l] = by_expert(input.segments[l]);
    return e;
  }

  // One layer's segment budgets from its share (at most its live entries).
  static std::vector<int64_t> layer_budgets(std::span<const SegmentInfo> segments,
                                            std::span<const std::vector<float>> scores,
                                            int n_kv_heads, int64_t share) {
    std::vector<int64_t> budget(segments.size(), 0);
    int64_t live = 0;
    for (const SegmentInfo& s : segments) live += s.n_entries;
    share = std::min(share, live);
    if (share <= 0) return budget;
    const auto floor_per_head =
        static_cast<int64_t>(kAlpha * static_cast<double>(share) / static_cast<double>(n_kv_heads));
    std::vector<Candidate> head, rest;
    for (int h = 0; h < n_kv_heads; ++h) {
      head.clear();
      for (size_t i = 0; i < segments.size(); ++i) {
        if (segments[i].key.kv_head != h) continue;
        for (float s : scores[i]) head.push_back({s, static_cast<int32_t>(i), 0});
      }
      std::stable_sort(head.begin(), head.end(), [](const Candidate& a, const Candidate& b) {
        return a.score != b.score ? a.score > b.score : a.segment < b.segment;
      });
      const auto keep = std::min<int64_t>(floor_per_head, std::ssize(head));
      for (int64_t r = 0; r < std::ssize(head); ++r) {
        if (r < keep) {
          ++budget[static_cast<size_t>(head[static_cast<size_t>(r)].segment)];
        } else {
          rest.push_back(
              {head[static_cast<size_t>(r)].score, head[static_cast<size_t>(r)].segment, r});
        }
      }
    }
    const int64_t adaptive = std::min<int64_t>(
        share - std::accumulate(budget.begin(), budget.end(), int64_t{0}), std::ssize(rest));
    if (adaptive > 0) {
      const auto first = rest.begin(), nth = first + adaptive;
      std::nth_element(first, nth, rest.end(), [](const Candidate& a, const Candidate& b) {
        if (a.score != b.score) return a.score > b.score;
        return a.segment != b.segment ? a.segment < b.segment : a.rank < b.rank;
      });
      for (auto c = first; c != nth; ++c) ++budget[static_cast<size_t>(c->segment)];
    }
    return budget;
  }

  std::unique_ptr<Allocator> mass_ = make_ekva_mass_allocator();
};

}  // namespace

std::unique_ptr<Allocator> make_ekva_joint_allocator() {
  return std::make_unique<EkvaJointAllocator>();
}

}  // namespace ekva
