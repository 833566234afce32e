#include "kv/policy.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "kv/policies/policies.h"

namespace ekva {

std::unique_ptr<Policy> make_policy(std::string_view name) {
  if (name == "full") return make_full_policy();
  if (name == "streamingllm") return make_streaming_llm_policy();
  if (name == "h2o") return make_h2o_policy();
  if (name == "snapkv") return make_snapkv_policy();
  if (name == "knorm") return make_knorm_policy();
  if (name == "random") return make_random_policy();
  fail("unknown policy '{}' (choose full, streamingllm, h2o, snapkv, knorm or random)", name);
}

int64_t count_entries(std::span<const EntryRun> runs) {
  int64_t n = 0;
  for (const EntryRun& r : runs) n += r.n;
  return n;
}

void select_top(std::span<const float> scores, int64_t budget, std::vector<int32_t>& keep) {
  const auto n = static_cast<int64_t>(scores.size());
  keep.resize(static_cast<size_t>(n));
  std::iota(keep.begin(), keep.end(), 0);
  if (budget >= n) return;
  keep.resize(static_cast<size_t>(std::max<int64_t>(budget, 0)));
  if (budget <= 0) return;
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const auto better = [&](int32_t a, int32_t b) {
    const float sa = scores[static_cast<size_t>(a)], sb = scores[static_cast<size_t>(b)];
    return sa > sb || (sa == sb && a > b);
  };
  std::nth_element(order.begin(), order.begin() + budget - 1, order.end(), better);
  std::copy(order.begin(), order.begin() + budget, keep.begin());
  std::sort(keep.begin(), keep.end());
}

}  // namespace ekva
