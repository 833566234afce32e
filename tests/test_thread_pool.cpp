// ThreadPool: coverage, thread indices, nesting, exceptions, lifetime, stealing.
#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/thread_pool.h"

namespace ekva {
namespace {

// fn's ranges must be non-empty, inside [0, n), and cover every index exactly once.
void expect_exact_cover(ThreadPool& pool, int64_t n) {
  std::vector<std::atomic<uint32_t>> hits(static_cast<size_t>(n));
  std::atomic<bool> bad_range{false}, bad_thread{false};
  pool.parallel_for(n, [&](int64_t b, int64_t e, int thread) {
    if (!(0 <= b && b < e && e <= n)) bad_range = true;
    if (thread < 0 || thread >= pool.size()) bad_thread = true;
    for (int64_t i = b; i < e && i >= 0 && i < n; ++i)
      hits[static_cast<size_t>(i)].fetch_add(1, std::memory_order_relaxed);
  });
  EXPECT_FALSE(bad_range) << "n " << n << ", threads " << pool.size();
  EXPECT_FALSE(bad_thread) << "n " << n << ", threads " << pool.size();
  int64_t wrong = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (hits[static_cast<size_t>(i)].load() != 1) {
      if (first < 0) first = i;
      ++wrong;
    }
  }
  EXPECT_EQ(wrong, 0) << "n " << n << ", threads " << pool.size() << ": first index hit "
                      << (first < 0 ? 0 : hits[static_cast<size_t>(first)].load()) << " times is "
                      << first;
}

TEST(ThreadPool, EveryIndexExactlyOnce) {
  for (int threads = 1; threads <= 8; ++threads) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 7, 8, 9, 63, 64, 65, 1000, 1000003}) expect_exact_cover(pool, n);
  }
}

TEST(ThreadPool, NegativeCountIsEmpty) {
  ThreadPool pool(3);
  bool called = false;
  pool.parallel_for(-5, [&](int64_t, int64_t, int) { called = true; });
  EXPECT_FALSE(called);
}

TEST(ThreadPool, RejectsBadThreadCounts) {
  EXPECT_THROW(ThreadPool(0), std::exception);
  EXPECT_THROW(ThreadPool(-1), std::exception);
}

TEST(ThreadPool, BackToBackCalls) {
  ThreadPool pool(4);
  for (int call = 0; call < 20000; ++call) {
    const int64_t n = 1 + call % 97;
    std::atomic<int64_t> sum{0};
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      int64_t s = 0;
      for (int64_t i = b; i < e; ++i) s += i + 1;
      sum.fetch_add(s, std::memory_order_relaxed);
    });
    ASSERT_EQ(sum.load(), n * (n + 1) / 2) << "call " << call;
  }
}

// Per-thread scratch is safe: no two calls running at once share a thread index.
TEST(ThreadPool, ConcurrentCallsNeverShareAThreadIndex) {
  for (int threads : {2, 3, 8}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<bool>> in_use(static_cast<size_t>(threads));
    std::atomic<int> clashes{0}, out_of_range{0};
    for (int call = 0; call < 2000; ++call) {
      pool.parallel_for(64, [&](int64_t b, int64_t e, int thread) {
        if (thread < 0 || thread >= threads) {
          ++out_of_range;
          return;
        }
        if (in_use[static_cast<size_t>(thread)].exchange(true)) ++clashes;
        volatile int64_t x = 0;
        for (int64_t i = b; i < e; ++i)
          for (int k = 0; k < 200; ++k) x = x + k;
        in_use[static_cast<size_t>(thread)].store(false);
      });
    }
    EXPECT_EQ(clashes.load(), 0) << threads << " threads";
    EXPECT_EQ(out_of_range.load(), 0) << threads << " threads";
  }
}

TEST(ThreadPool, CallerIsThreadZero) {
  ThreadPool pool(4);
  const auto caller = std::this_thread::get_id();
  std::atomic<bool> wrong{false};
  for (int call = 0; call < 200; ++call)
    pool.parallel_for(100, [&](int64_t, int64_t, int thread) {
      if ((std::this_thread::get_id() == caller) != (thread == 0)) wrong = true;
    });
  EXPECT_FALSE(wrong);
}

TEST(ThreadPool, NestedCallRunsInlineWithTheSameThreadIndex) {
  ThreadPool pool(4);
  const int64_t outer_n = 40, inner_n = 13;
  std::vector<std::atomic<uint32_t>> hits(static_cast<size_t>(outer_n * inner_n));
  std::atomic<bool> wrong_thread{false};
  pool.parallel_for(outer_n, [&](int64_t b, int64_t e, int thread) {
    for (int64_t o = b; o < e; ++o) {
      pool.parallel_for(inner_n, [&](int64_t ib, int64_t ie, int inner_thread) {
        if (inner_thread != thread) wrong_thread = true;
        for (int64_t i = ib; i < ie; ++i) ++hits[static_cast<size_t>(o * inner_n + i)];
      });
    }
  });
  EXPECT_FALSE(wrong_thread);
  for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i].load(), 1u) << i;
}

TEST(ThreadPool, PoolsNestAcrossEachOther) {
  ThreadPool outer(3), inner(2);
  std::atomic<int64_t> sum{0};
  // A loop of another pool from inside fn is an ordinary call (one at a time: n = 1).
  outer.parallel_for(1, [&](int64_t, int64_t, int) {
    inner.parallel_for(1000, [&](int64_t b, int64_t e, int) { sum += e - b; });
  });
  EXPECT_EQ(sum.load(), 1000);
}

// Behaviour on exceptions: the rest of the loop is skipped, running ranges finish,
// the first exception reaches the caller, and the pool stays usable.
TEST(ThreadPool, ExceptionReachesTheCallerAndThePoolStaysUsable) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    for (int64_t bad : {int64_t{0}, int64_t{500}, int64_t{999}}) {
      try {
        pool.parallel_for(1000, [&](int64_t b, int64_t e, int) {
          if (b <= bad && bad < e) throw std::runtime_error("index " + std::to_string(bad));
        });
        ADD_FAILURE() << "no exception, threads " << threads << ", bad " << bad;
      } catch (const std::runtime_error& err) {
        EXPECT_EQ(std::string(err.what()), "index " + std::to_string(bad));
      }
      expect_exact_cover(pool, 1000);
    }
    // Every range throws: exactly one exception comes out.
    EXPECT_THROW(pool.parallel_for(1000, [](int64_t, int64_t, int) { throw 7; }), int);
    expect_exact_cover(pool, 777);
    // A single item runs inline and its exception passes straight through.
    EXPECT_THROW(pool.parallel_for(1, [](int64_t, int64_t, int) { throw 8; }), int);
    expect_exact_cover(pool, 5);
  }
}

TEST(ThreadPool, NestedExceptionPropagatesThroughBothLoops) {
  ThreadPool pool(3);
  EXPECT_THROW(pool.parallel_for(9,
                                 [&](int64_t, int64_t, int) {
                                   pool.parallel_for(5, [](int64_t b, int64_t, int) {
                                     if (b == 0) throw std::logic_error("inner");
                                   });
                                 }),
               std::logic_error);
  expect_exact_cover(pool, 100);
}

TEST(ThreadPool, SecondOutsideCallerWhileALoopRunsIsAnError) {
  ThreadPool pool(2);
  std::promise<bool> second_threw;
  auto verdict = second_threw.get_future();
  std::thread other;
  pool.parallel_for(2, [&](int64_t b, int64_t, int) {
    if (b != 0) return;
    other = std::thread([&] {
      try {
        pool.parallel_for(4, [](int64_t, int64_t, int) {});
        second_threw.set_value(false);
      } catch (const std::exception&) {
        second_threw.set_value(true);
      }
    });
    // Hold this loop open until the other thread has tried.
    verdict.wait_for(std::chrono::seconds(10));
  });
  other.join();
  ASSERT_TRUE(verdict.valid());
  EXPECT_TRUE(verdict.get());
  expect_exact_cover(pool, 100);  // still usable
}

TEST(ThreadPool, DestructionWhileIdle) {
  for (int threads = 1; threads <= 8; ++threads) {
    ThreadPool pool(threads);
  }  // never used
  for (int threads : {2, 5}) {
    ThreadPool pool(threads);
    expect_exact_cover(pool, 100);
  }  // destroyed while the workers still spin
  ThreadPool pool(4);
  expect_exact_cover(pool, 100);
  // Long enough for the workers to pass their spin and sleep on the futex: a loop
  // must wake them (or run without them), and destruction must too.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  expect_exact_cover(pool, 1000);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

// A thread stuck in one range does not hold up the rest of its share: the other
// threads take over its unstarted chunks (the call still waits for the stuck range).
TEST(ThreadPool, RunningThreadsFinishALateThreadsShare) {
  const int threads = 4;
  const int64_t n = 4000;
  ThreadPool pool(threads);
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::vector<std::atomic<int>> by(static_cast<size_t>(n));
    std::atomic<int> stalled{-1};  // the first worker to run a range sleeps in it
    pool.parallel_for(n, [&](int64_t b, int64_t e, int thread) {
      int none = -1;
      if (thread != 0 && stalled.compare_exchange_strong(none, thread))
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      for (int64_t i = b; i < e; ++i) {
        volatile int64_t x = 0;  // ~1 us an item, so that workers wake before the end
        for (int k = 0; k < 1000; ++k) x = x + k;
        by[static_cast<size_t>(i)] = thread + 1;
      }
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_NE(by[static_cast<size_t>(i)].load(), 0) << i;
    const int s = stalled.load();
    if (s < 0) continue;  // no worker woke in time: the caller ran everything
    // Share s is [n*s/threads, n*(s+1)/threads); its owner slept in its first chunk.
    int64_t by_owner = 0;
    for (int64_t i = n * s / threads; i < n * (s + 1) / threads; ++i)
      by_owner += by[static_cast<size_t>(i)].load() == s + 1 ? 1 : 0;
    EXPECT_LT(by_owner, n / threads / 2) << "the stalled thread's share was not taken over";
    return;
  }
  GTEST_SKIP() << "no worker took part in 20 loops (a very busy host)";
}

}  // namespace
}  // namespace ekva
