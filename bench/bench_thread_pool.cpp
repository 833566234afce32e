// The thread pool's cost on the shape of a decode step: many back-to-back
// parallel_for calls of a few microseconds of work each (a decode step of the
// shipped tiny model is ~110 calls in ~3 ms).
//
// Each call splits `--items` items of `--item-iters` steps of a dependent
// multiply-add chain each (fixed, so that runs of different builds do the same
// work; the default is ~10 us a call single-threaded on a 2-3 GHz core). The run
// is `--rounds` rounds of `--calls` calls; a round's time per call is reported as
// its median over rounds and min..max, together with the serial cost of the same
// work, the ideal (serial / threads), and what the process got from the machine
// over the round: CPU share (CPU time / wall / threads) and involuntary context
// switches. On a shared host run it with and without a competing process (e.g.
// `timeout 20 sh -c 'while :; do :; done' &`): a pool that degrades gracefully
// stays near serial time when a core is taken, rather than falling to the
// scheduler's time slice per call.
//
//   ekva_bench_thread_pool [-t 2] [--calls 20000] [--rounds 5] [--items 64] [--item-iters 100]
#include <algorithm>
#include <chrono>
#include <fstream>
#include <vector>

#include <sys/resource.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "core/thread_pool.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A dependent chain the compiler cannot fold: `iters` multiply-adds.
double spin_work(int64_t iters, double seed) {
  double x = seed;
  for (int64_t i = 0; i < iters; ++i) x = x * 0.999999 + 1e-7;
  return x;
}

struct Usage {
  double cpu_s = 0;
  long involuntary = 0;
};

Usage usage_now() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  Usage u;
  u.cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
            static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
  u.involuntary = ru.ru_nivcsw;
  return u;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return in ? a + " " + b + " " + c : "unknown";
}

struct Round {
  double us_per_call = 0;
  double cpu_share = 0;
  long involuntary = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"EKVA thread pool benchmark: many tiny parallel_for calls"};
  int threads = 0, calls = 20000, rounds = 5, items = 64;
  int64_t iters_per_item = 100;
  app.add_option("-t,--threads", threads, "Threads, counting the caller (0 = one per core)");
  app.add_option("--calls", calls, "parallel_for calls per round")->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "Rounds (each reported, median and range printed)")
      ->check(CLI::PositiveNumber);
  app.add_option("--items", items, "Items per call")->check(CLI::PositiveNumber);
  app.add_option("--item-iters", iters_per_item, "Multiply-add steps per item")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (threads == 0) threads = ekva::default_thread_count();

  // Serial cost of one call's work, best of 200 calls.
  double serial_us = 1e30;
  for (int i = 0; i < 200; ++i) {
    const auto t0 = Clock::now();
    double acc = 0;
    for (int j = 0; j < items; ++j) acc += spin_work(iters_per_item, j);
    volatile double keep = acc;
    (void)keep;
    serial_us = std::min(serial_us, seconds_since(t0) * 1e6);
  }

  ekva::ThreadPool pool(threads);
  std::vector<double> sink(static_cast<size_t>(pool.size()) * 8);  // one cache line a thread
  auto one_call = [&] {
    pool.parallel_for(items, [&](int64_t b, int64_t e, int thread) {
      double acc = 0;
      for (int64_t j = b; j < e; ++j) acc += spin_work(iters_per_item, static_cast<double>(j));
      sink[static_cast<size_t>(thread) * 8] += acc;
    });
  };
  for (int i = 0; i < 1000; ++i) one_call();  // warm-up: threads started and spinning

  fmt::print("threads {}  items {}  work {:.1f} us/call (serial, best of 200)  ideal {:.1f} us\n",
             threads, items, serial_us, serial_us / threads);
  fmt::print("load average before: {}\n", load_average());
  std::vector<Round> all;
  for (int r = 0; r < rounds; ++r) {
    const Usage u0 = usage_now();
    const auto t0 = Clock::now();
    for (int i = 0; i < calls; ++i) one_call();
    const double wall = seconds_since(t0);
    const Usage u1 = usage_now();
    Round round;
    round.us_per_call = wall * 1e6 / calls;
    round.cpu_share = (u1.cpu_s - u0.cpu_s) / (wall * threads);
    round.involuntary = u1.involuntary - u0.involuntary;
    all.push_back(round);
    fmt::print(
        "round {}: {:8.2f} us/call  ({:.2f}x serial)  cpu share {:.2f}  "
        "involuntary switches {}\n",
        r, round.us_per_call, round.us_per_call / serial_us, round.cpu_share, round.involuntary);
  }
  std::vector<double> t;
  for (const Round& r : all) t.push_back(r.us_per_call);
  std::sort(t.begin(), t.end());
  fmt::print("us/call: median {:.2f}  range {:.2f}..{:.2f}  serial {:.2f}  ideal {:.2f}\n",
             t[t.size() / 2], t.front(), t.back(), serial_us, serial_us / threads);
  fmt::print("load average after: {}\n", load_average());
  volatile double keep = sink[0];
  (void)keep;
  return 0;
}
