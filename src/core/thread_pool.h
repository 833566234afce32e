// A fixed pool of worker threads for the forward pass. Decode issues many short
// parallel loops per token (~110 per step, one per matmul), each a few to a few
// hundred microseconds, so the pool is built for (1) low overhead per call on an
// idle machine and (2) graceful degradation when another process takes a core.
//
// Schedule: [0, n) is cut into one contiguous share per thread, as a static
// schedule would, and each share into a few chunks. A thread runs the chunks of its
// own share front to back, then steals unstarted chunks from the back of the other
// shares. On an idle machine every thread does (about) its own share; when a worker
// is descheduled or late to wake, the threads that are running finish its share,
// and the caller returns without waiting for it: it waits only for chunks that have
// started.
//
// Waiting: idle workers spin (pause) for a short, time-bounded while, then spin
// with sched_yield, then sleep on a futex (C++20 atomic wait); the caller waits for
// started chunks the same way. So a spinning thread gives its core away soon when
// other work wants it, and never spins for long on a core that the thread it waits
// for needs.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
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

  // Calls fn(begin, end, thread) over contiguous ranges that together cover [0, n)
  // exactly once, and returns when all calls have returned.
  //  - A thread may get several ranges (chunks of its own share, and ranges stolen
  //    from others'); callers must not assume one range per thread, nor which
  //    thread gets which range.
  //  - thread is in [0, size()) and names the OS thread making the call: calls that
  //    run at the same time never share it, so it may index per-thread scratch. The
  //    caller of parallel_for is thread 0.
  //  - A parallel_for made from inside fn (on this pool) runs inline on the calling
  //    thread, as fn(0, n, thread) with that thread's index.
  //  - If fn throws, ranges not yet started are skipped, the call waits for the
  //    ranges already running and then rethrows the first exception in the caller;
  //    the pool stays usable.
  //  - One loop at a time: calling parallel_for from two outside threads at once on
  //    the same pool of two or more threads is an error (it throws).
  template <typename Fn>
  void parallel_for(int64_t n, Fn&& fn) {
    if (n <= 0) return;
    if (n_threads_ == 1) {  // inline, so that fn can be inlined too
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

  // One thread's share of the current loop, alone on its cache line: its owner
  // claims from the front, thieves from the back, in one word.
  struct alignas(64) Share {
    // (front << 16) | back: chunks [front, back) are unclaimed. Any unclaimed chunk
    // belongs to the live loop (a loop cannot end before all its chunks are
    // claimed and done), so a claim needs no generation tag.
    std::atomic<uint32_t> claim{0};
    std::atomic<uint32_t> left{0};  // chunks not yet done
  };

  void run(int64_t n, Task task, void* ctx);
  void worker(int thread);
  // Runs chunks (own share first, then stolen) until none are left to claim.
  void work(int thread);
  void run_chunk(int share, int chunk, int thread);
  int chunks_in(int share) const;

  int n_threads_;
  std::vector<std::thread> workers_;
  std::vector<Share> shares_;

  // The current loop. Written by the caller before it publishes the shares'
  // claim words (release) and read by a thread only after it has claimed a chunk
  // (acquire), which the loop cannot outlive.
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;

  alignas(64) std::atomic<uint32_t> generation_{0};  // bumped to wake workers
  std::atomic<bool> stop_{false};
  alignas(64) std::atomic<uint32_t> shares_left_{0};  // shares with chunks not done
  std::atomic<bool> busy_{false};                     // a loop is running
  std::atomic<bool> failed_{false};                   // fn threw: skip the rest
  std::mutex error_mutex_;
  std::exception_ptr error_;  // the first exception fn threw in this loop
};

// Threads a backend uses when not told: EKVA_THREADS if set, otherwise one per core.
int default_thread_count();

}  // namespace ekva
