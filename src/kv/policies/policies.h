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

}  // namespace ekva
