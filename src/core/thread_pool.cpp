#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/error.h"

namespace ekva {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

using Clock = std::chrono::steady_clock;

// Chunks per share: enough that a running thread can take over most of a late
// thread's share, few enough that claiming (one uncontended CAS on the owner's
// cache line) stays a small part of a ~10 us loop.
constexpr int kChunksPerShare = 4;

// How long a waiting thread spins on pause, then on sched_yield, before it sleeps
// on a futex. The pause phase covers the gap between the matmuls of a decode step
// (a few microseconds of serial work on the caller) so an idle machine never pays
// a futex wake-up inside a step; the yield phase hands the core to whatever else
// is runnable on it (another process, or the very thread we wait for) while still
// catching a loop that starts soon; past it the thread sleeps and its core is free.
constexpr auto kWorkerPause = std::chrono::microseconds(200);
constexpr auto kWorkerYield = std::chrono::microseconds(500);
// The caller waits only for chunks that have started (the rest it runs itself),
// so a long wait means the thread running one was preempted: stop spinning soon,
// so that the scheduler can move that thread onto the caller's core.
constexpr auto kCallerPause = std::chrono::microseconds(20);
constexpr auto kCallerYield = std::chrono::microseconds(100);

// Waits until `done()`; `value` is the atomic to sleep on and `stale` the value it
// holds while there is nothing to do.
template <typename Done>
void wait_until(const std::atomic<uint32_t>& value, Done done, Clock::duration pause,
                Clock::duration yield) {
  if (done()) return;
  const auto t0 = Clock::now();
  for (int i = 1;; ++i) {
    cpu_relax();
    if (done()) return;
    if ((i & 31) == 0 && Clock::now() - t0 > pause) break;
  }
  while (Clock::now() - t0 < yield) {
    std::this_thread::yield();
    if (done()) return;
  }
  for (;;) {
    const uint32_t v = value.load(std::memory_order_acquire);
    if (done()) return;
    value.wait(v, std::memory_order_acquire);
  }
}

// Which pool (if any) the current thread is running a loop of, and as which
// thread: a parallel_for from inside fn then runs inline.
struct CurrentLoop {
  const ThreadPool* pool = nullptr;
  int thread = 0;
};
thread_local CurrentLoop current_loop;

constexpr uint32_t pack(uint32_t front, uint32_t back) { return (front << 16) | back; }

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
  if (n_threads < 1) fail("thread pool: thread count must be at least 1, got {}", n_threads);
  if (n_threads > 1024) fail("thread pool: thread count must be at most 1024, got {}", n_threads);
  shares_ = std::vector<Share>(static_cast<size_t>(n_threads_));
  for (int t = 1; t < n_threads_; ++t) workers_.emplace_back([this, t] { worker(t); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

int ThreadPool::chunks_in(int share) const {
  const int64_t len = n_ * (share + 1) / n_threads_ - n_ * share / n_threads_;
  return static_cast<int>(std::min<int64_t>(len, kChunksPerShare));
}

void ThreadPool::run_chunk(int share, int chunk, int thread) {
  const int64_t b0 = n_ * share / n_threads_;
  const int64_t len = n_ * (share + 1) / n_threads_ - b0;
  const int64_t k = std::min<int64_t>(len, kChunksPerShare);
  const int64_t begin = b0 + len * chunk / k;
  const int64_t end = b0 + len * (chunk + 1) / k;
  if (!failed_.load(std::memory_order_relaxed)) {
    try {
      task_(ctx_, begin, end, thread);
    } catch (...) {
      std::lock_guard lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  // Nothing of the loop may be touched after the last decrement: the caller may
  // return (and start the next loop) as soon as shares_left_ reaches zero.
  if (shares_[static_cast<size_t>(share)].left.fetch_sub(1, std::memory_order_acq_rel) == 1 &&
      shares_left_.fetch_sub(1, std::memory_order_acq_rel) == 1)
    shares_left_.notify_all();
}

void ThreadPool::work(int thread) {
  // Own share from the front (contiguous, as a static schedule would run it).
  Share& own = shares_[static_cast<size_t>(thread)];
  uint32_t w = own.claim.load(std::memory_order_relaxed);
  for (;;) {
    const uint32_t front = w >> 16, back = w & 0xffff;
    if (front >= back) break;
    if (own.claim.compare_exchange_weak(w, pack(front + 1, back), std::memory_order_acquire,
                                        std::memory_order_relaxed))
      run_chunk(thread, static_cast<int>(front), thread);
  }
  // Then the others' shares from the back, where their owners will get last.
  for (int k = 1; k < n_threads_; ++k) {
    const int s = (thread + k) % n_threads_;
    Share& victim = shares_[static_cast<size_t>(s)];
    w = victim.claim.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t front = w >> 16, back = w & 0xffff;
      if (front >= back) break;
      if (victim.claim.compare_exchange_weak(w, pack(front, back - 1), std::memory_order_acquire,
                                             std::memory_order_relaxed))
        run_chunk(s, static_cast<int>(back - 1), thread);
    }
  }
}

void ThreadPool::run(int64_t n, Task task, void* ctx) {
  if (current_loop.pool == this) {
    task(ctx, 0, n, current_loop.thread);  // nested: inline on this thread
    return;
  }
  if (busy_.exchange(true, std::memory_order_acquire))
    fail(
        "thread pool: parallel_for called from a second thread while a loop of this pool "
        "({} threads) is running; one loop at a time",
        n_threads_);
  const CurrentLoop outer = current_loop;
  if (n_threads_ == 1 || n == 1) {
    // Nothing to share: run inline, as thread 0, and pass exceptions straight on.
    struct Restore {
      ThreadPool* pool;
      CurrentLoop outer;
      ~Restore() {
        current_loop = outer;
        pool->busy_.store(false, std::memory_order_release);
      }
    } restore{this, outer};
    current_loop = {this, 0};
    task(ctx, 0, n, 0);
    return;
  }

  task_ = task;
  ctx_ = ctx;
  n_ = n;
  failed_.store(false, std::memory_order_relaxed);
  uint32_t active = 0;
  for (int s = 0; s < n_threads_; ++s) {
    const int k = chunks_in(s);
    shares_[static_cast<size_t>(s)].left.store(static_cast<uint32_t>(k), std::memory_order_relaxed);
    active += k > 0 ? 1 : 0;
  }
  shares_left_.store(active, std::memory_order_relaxed);
  // Publishing the claim words opens the loop: everything above is visible to a
  // thread once its claim (acquire) succeeds, even a worker still on the last loop.
  for (int s = 0; s < n_threads_; ++s)
    shares_[static_cast<size_t>(s)].claim.store(pack(0, static_cast<uint32_t>(chunks_in(s))),
                                                std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();  // a syscall only when a worker sleeps

  current_loop = {this, 0};
  work(0);
  wait_until(
      shares_left_, [&] { return shares_left_.load(std::memory_order_acquire) == 0; }, kCallerPause,
      kCallerYield);
  current_loop = outer;

  std::exception_ptr error;
  if (failed_.load(std::memory_order_relaxed)) {
    std::lock_guard lock(error_mutex_);
    error = std::exchange(error_, nullptr);
  }
  busy_.store(false, std::memory_order_release);
  if (error) std::rethrow_exception(error);
}

void ThreadPool::worker(int thread) {
  current_loop = {this, thread};
  uint32_t seen = 0;
  for (;;) {
    wait_until(
        generation_, [&] { return generation_.load(std::memory_order_acquire) != seen; },
        kWorkerPause, kWorkerYield);
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_acquire)) return;
    work(thread);
  }
}

int default_thread_count() {
  if (const char* env = std::getenv("EKVA_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end != '\0' || n < 1 || n > 1024)
      fail("EKVA_THREADS: expected a count 1..1024, got '{}'", env);
    return static_cast<int>(n);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

}  // namespace ekva
