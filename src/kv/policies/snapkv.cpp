// SnapKV (Li et al. 2024): the attention that an observation window of the last
// prompt queries pays to each entry (summed over the GQA group's query heads),
// max-pooled over neighbouring positions so that the context of a selected token
// survives with it; the highest pooled scores are kept.
//
// During decode every query is observed too, so entries differ in how many queries
// have seen them (a prompt entry: the window plus every decode step; an entry
// written during decode: the steps since). The rank is therefore the mean
// attention per query seen (score / queries_seen), not the sum, which would rank
// like H2O with a bias for age. After the prompt every evictable entry has been
// seen by the whole window, so there the mean orders entries as the paper's sum.
//
// Pooling runs over the (layer, kv-head) in position order: the neighbours of an
// entry are the evictable entries within kPoolRadius positions of it, whichever
// expert tag (segment) they carry. Protected entries (sinks, recent window) are
// not pooled over, as the reference implementation pools the prompt without its
// observation window.
#include <algorithm>
#include <numeric>

#include "kv/policies/policies.h"

namespace ekva {
namespace {

// SnapKV's pooling kernel (kernel_size 7 in the reference implementation).
constexpr int32_t kPoolRadius = 3;

class SnapKvPolicy final : public Policy {
 public:
  std::string_view name() const override { return "snapkv"; }
  ScoreSource score_source() const override { return ScoreSource::kObservationWindow; }
  void rank(const RankInput& input, std::mt19937_64&, std::vector<float>& rank) const override {
    const auto n = static_cast<size_t>(count_entries(input.runs));
    std::vector<float> mean(n);
    std::vector<int32_t> position(n);
    size_t c = 0;
    for (const EntryRun& r : input.runs) {
      for (int64_t i = 0; i < r.n; ++i, ++c) {
        const float seen = input.queries_seen.empty() ? 1.f : input.queries_seen[c];
        mean[c] = seen > 0 ? r.scores[i] / seen : 0.f;
        position[c] = r.positions[i];
      }
    }
    // Entries by position (the lists of different tags interleave); positions are
    // distinct within a kv-head, so a window of radius R holds at most 2R + 1.
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return position[a] < position[b]; });
    rank.resize(n);
    for (size_t o = 0; o < n; ++o) {
      const int32_t p = position[order[o]];
      float best = mean[order[o]];
      for (size_t j = o; j-- > 0 && p - position[order[j]] <= kPoolRadius;)
        best = std::max(best, mean[order[j]]);
      for (size_t j = o + 1; j < n && position[order[j]] - p <= kPoolRadius; ++j)
        best = std::max(best, mean[order[j]]);
      rank[order[o]] = best;
    }
  }
};

}  // namespace

std::unique_ptr<Policy> make_snapkv_policy() { return std::make_unique<SnapKvPolicy>(); }

}  // namespace ekva
