// A fixed pool of worker threads for the forward pass. Decode issues many short
// parallel loops per token (one per matmul), so workers spin briefly before they
// sleep: a condition-variable wake-up alone would cost more than a small matmul.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace ekva {

class ThreadPool {
 public:
  // n_threads counts the calling thread, which takes part in every loop.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end, thread) over [0, n) split into contiguous ranges, one per
  // thread (static schedule: the ranges are equal in size, so is the work).
  template <typename Fn>
  void parallel_for(int64_t n, Fn&& fn) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n == 1) {
      fn(int64_t{0}, n, 0);
      return;
    }
    auto trampoline = [](void* ctx, int64_t begin, int64_t end, int thread) {
      (*static_cast<std::remove_reference_t<Fn>*>(ctx))(begin, end, thread);
    };
    run(n, trampoline, &fn);
  }

 private:
  using Task = void (*)(void* ctx, int64_t begin, int64_t end, int thread);
  void run(int64_t n, Task task, void* ctx);
  void worker(int thread);
  void run_share(int thread);

  int n_threads_;
  std::vector<std::thread> workers_;
  // The current loop; published by bumping generation_.
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

// Threads a backend uses when not told: EKVA_THREADS if set, otherwise one per core.
int default_thread_count();

}  // namespace ekva
