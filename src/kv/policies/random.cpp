// Random: a uniformly random subset of the budget's size (the floor any scoring
// policy must beat): every entry gets an independent uniform rank.
#include "kv/policies/policies.h"

namespace ekva {
namespace {

class RandomPolicy final : public Policy {
 public:
  std::string_view name() const override { return "random"; }
  void rank(const RankInput& input, std::mt19937_64& rng, std::vector<float>& rank) const override {
    std::uniform_real_distribution<float> uniform(0.f, 1.f);
    rank.resize(static_cast<size_t>(count_entries(input.runs)));
    for (float& r : rank) r = uniform(rng);
  }
};

}  // namespace

std::unique_ptr<Policy> make_random_policy() { return std::make_unique<RandomPolicy>(); }

}  // namespace ekva
