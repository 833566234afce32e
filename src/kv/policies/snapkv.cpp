// SnapKV (Li et al. 2024): the attention that an observation window of the last
// prompt queries pays to each entry (summed over the GQA group's query heads),
// max-pooled over neighbouring positions so that the context of a selected token
// survives with it; the highest pooled scores are kept.
#include <algorithm>

#include "kv/policies/policies.h"

namespace ekva {
namespace {

// SnapKV's pooling kernel (kernel_size 7 in the reference implementation).
constexpr int64_t kPoolRadius = 3;

class SnapKvPolicy final : public Policy {
 public:
  std::string_view name() const override { return "snapkv"; }
  ScoreSource score_source() const override { return ScoreSource::kObservationWindow; }
  void select(std::span<const EntryRun> runs, int64_t budget, int64_t, std::mt19937_64&,
              std::vector<int32_t>& keep) const override {
    std::vector<float> raw, pooled;
    raw.reserve(static_cast<size_t>(count_entries(runs)));
    for (const EntryRun& r : runs) raw.insert(raw.end(), r.scores, r.scores + r.n);
    pooled.resize(raw.size());
    // Pool within each kv-head's list (consecutive runs of one kv-head are in
    // position order); never across two kv-heads.
    size_t begin = 0;
    for (size_t i = 0; i < runs.size();) {
      size_t j = i;
      size_t end = begin;
      while (j < runs.size() && runs[j].kv_head == runs[i].kv_head) end += static_cast<size_t>(runs[j++].n);
      for (size_t e = begin; e < end; ++e) {
        const size_t lo = e >= begin + kPoolRadius ? e - kPoolRadius : begin;
        const size_t hi = std::min(end, e + kPoolRadius + 1);
        pooled[e] = *std::max_element(raw.begin() + static_cast<ptrdiff_t>(lo),
                                      raw.begin() + static_cast<ptrdiff_t>(hi));
      }
      begin = end;
      i = j;
    }
    select_top(pooled, budget, keep);
  }
};

}  // namespace

std::unique_ptr<Policy> make_snapkv_policy() { return std::make_unique<SnapKvPolicy>(); }

}  // namespace ekva
