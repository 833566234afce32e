// Sums of many vectors' lanes at once, for the CPU kernels that end a dot-product
// loop with one accumulator vector per output (attention's scores, the matmul tile).
// Per-target: include after <hwy/highway.h> in a file compiled once per Highway target
// (the HWY_TARGET_TOGGLE guard re-opens this header for every target).
#if defined(EKVA_CPU_REDUCE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef EKVA_CPU_REDUCE_INL_H_
#undef EKVA_CPU_REDUCE_INL_H_
#else
#define EKVA_CPU_REDUCE_INL_H_
#endif

#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace ekva::HWY_NAMESPACE {
namespace reduce_hn = hwy::HWY_NAMESPACE;

// Lane i of the result is the sum of the lanes of a[i], for the N = Lanes(d)
// vectors a[0..N): a tree of even/odd concatenations that halves the vector count
// per level, about three operations per sum where a horizontal reduction of each
// vector apart takes a dependent chain of log2(N) shuffles and adds apiece (the
// attention score pass and the matmul tile at small widths spent most of their time
// in those).
#if HWY_TARGET != HWY_SCALAR
template <size_t kCount, class D>
HWY_INLINE void fold_pairs(D d, reduce_hn::Vec<D>* a) {
  if constexpr (kCount > 1) {
    // A constant trip count per level, so that the loops unroll and the
    // accumulators stay in registers (a loop bound that halves at run time kept
    // them on the stack).
    for (size_t i = 0; i < kCount / 2; ++i)
      a[i] = reduce_hn::Add(reduce_hn::ConcatEven(d, a[2 * i + 1], a[2 * i]),
                            reduce_hn::ConcatOdd(d, a[2 * i + 1], a[2 * i]));
    fold_pairs<kCount / 2>(d, a);
  }
}
#endif
// kN must be Lanes(d) (MaxLanes of a fixed-width target); a is overwritten.
template <size_t kN, class D>
HWY_INLINE reduce_hn::Vec<D> sum_lanes_transposed(D d, reduce_hn::Vec<D>* a) {
#if HWY_TARGET != HWY_SCALAR
  fold_pairs<kN>(d, a);
#else
  (void)d;
#endif  // one lane: the vector is its own sum
  return a[0];
}

}  // namespace ekva::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // EKVA_CPU_REDUCE_INL_H_
