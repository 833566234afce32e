// Random: a uniformly random subset of the budget's size (the floor any scoring
// policy must beat).
#include <algorithm>
#include <numeric>

#include "kv/policies/policies.h"

namespace ekva {
namespace {

class RandomPolicy final : public Policy {
 public:
  std::string_view name() const override { return "random"; }
  void select(std::span<const EntryRun> runs, int64_t budget, int64_t, std::mt19937_64& rng,
              std::vector<int32_t>& keep) const override {
    const int64_t n = count_entries(runs);
    keep.resize(static_cast<size_t>(n));
    std::iota(keep.begin(), keep.end(), 0);
    if (budget >= n) return;
    std::shuffle(keep.begin(), keep.end(), rng);
    keep.resize(static_cast<size_t>(std::max<int64_t>(budget, 0)));
    std::sort(keep.begin(), keep.end());
  }
};

}  // namespace

std::unique_ptr<Policy> make_random_policy() { return std::make_unique<RandomPolicy>(); }

}  // namespace ekva
