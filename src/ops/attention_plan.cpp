#include "ops/attention_plan.h"

#include <algorithm>

#include "core/error.h"

namespace ekva {

AttentionPlan plan_attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
                             const AttentionPlanOptions& options) {
  AttentionPlan plan;
  plan_attention(p, lists, options, plan);
  return plan;
}

void plan_attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
                    const AttentionPlanOptions& options, AttentionPlan& plan) {
  const int64_t KH = p.n_kv_heads;
  EKVA_CHECK(static_cast<int64_t>(lists.size()) == p.n_seqs * KH,
             "attention plan: {} chunk lists for {} sequences x {} kv-heads", lists.size(),
             p.n_seqs, KH);
  EKVA_CHECK(options.min_tasks >= 1 && options.min_item_entries >= 1,
             "attention plan: bad options");
  std::vector<int64_t>& length = plan.list_entries;
  length.assign(lists.size(), 0);
  for (size_t i = 0; i < lists.size(); ++i)
    for (const KvChunk& c : lists[i]) length[i] += c.n;
  const auto list_of = [&](int64_t t, int64_t h) {
    const int64_t s = p.q_seq != nullptr ? p.q_seq[t] : 0;
    EKVA_CHECK(s >= 0 && s < p.n_seqs, "attention plan: query {} names sequence {} of {}", t, s,
               p.n_seqs);
    return static_cast<size_t>(s * KH + h);
  };

  // The bound: the total work over the tasks wanted, but no finer than the minimum.
  int64_t work = 0;
  for (int64_t t = 0; t < p.n_queries; ++t)
    for (int64_t h = 0; h < KH; ++h) work += length[list_of(t, h)];
  plan.item_entries =
      std::max(options.min_item_entries, (work + options.min_tasks - 1) / options.min_tasks);

  // Items: each (query, kv-head) cut into equal pieces of at most the bound.
  plan.items.clear();
  plan.merge_begin.clear();
  plan.merge_begin.push_back(0);
  for (int64_t t = 0; t < p.n_queries; ++t) {
    for (int64_t h = 0; h < KH; ++h) {
      const int64_t n = length[list_of(t, h)];
      const int64_t pieces = std::max<int64_t>(1, (n + plan.item_entries - 1) / plan.item_entries);
      for (int64_t k = 0; k < pieces; ++k)
        plan.items.push_back({static_cast<int32_t>(t), static_cast<int32_t>(h), n * k / pieces,
                              n * (k + 1) / pieces});
      plan.merge_begin.push_back(static_cast<int64_t>(plan.items.size()));
    }
  }

  // Tasks: consecutive items packed while they stay within the bound.
  plan.task_begin.clear();
  plan.task_begin.push_back(0);
  int64_t in_task = 0;
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const int64_t n = plan.items[i].end - plan.items[i].begin;
    if (i > 0 && in_task > 0 && in_task + n > plan.item_entries) {
      plan.task_begin.push_back(static_cast<int64_t>(i));
      in_task = 0;
    }
    in_task += std::max<int64_t>(n, 1);
  }
  plan.task_begin.push_back(static_cast<int64_t>(plan.items.size()));
}

}  // namespace ekva
