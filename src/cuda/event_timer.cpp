#include "cuda/event_timer.h"

#include "core/error.h"
#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"

namespace ekva::cuda {

EventOpTimer::EventOpTimer(CudaBackend& backend) : backend_(backend) {}

EventOpTimer::~EventOpTimer() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

cudaEvent_t EventOpTimer::event(size_t i) {
  while (events_.size() <= i) {
    cudaEvent_t e = nullptr;
    EKVA_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  return events_[i];
}

void EventOpTimer::start() {
  EKVA_CHECK(used_ % 2 == 0, "event timer: start() twice without stop()");
  EKVA_CUDA_CHECK(cudaEventRecord(event(used_), backend_.stream()));
  ++used_;
}

void EventOpTimer::stop() {
  EKVA_CHECK(used_ % 2 == 1, "event timer: stop() without start()");
  EKVA_CUDA_CHECK(cudaEventRecord(event(used_), backend_.stream()));
  ++used_;
}

const std::vector<double>& EventOpTimer::collect() {
  seconds_.clear();
  if (used_ > 0) EKVA_CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1]));
  for (size_t i = 0; i + 1 < used_; i += 2) {
    float ms = 0;
    EKVA_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
    seconds_.push_back(static_cast<double>(ms) * 1e-3);
  }
  used_ = 0;
  return seconds_;
}

}  // namespace ekva::cuda
