// pyramidkv: PyramidKV's per-layer budgets (Cai et al. 2024, "PyramidKV: Dynamic KV
// Cache Compression based on Pyramidal Information Funneling", arXiv 2406.02069):
// attention spreads wide in the bottom layers and funnels onto a few tokens in the top
// ones, so the budget falls linearly with depth. As in the reference implementation
// (Zefan-Cai/PyramidKV, pyramidkv/pyramidkv_utils.py, PyramidKVCluster.update_kv, with
// beta = 20), for the mean per-layer budget B = evictable_budget / n_layers:
//   top    = B / beta                    (the last layer)
//   bottom = 2 B - top                   (layer 0, so that the mean stays B)
//   if bottom > n, the live entries of the longest layer:
//     bottom = max(n, B), top = 2 B - bottom   (flatter, same mean)
//   budget[l] = bottom - l (bottom - top) / (n_layers - 1)
// The reference rounds the step down, so its budgets overshoot the total by
// ((bottom - top) mod (n_layers - 1)) * n_layers / 2 entries; here the schedule stays
// real-valued and is handed to water-filling,
// which rounds it with an exact sum and passes what a layer with fewer live entries
// cannot keep to the others in proportion to the schedule. The reference assumes every
// layer has the prompt's length; after decode-time eviction layers differ, which the
// capping covers (and the flattening compares with the longest layer, which is the
// reference's q_len - window when all layers are equally long).
#include "kv/allocator.h"

#include <algorithm>

namespace ekva {

namespace {

constexpr double kBeta = 20;  // top-layer budget = mean / beta (the reference's default)

class PyramidKvAllocator final : public Allocator {
 public:
  std::string_view name() const override { return "pyramidkv"; }
  Granularity granularity() const override { return Granularity::kPerLayer; }

  Allocation allocate(const AllocationInput& input) const override {
    check_allocation_input(*this, input);
    const int n_layers = input.n_layers;
    const double mean = static_cast<double>(input.evictable_budget) / n_layers;
    const std::vector<int64_t> live = flat_live_entries(input);  // [segments]
    const int64_t longest = live.empty() ? 0 : *std::max_element(live.begin(), live.end());
    double top = mean / kBeta;
    double bottom = 2 * mean - top;
    if (bottom > static_cast<double>(longest)) {
      bottom = std::max(static_cast<double>(longest), mean);
      top = 2 * mean - bottom;
    }
    const double step = n_layers > 1 ? (bottom - top) / (n_layers - 1) : 0.0;

    std::vector<double> schedule;  // [segments] the budget of each segment's layer
    for (int l = 0; l < n_layers; ++l)
      schedule.insert(schedule.end(), input.segments[static_cast<size_t>(l)].size(),
                      bottom - l * step);
    return unflatten(input, water_fill(input.evictable_budget, schedule, live));
  }
};

}  // namespace

std::unique_ptr<Allocator> make_pyramidkv_allocator() {
  return std::make_unique<PyramidKvAllocator>();
}

}  // namespace ekva
