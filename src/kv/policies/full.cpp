// Full: keeps every entry (the reference row of every evaluation). The compressed
// cache never evicts under it, so its rank is never read; it is flat.
#include "kv/policies/policies.h"

namespace ekva {
namespace {

class FullPolicy final : public Policy {
 public:
  std::string_view name() const override { return "full"; }
  void rank(const RankInput& input, std::mt19937_64&, std::vector<float>& rank) const override {
    rank.assign(static_cast<size_t>(count_entries(input.runs)), 0.f);
  }
};

}  // namespace

std::unique_ptr<Policy> make_full_policy() { return std::make_unique<FullPolicy>(); }

}  // namespace ekva
