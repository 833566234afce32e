// uniform: every (layer, kv-head) segment gets the same budget, evictable_budget over
// the number of segments; a segment with fewer live entries keeps them all and the
// rest of its share goes equally to the others (water-filling on equal shares). The
// baseline SnapKV / H2O / StreamingLLM use, stated per kv-head.
#include "kv/allocator.h"

namespace ekva {

namespace {

class UniformAllocator final : public Allocator {
 public:
  std::string_view name() const override { return "uniform"; }
  Granularity granularity() const override { return Granularity::kPerHead; }

  Allocation allocate(const AllocationInput& input) const override {
    check_allocation_input(*this, input);
    const std::vector<int64_t> live = flat_live_entries(input);  // [segments]
    const std::vector<double> equal(live.size(), 1.0);
    return unflatten(input, water_fill(input.evictable_budget, equal, live));
  }
};

}  // namespace

std::unique_ptr<Allocator> make_uniform_allocator() { return std::make_unique<UniformAllocator>(); }

}  // namespace ekva
