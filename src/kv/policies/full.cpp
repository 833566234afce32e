// Full: keeps every entry (the reference row of every evaluation).
#include "kv/policies/policies.h"

namespace ekva {
namespace {

class FullPolicy final : public Policy {
 public:
  std::string_view name() const override { return "full"; }
  void select(std::span<const EntryRun> runs, int64_t, int64_t, std::mt19937_64&,
              std::vector<int32_t>& keep) const override {
    const int64_t n = count_entries(runs);
    keep.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) keep[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  }
};

}  // namespace

std::unique_ptr<Policy> make_full_policy() { return std::make_unique<FullPolicy>(); }

}  // namespace ekva
