// The profile mode of the forward pass: a Backend that runs another backend's ops
// and times every call, adding its time, bytes and FLOPs (the params' cost()) to a
// record per (phase, op site, op kind). The forward pass names each call's site
// (Backend::at: name, layer, expert), so the profile has every op per layer and every
// expert FFN per expert id without a timer in the model code. Nothing of this runs
// unless the decorator is put in front of a backend: the plain path pays the three
// stores of at() per op and no extra virtual call.
//
// Timing is the OpTimer's. HostOpTimer reads the host clock around the call, which
// is right for a backend whose ops are done when the call returns (the CPU). An
// asynchronous backend brings its own (CUDA: an event pair per call on its stream,
// resolved into durations at end_step(), after the step has synchronised); the
// records, the cost model and the report stay as they are.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "ops/backend.h"

namespace ekva {

enum class OpKind {
  kEmbedding,
  kMatmul,
  kRmsNorm,
  kRope,
  kAddBias,
  kClamp,
  kAdd,
  kSiluMul,
  kRoute,
  kScatterAdd,
  kGatedAdd,
  kCopyRows,
  kAttention,
};
std::string_view op_kind_name(OpKind kind);  // "matmul", ...

// Times op calls of one step. start() and stop() bracket each call; collect() at the
// end of the step returns the durations of its calls in call order, and forgets them.
class OpTimer {
 public:
  virtual ~OpTimer() = default;
  virtual std::string_view name() const = 0;  // recorded in the profile ("host")
  virtual void start() = 0;
  virtual void stop() = 0;
  virtual const std::vector<double>& collect() = 0;  // seconds
};

class HostOpTimer final : public OpTimer {
 public:
  std::string_view name() const override { return "host"; }
  void start() override;
  void stop() override;
  const std::vector<double>& collect() override;

 private:
  int64_t t0_ns_ = 0;
  std::vector<double> seconds_, collected_;
};

// What the calls of one (phase, site, kind) added up to.
struct OpRecord {
  std::string phase;  // "decode", "prefill", "mixed" (ProfilingBackend::begin_step)
  std::string name;   // the site's name
  OpKind kind = OpKind::kMatmul;
  int layer = -1;
  int expert = -1;
  int64_t calls = 0;
  int64_t rows = 0;  // token rows the calls processed (an expert's: the tokens routed to it)
  double seconds = 0;
  double bytes = 0;
  double flops = 0;
};

// The steps of one phase: their wall time (from begin_step to end_step) against the
// time inside op calls; the difference is host work between the ops (cache appends
// and views, grouping tokens per expert) and the profiler's own bookkeeping.
struct PhaseTotals {
  std::string phase;
  int64_t steps = 0;
  int64_t sequences = 0;  // summed over the steps
  int64_t tokens = 0;
  double wall_seconds = 0;
  double op_seconds = 0;             // inside op calls
  double profiler_seconds = 0;       // the profiler's own: costs, records, clock reads
  std::vector<double> step_seconds;  // [steps] wall time of each

  // Host work between the ops: cache appends and views, grouping tokens per expert.
  double other_seconds() const { return wall_seconds - op_seconds - profiler_seconds; }
};

struct OpProfile {
  static constexpr int kVersion = 1;
  std::string backend;  // the profiled backend's name
  std::string timer;
  std::vector<PhaseTotals> phases;
  std::vector<OpRecord> ops;  // sorted by phase, layer, expert, name, kind

  // {"format": "ekva-op-profile", "version": 1, "backend", "timer", "phases": [...],
  // "ops": [...]}, and back: from_json throws ekva::Error naming `where` and the field.
  nlohmann::json to_json() const;
  static OpProfile from_json(const nlohmann::json& j, std::string_view where);
};

class ProfilingBackend final : public Backend {
 public:
  // Runs `inner`'s ops; timer == nullptr: a HostOpTimer.
  explicit ProfilingBackend(Backend& inner, std::unique_ptr<OpTimer> timer = nullptr);
  ~ProfilingBackend() override;

  // Steps bracket forward calls: the ops between them count towards `phase`, and
  // the step's wall time towards the phase's. Ops outside a step count to "other".
  void begin_step(std::string_view phase, int64_t sequences, int64_t tokens);
  void end_step();
  OpProfile profile() const;
  void reset();

  std::string_view name() const override { return inner_.name(); }
  void* allocate(size_t bytes) override { return inner_.allocate(bytes); }
  void release(void* p) override { inner_.release(p); }
  int memory_domain() const override { return inner_.memory_domain(); }
  void upload(void* dst, const void* host_src, size_t bytes) override {
    inner_.upload(dst, host_src, bytes);
  }
  void download(void* host_dst, const void* src, size_t bytes) override {
    inner_.download(host_dst, src, bytes);
  }
  void fill_zero(void* dst, size_t bytes) override { inner_.fill_zero(dst, bytes); }
  void embedding(const EmbeddingParams& p) override;
  void matmul(const MatmulParams& p) override;
  void rmsnorm(const RmsNormParams& p) override;
  void rope(const RopeParams& p) override;
  void add_bias(const AddBiasParams& p) override;
  void clamp(const ClampParams& p) override;
  void add(const AddParams& p) override;
  void silu_mul(const SiluMulParams& p) override;
  void route(const RouteParams& p) override;
  void scatter_add(const ScatterAddParams& p) override;
  void gated_add(const GatedAddParams& p) override;
  void copy_rows(const CopyRowsParams& p) override;
  AttentionPlanOptions attention_plan_options() const override {
    return inner_.attention_plan_options();
  }
  void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
                 const AttentionPlan& plan) override;
  void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks) override;

 private:
  using Key = std::tuple<std::string, int, int, std::string_view, OpKind>;  // phase, layer,
                                                                            // expert, name, kind
  // Runs call() between the timer's start and stop and adds one call of cost() and
  // `rows` to the current site's record (the time at the step's end); the clock time
  // outside call() is the profiler's own.
  template <typename Cost, typename Call>
  void timed(OpKind kind, int64_t rows, Cost&& cost, Call&& call);
  void flush();
  // Attention's cost: from the chunks' positions on the host, from their sizes where
  // the inner backend's memory is a GPU's (AttentionParams::cost_from_sizes).
  OpCost attention_cost_of(const AttentionParams& p,
                           std::span<const std::vector<KvChunk>> chunks) const;

  Backend& inner_;
  std::unique_ptr<OpTimer> timer_;
  std::map<Key, OpRecord> records_;
  std::vector<OpRecord*> pending_;  // the calls whose durations the timer still holds
  std::map<std::string, PhaseTotals> phases_;
  std::string phase_ = "other";
  bool in_step_ = false;
  int64_t step_t0_ns_ = 0;
  double step_profiler_seconds_ = 0;
};

}  // namespace ekva
