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
  bool reads_keys() const override { return true; }
  void rank(const RankInput& input, std::mt19937_64&, std::vector<float>& rank) const override {
    const int64_t D = input.head_dim;
    rank.clear();
    for (const EntryRun& r : input.runs) {
      for (int64_t i = 0; i < r.n; ++i) {
        double sq = 0;
        for (int64_t d = 0; d < D; ++d) {
          const double x = r.k_at(i * D + d);  // the stored key (bf16 by default), widened
          sq += x * x;
        }
        rank.push_back(-static_cast<float>(std::sqrt(sq)));
      }
    }
  }
};

}  // namespace

std::unique_ptr<Policy> make_knorm_policy() { return std::make_unique<KNormPolicy>(); }

}  // namespace ekva
