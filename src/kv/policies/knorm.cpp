// K-norm (Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV
// Cache Compression"): keys with a low L2 norm draw high attention, so the entries
// with the smallest key norms are kept. Needs no attention scores at all.
#include <cmath>

#include "kv/policies/policies.h"

namespace ekva {
namespace {

class KNormPolicy final : public Policy {
 public:
  std::string_view name() const override { return "knorm"; }
  void select(std::span<const EntryRun> runs, int64_t budget, int64_t head_dim, std::mt19937_64&,
              std::vector<int32_t>& keep) const override {
    std::vector<float> scores;
    scores.reserve(static_cast<size_t>(count_entries(runs)));
    for (const EntryRun& r : runs) {
      for (int64_t i = 0; i < r.n; ++i) {
        double sq = 0;
        for (int64_t d = 0; d < head_dim; ++d) sq += double{r.k[i * head_dim + d]} * r.k[i * head_dim + d];
        scores.push_back(-static_cast<float>(std::sqrt(sq)));
      }
    }
    select_top(scores, budget, keep);
  }
};

}  // namespace

std::unique_ptr<Policy> make_knorm_policy() { return std::make_unique<KNormPolicy>(); }

}  // namespace ekva
