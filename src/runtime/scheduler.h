// The scheduler behind ekva::Scheduler (include/ekva/ekva.h): continuous batching
// over one forward pass per step.
#pragma once

#include <memory>

#include "ekva/ekva.h"
#include "runtime/runtime.h"

namespace ekva {

std::unique_ptr<Scheduler> make_scheduler(const Runtime& runtime, const SchedulerOptions& options);

}  // namespace ekva
