// adakv: Ada-KV's adaptive per-head budgets (Feng et al. 2024, "Ada-KV: Optimizing KV
// Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference", arXiv
// 2407.11550). The paper bounds the L1 eviction loss of a layer's output by the
// attention weight of the entries it evicts, so within a layer the budget should go to
// the entries with the highest scores whichever head they sit in: a head whose attention is spread
// out gets more, one concentrated on a few entries gets less.
//
// Per layer, with B_l its equal share of evictable_budget (capped at its live entries,
// the rest redistributed over layers) and H_l its (layer, kv-head) segments:
//   floor_h  = min(n_h, floor(alpha * B_l / H_l))   the safeguard, alpha = 0.2
//   budget_h = floor_h + |{entries of head h among the top (B_l - sum floor) scores of
//              the layer, each head's own top floor_h left out}|
// This is AdaKVPress of NVIDIA/kvpress (kvpress/presses/adakv_press.py, reviewed by
// Ada-KV's first author): each head's top n_safe = int(alpha * n_kept) entries are
// forced in, then the layer's top entries fill the rest. It keeps the budgets consistent
// with what a score-ranking policy then keeps (each head's top budget_h entries are
// exactly the selected set). The authors' repository (FFY0/AdaKV,
// adaptive_snapkv/monkeypatch/snapkv_utils.py) mixes instead: round((1 - alpha) *
// count_h + alpha * B_l / H_l) with count_h taken over the top B_l; both use alpha = 0.2.
// Ties between equal scores go to the lower head, then the earlier entry.
#include <algorithm>
#include <functional>
#include <numeric>

#include "kv/allocator.h"

namespace ekva {

namespace {

constexpr double kAlpha = 0.2;  // safeguard: share of the uniform per-head budget every head keeps

struct Candidate {
  float score;
  int32_t head;  // index of the segment in its layer
  int64_t rank;  // rank of the entry within its segment, by score
};

class AdaKvAllocator final : public Allocator {
 public:
  std::string_view name() const override { return "adakv"; }
  Granularity granularity() const override { return Granularity::kPerHead; }
  bool needs_live_scores() const override { return true; }

  Allocation allocate(const AllocationInput& input) const override {
    check_allocation_input(*this, input);
    const std::vector<int64_t> layer_budget = equal_layer_shares(input);  // [n_layers]
    Allocation out(input.segments.size());
    for (size_t l = 0; l < input.segments.size(); ++l)
      out[l] = layer_budgets(input.segments[l], input.live_scores[l], layer_budget[l]);
    return out;
  }

  // Exact per layer: a layer's budgets read its own scores and its equal share, which
  // only the live entries of the other layers move.
  std::vector<int64_t> allocate_layer(const AllocationInput& input, int layer,
                                      std::span<const int64_t> committed) const override {
    check_layer_allocation_input(*this, input, layer, committed);
    const auto l = static_cast<size_t>(layer);
    const int64_t share = std::min(
        equal_layer_shares(input.evictable_budget, predicted_layer_entries(input, layer))[l],
        uncommitted_budget(input, layer, committed));
    return layer_budgets(input.segments[l], input.live_scores[l], share);
  }

 private:
  // The budgets of one layer's (layer, kv-head) segments from its share, at most its
  // live entries.
  static std::vector<int64_t> layer_budgets(std::span<const SegmentInfo> segments,
                                            std::span<const std::vector<float>> scores,
                                            int64_t layer_budget) {
    const size_t heads = segments.size();
    std::vector<int64_t> budget(heads, 0);
    if (heads == 0) return budget;
    const auto safeguard = static_cast<int64_t>(kAlpha * static_cast<double>(layer_budget) /
                                                static_cast<double>(heads));
    // Each head's entries past its floor, by score (ties: earlier entry first).
    std::vector<float> sorted;
    std::vector<Candidate> rest;
    for (size_t h = 0; h < heads; ++h) {
      budget[h] = std::min(safeguard, segments[h].n_entries);
      sorted = scores[h];
      std::stable_sort(sorted.begin(), sorted.end(), std::greater<float>());
      for (size_t r = static_cast<size_t>(budget[h]); r < sorted.size(); ++r)
        rest.push_back({sorted[r], static_cast<int32_t>(h), static_cast<int64_t>(r)});
    }
    const int64_t adaptive =
        layer_budget - std::accumulate(budget.begin(), budget.end(), int64_t{0});
    // The top `adaptive` of the rest; layer_budget <= live entries, so there are enough.
    const auto first = rest.begin(), nth = first + adaptive;
    std::nth_element(first, nth, rest.end(), [](const Candidate& a, const Candidate& b) {
      if (a.score != b.score) return a.score > b.score;
      return a.head != b.head ? a.head < b.head : a.rank < b.rank;
    });
    for (auto c = first; c != nth; ++c) ++budget[static_cast<size_t>(c->head)];
    return budget;
  }
};

}  // namespace

std::unique_ptr<Allocator> make_adakv_allocator() { return std::make_unique<AdaKvAllocator>(); }

}  // namespace ekva
