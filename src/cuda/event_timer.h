// The op profile's timer on the GPU (ops/profiling_backend.h, OpTimer): an event pair
// recorded on the backend's stream around each op call, resolved into durations when
// the profiler collects them at the end of a step (waiting for the last event). The
// events are created once and reused, so a profiled step allocates nothing once warm.
#pragma once

#include <vector>

#include <cuda_runtime.h>

#include "ops/profiling_backend.h"

namespace ekva::cuda {

class CudaBackend;

class EventOpTimer final : public OpTimer {
 public:
  explicit EventOpTimer(CudaBackend& backend);
  ~EventOpTimer() override;
  EventOpTimer(const EventOpTimer&) = delete;
  EventOpTimer& operator=(const EventOpTimer&) = delete;

  std::string_view name() const override { return "cuda events"; }
  void start() override;
  void stop() override;
  const std::vector<double>& collect() override;

 private:
  cudaEvent_t event(size_t i);  // the i-th event of the step, created on first use

  CudaBackend& backend_;
  std::vector<cudaEvent_t> events_;  // [2 * call]: start, stop
  size_t used_ = 0;                  // events recorded this step
  std::vector<double> seconds_;
};

}  // namespace ekva::cuda
