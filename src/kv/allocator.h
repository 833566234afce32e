// Allocators: turn a sequence's total KV budget into per-segment budgets. One file
// per allocator in src/kv/allocators/; each states the granularity it allocates at
// (which entries share one budget) and what it needs (a calibration profile, live
// scores).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "kv/paged_store.h"
#include "kv/profile.h"

namespace ekva {

struct AllocationInput {
  int n_layers = 0;
  int n_kv_heads = 0;
  int n_experts = 0;  // 0 for dense models
  // Entries the evictable segments may keep in all, summed over layers and kv-heads
  // (the total budget minus the protected entries). Never negative.
  int64_t evictable_budget = 0;
  // [layer]: the non-empty segments of the sequence (keys at the allocator's
  // granularity, live entry counts).
  std::vector<std::vector<SegmentInfo>> segments;
  const CalibrationProfile* profile = nullptr;  // set when needs_profile()
  // [layer][i]: the policy's scores of the entries of segments[layer][i], when
  // needs_live_scores() (Ada-KV).
  std::vector<std::vector<std::vector<float>>> live_scores;
};

// [layer][i]: the budget of segments[layer][i] of the input; 0 <= budget <= its
// live entries, and the sum never exceeds evictable_budget.
using Allocation = std::vector<std::vector<int64_t>>;

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual std::string_view name() const = 0;
  virtual Granularity granularity() const = 0;
  virtual bool needs_profile() const { return false; }
  virtual bool needs_live_scores() const { return false; }
  virtual Allocation allocate(const AllocationInput& input) const = 0;
  // The budgets of one layer's segments, allocated before the later layers exist
  // (compression per layer during a prefill): [i] for input.segments[layer][i].
  // input.segments[l] for l < layer lists those layers as they were when their own
  // budgets were allocated (before their eviction), committed[l] the budgets they
  // got in all; input.segments[layer] (and live_scores[layer], when needed) is the
  // layer now; later layers are listed empty (live_scores: only [layer] is read).
  // The sum of committed and the result never exceeds evictable_budget.
  //
  // In a prefill every layer gets the same tokens, so the later layers hold as many
  // entries as `layer`. The default predicts each later layer as a copy of `layer`
  // (the same segments with the same live entries: exact at per-head and per-layer
  // granularity) and returns that layer's part of allocate() over the whole
  // sequence, so an allocator whose layers do not compete for budget beyond their
  // live counts gets exactly what allocate() would give after the last layer.
  // Allocators whose split over layers depends on more than the counts override it.
  virtual std::vector<int64_t> allocate_layer(const AllocationInput& input, int layer,
                                              std::span<const int64_t> committed) const;
};

// "uniform", "pyramidkv", "adakv", "ekva-entropy", "ekva-mass", "ekva-joint", "headkv";
// throws ekva::Error
// naming the choices for anything else.
std::unique_ptr<Allocator> make_allocator(std::string_view name);

// One factory per allocator file in src/kv/allocators/; make_allocator picks among them.
std::unique_ptr<Allocator> make_uniform_allocator();
std::unique_ptr<Allocator> make_pyramidkv_allocator();
std::unique_ptr<Allocator> make_adakv_allocator();
std::unique_ptr<Allocator> make_ekva_entropy_allocator();
std::unique_ptr<Allocator> make_ekva_mass_allocator();
std::unique_ptr<Allocator> make_ekva_joint_allocator();
std::unique_ptr<Allocator> make_headkv_allocator();

// Helpers the allocators share (src/kv/allocator.cpp).

// Throws ekva::Error naming the allocator and what is at fault unless `input` suits
// `allocator`: n_layers segment lists, keys of its granularity and of their layer,
// live counts >= 0; when it needs one, a calibration profile of the same layers,
// kv-heads and experts, with expert statistics for every MoE layer and no
// expert-tagged segment in a layer it records as dense; when it needs them, one live
// score per entry, none NaN.
void check_allocation_input(const Allocator& allocator, const AllocationInput& input);

// check_allocation_input for allocate_layer: layers after `layer` must be empty and
// live scores (when needed) are checked for `layer` only; committed has n_layers
// entries, none negative, summing to at most evictable_budget.
void check_layer_allocation_input(const Allocator& allocator, const AllocationInput& input,
                                  int layer, std::span<const int64_t> committed);

// Integer water-filling: splits min(total, sum of caps) over items in proportion to
// `weights`, none above its cap: x_i = min(caps[i], level * weights[i]) with the level
// at which they sum up, then rounded down with the leftover units going to the largest
// fractional parts (ties: lower index), so the sum is exact and no x_i passes its cap.
// Items of weight 0 get only what the weighted items cannot take, in equal shares.
// weights[i] >= 0 and finite, caps[i] >= 0.
std::vector<int64_t> water_fill(int64_t total, std::span<const double> weights,
                                std::span<const int64_t> caps);

// Live entries of every segment, layer after layer: [sum over layers of segments[l].size()].
std::vector<int64_t> flat_live_entries(const AllocationInput& input);
// The inverse of the flattening above: budgets laid out as input.segments.
Allocation unflatten(const AllocationInput& input, std::span<const int64_t> flat);
// [n_layers]: evictable_budget split equally over the layers, each capped at its live
// entries, what a capped layer cannot use going equally to the others.
std::vector<int64_t> equal_layer_shares(const AllocationInput& input);
// The same split for given live entries per layer ([n_layers]).
std::vector<int64_t> equal_layer_shares(int64_t evictable_budget,
                                        std::span<const int64_t> layer_entries);
// [n_layers]: live entries per layer for allocate_layer: the layers up to `layer` as
// listed, every later one as many as `layer` (a prefill appends the same tokens to
// every layer).
std::vector<int64_t> predicted_layer_entries(const AllocationInput& input, int layer);
// What allocate_layer may still give to `layer` and the layers after it:
// evictable_budget minus the budgets committed to the earlier layers.
int64_t uncommitted_budget(const AllocationInput& input, int layer,
                           std::span<const int64_t> committed);

// The coverage curve at `fraction` kept: linear interpolation between its points,
// fraction clamped to the curve's range (the rule of CoverageCurve::mass_at, here so
// that the allocators do not depend on profile loading). The curve must have matching,
// non-empty arrays with strictly ascending fraction_kept (check_coverage_curve).
double coverage_at(const CoverageCurve& curve, double fraction);
// Throws ekva::Error naming `where` unless coverage_at can read the curve.
void check_coverage_curve(const CoverageCurve& curve, std::string_view where);

}  // namespace ekva
