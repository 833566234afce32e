// The policies' factories and the selection helper they share.
#pragma once

#include <memory>

#include "kv/policy.h"

namespace ekva {

std::unique_ptr<Policy> make_full_policy();
std::unique_ptr<Policy> make_streaming_llm_policy();
std::unique_ptr<Policy> make_h2o_policy();
std::unique_ptr<Policy> make_snapkv_policy();
std::unique_ptr<Policy> make_knorm_policy();
std::unique_ptr<Policy> make_random_policy();

// keep = the indices of the min(budget, n) highest scores, ascending. Ties go to the
// later entry (more recent within a kv-head's list).
void select_top(std::span<const float> scores, int64_t budget, std::vector<int32_t>& keep);

// The segment's entries in order: total count.
int64_t count_entries(std::span<const EntryRun> runs);

}  // namespace ekva
