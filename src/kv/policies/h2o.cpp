// H2O (Zhang et al. 2023): heavy hitters: the entries that have received the most
// attention, accumulated over every query since they were written (summed over the
// query heads of the GQA group), are kept. The sum, not the mean: H2O's rule, which
// favours entries that have been attended to for long.
#include "kv/policies/policies.h"

namespace ekva {
namespace {

class H2oPolicy final : public Policy {
 public:
  std::string_view name() const override { return "h2o"; }
  ScoreSource score_source() const override { return ScoreSource::kAccumulatedAttention; }
  void rank(const RankInput& input, std::mt19937_64&, std::vector<float>& rank) const override {
    rank.clear();
    for (const EntryRun& r : input.runs) rank.insert(rank.end(), r.scores, r.scores + r.n);
  }
};

}  // namespace

std::unique_ptr<Policy> make_h2o_policy() { return std::make_unique<H2oPolicy>(); }

}  // namespace ekva
