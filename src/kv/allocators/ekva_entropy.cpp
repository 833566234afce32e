// ekva-entropy: the seed's rule, "attention entropy x log routing frequency" per
// (layer, expert), made well-defined. The weight of expert e in layer l is
//   w_{l,e} = H_{l,e} * log(1 + f_{l,e} * E)
// with H the mean entropy (nats) of the attention rows of the queries routed to e (a
// spread-out attention needs more keys kept), f its top-1 routing frequency (the tag
// the store keeps) and E the number of experts. log(f) itself is negative for every
// f < 1, so there a higher entropy would mean a lower weight (the product's order flips
// with the sign), and -inf for an expert never routed. f * E is the frequency relative
// to uniform routing, so log(1 + f * E) is 0 for an expert never routed, log 2 for a
// uniformly routed one, and grows ever more slowly for hot experts (no single expert
// takes a layer's whole budget).
//
// Layers weigh equally: each gets an equal share B_l of evictable_budget (capped at its
// live entries, the rest going to the other layers). Within a layer of S_l segments,
// every segment first gets min(n_s, floor(0.1 * B_l / S_l)) (a tenth of the equal share,
// so an expert the calibration text rarely routed to keeps some entries), then the rest
// of B_l is water-filled in proportion to w, capped at the live entries. Segments with no
// expert statistics (untagged entries, dense layers) get the mean weight of the layer's
// tagged segments, i.e. exactly the equal share B_l / S_l before capping (weight 1 when
// the layer has no tagged segment).
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kv/allocator.h"

namespace ekva {

namespace {

constexpr double kMinShare = 0.1;  // every segment's minimum, as a share of the equal share

class EkvaEntropyAllocator final : public Allocator {
 public:
  std::string_view name() const override { return "ekva-entropy"; }
  Granularity granularity() const override { return Granularity::kPerExpert; }
  bool needs_profile() const override { return true; }

  Allocation allocate(const AllocationInput& input) const override {
    check_allocation_input(*this, input);
    const std::vector<int64_t> layer_budget = equal_layer_shares(input);  // [n_layers]
    Allocation out(input.segments.size());
    for (size_t l = 0; l < input.segments.size(); ++l)
      out[l] = layer_budgets(input, static_cast<int>(l), layer_budget[l]);
    return out;
  }

  // Exact per layer: a layer's budgets read its own segments and its equal share,
  // which only the live entries of the other layers move.
  std::vector<int64_t> allocate_layer(const AllocationInput& input, int layer,
                                      std::span<const int64_t> committed) const override {
    check_layer_allocation_input(*this, input, layer, committed);
    const int64_t share = std::min(
        equal_layer_shares(input.evictable_budget,
                           predicted_layer_entries(input, layer))[static_cast<size_t>(layer)],
        uncommitted_budget(input, layer, committed));
    return layer_budgets(input, layer, share);
  }

 private:
  // The budgets of the segments of `layer` from its share, at most its live entries.
  static std::vector<int64_t> layer_budgets(const AllocationInput& input, int layer,
                                            int64_t layer_budget) {
    const auto& segments = input.segments[static_cast<size_t>(layer)];
    const size_t n = segments.size();
    std::vector<int64_t> out(n);
    if (n == 0) return out;
    std::vector<double> weight(n, 0.0);  // [segments of the layer]
    double tagged_sum = 0;
    int tagged = 0;
    for (size_t i = 0; i < n; ++i) {
      if (segments[i].key.expert == kNoExpert) continue;
      weight[i] = expert_weight(input, layer, segments[i].key.expert);
      tagged_sum += weight[i];
      ++tagged;
    }
    for (size_t i = 0; i < n; ++i)
      if (segments[i].key.expert == kNoExpert) weight[i] = tagged > 0 ? tagged_sum / tagged : 1.0;

    const auto minimum = static_cast<int64_t>(kMinShare * static_cast<double>(layer_budget) /
                                              static_cast<double>(n));
    std::vector<int64_t> room(n);  // [segments of the layer] live entries past the minimum
    int64_t rest = layer_budget;
    for (size_t i = 0; i < n; ++i) {
      out[i] = std::min(minimum, segments[i].n_entries);
      room[i] = segments[i].n_entries - out[i];
      rest -= out[i];
    }
    const std::vector<int64_t> extra = water_fill(rest, weight, room);
    for (size_t i = 0; i < n; ++i) out[i] += extra[i];
    return out;
  }

  static double expert_weight(const AllocationInput& input, int layer, int expert) {
    const ExpertStats& s =
        input.profile->layers[static_cast<size_t>(layer)].experts[static_cast<size_t>(expert)];
    const double entropy = s.query_entropy, frequency = s.routing_top1_frequency;
    if (!(entropy >= 0 && std::isfinite(entropy)) || !(frequency >= 0 && frequency <= 1))
      fail(
          "allocator 'ekva-entropy': calibration profile layer {} expert {} has query_entropy {} "
          "and routing_top1_frequency {}; expected entropy >= 0 and a frequency in [0, 1]",
          layer, expert, entropy, frequency);
    return entropy * std::log1p(frequency * input.n_experts);
  }
};

}  // namespace

std::unique_ptr<Allocator> make_ekva_entropy_allocator() {
  return std::make_unique<EkvaEntropyAllocator>();
}

}  // namespace ekva
