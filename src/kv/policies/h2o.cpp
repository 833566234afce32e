// H2O (Zhang et al. 2023): heavy hitters: the entries that have received the most
// attention, accumulated over every query since they were written (summed over the
// query heads of the GQA group), are kept.
#include "kv/policies/policies.h"

namespace ekva {
namespace {

class H2oPolicy final : public Policy {
 public:
  std::string_view name() const override { return "h2o"; }
  ScoreSource score_source() const override { return ScoreSource::kAccumulatedAttention; }
  void select(std::span<const EntryRun> runs, int64_t budget, int64_t, std::mt19937_64&,
              std::vector<int32_t>& keep) const override {
    std::vector<float> scores;
    scores.reserve(static_cast<size_t>(count_entries(runs)));
    for (const EntryRun& r : runs) scores.insert(scores.end(), r.scores, r.scores + r.n);
    select_top(scores, budget, keep);
  }
};

}  // namespace

std::unique_ptr<Policy> make_h2o_policy() { return std::make_unique<H2oPolicy>(); }

}  // namespace ekva
