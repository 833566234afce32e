// The compute ceiling: the f32 FMA rate of every thread of the engine's pool, with
// Highway's best target for this CPU (AVX-512 where there is one, else AVX2, NEON,
// ...). The CPU backend computes in f32 (bf16 weights are widened), so f32 FMA is
// the roof its matmuls can reach.
//
// Each thread runs kChains independent dependency chains of vector FMAs, all held in
// registers: an FMA has a latency of 4-5 cycles on current x86 and Arm cores and up to
// 2 issue ports, so 8-10 chains are needed to fill the pipes; 16 (12 where there are
// only 16 vector registers) leave headroom. The disassembly of FmaChains (GCC 12, -O3)
// is, on the AVX3 target, a loop of 16 `vfmadd132ps zmm, zmm, zmm` and a counter, on
// AVX2 of 12 `vfmadd132ps ymm, ymm, ymm`: no load or store in the loop.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "roofline/fma_rate.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/targets.h>

#include <algorithm>
#include <vector>

#include "core/thread_pool.h"
#include "roofline/ceilings.h"

HWY_BEFORE_NAMESPACE();
namespace ekva::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// x86 below AVX-512 has 16 vector registers: 12 chains and the two constants fit
// (16 chains spilled three accumulators to the stack per iteration on AVX2).
#if HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3
constexpr int kChains = 12;
#else
constexpr int kChains = 16;
#endif

// acc[i] = acc[i] * m + a, `iterations` times for each of the kChains accumulators;
// returns their sum so that nothing is dead. m < 1 and a small keep the values finite
// and normal (no denormal slow path, no overflow).
float FmaChains(int64_t iterations, float seed) {
  const hn::ScalableTag<float> d;
  const auto m = hn::Set(d, 0.999999f);
  const auto a = hn::Set(d, 1e-7f * seed);
  hn::Vec<decltype(d)> acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = hn::Set(d, seed + static_cast<float>(i));
  for (int64_t it = 0; it < iterations; ++it) {
    for (int i = 0; i < kChains; ++i) acc[i] = hn::MulAdd(acc[i], m, a);
  }
  auto sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = hn::Add(sum, acc[i]);
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

// f32 lanes of one vector of the target in use, and its name ("AVX3", "AVX2", ...).
int64_t FloatLanes() { return static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>())); }
const char* TargetInUse() { return hwy::TargetName(HWY_TARGET); }
int64_t Chains() { return kChains; }

}  // namespace ekva::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ekva {

HWY_EXPORT(FmaChains);
HWY_EXPORT(FloatLanes);
HWY_EXPORT(TargetInUse);
HWY_EXPORT(Chains);

FmaRateResult measure_fma_rate(ThreadPool& pool, int runs, int64_t iterations) {
  // Four units of work per thread: a thread that starts late leaves its units to the
  // others (the pool steals), so the run still measures the cores the process got.
  const int64_t units = 4 * static_cast<int64_t>(pool.size());
  const int64_t per_unit = std::max<int64_t>(1, iterations / 4);
  std::vector<float> sink(static_cast<size_t>(pool.size()));
  const auto one_run = [&] {
    IntervalMeter meter(pool.size());
    meter.start();
    pool.parallel_for(units, [&](int64_t b, int64_t e, int thread) {
      for (int64_t u = b; u < e; ++u)
        sink[static_cast<size_t>(thread)] +=
            HWY_DYNAMIC_DISPATCH(FmaChains)(per_unit, 1.f + static_cast<float>(u % 3));
    });
    return meter.stop();
  };
  const int64_t lanes = HWY_DYNAMIC_DISPATCH(FloatLanes)();
  const int64_t chains = HWY_DYNAMIC_DISPATCH(Chains)();
  const double flops =
      2.0 * static_cast<double>(units * per_unit) * static_cast<double>(chains * lanes);
  one_run();  // warm-up: wakes the workers and settles the clock frequency
  FmaRateResult r;
  for (int i = 0; i < runs; ++i) {
    const IntervalUsage u = one_run();
    r.run_gflop_per_s.push_back(flops / u.wall_s / 1e9);
    r.run_cpu_share.push_back(u.cpu_share);
  }
  std::vector<double> rates = r.run_gflop_per_s;
  std::sort(rates.begin(), rates.end());
  r.median_gflop_per_s = rates[rates.size() / 2];
  r.best_gflop_per_s = rates.back();
  r.worst_gflop_per_s = rates.front();
  r.runs = runs;
  r.lanes = static_cast<int>(lanes);
  r.chains = static_cast<int>(chains);
  r.target = HWY_DYNAMIC_DISPATCH(TargetInUse)();
  volatile float keep = sink[0];
  (void)keep;
  return r;
}

}  // namespace ekva
#endif  // HWY_ONCE
