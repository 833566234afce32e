#include "ops/profiling_backend.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/json_fields.h"

namespace ekva {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

constexpr OpKind kAllKinds[] = {
    OpKind::kEmbedding, OpKind::kMatmul,   OpKind::kRmsNorm,   OpKind::kRope,  OpKind::kAddBias,
    OpKind::kClamp,     OpKind::kAdd,      OpKind::kSiluMul,   OpKind::kRoute, OpKind::kScatterAdd,
    OpKind::kGatedAdd,  OpKind::kCopyRows, OpKind::kAttention,
};

}  // namespace

std::string_view op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::kEmbedding:
      return "embedding";
    case OpKind::kMatmul:
      return "matmul";
    case OpKind::kRmsNorm:
      return "rmsnorm";
    case OpKind::kRope:
      return "rope";
    case OpKind::kAddBias:
      return "add_bias";
    case OpKind::kClamp:
      return "clamp";
    case OpKind::kAdd:
      return "add";
    case OpKind::kSiluMul:
      return "silu_mul";
    case OpKind::kRoute:
      return "route";
    case OpKind::kScatterAdd:
      return "scatter_add";
    case OpKind::kGatedAdd:
      return "gated_add";
    case OpKind::kCopyRows:
      return "copy_rows";
    case OpKind::kAttention:
      return "attention";
  }
  return "unknown";
}

void HostOpTimer::start() { t0_ns_ = now_ns(); }
void HostOpTimer::stop() { seconds_.push_back(1e-9 * static_cast<double>(now_ns() - t0_ns_)); }
const std::vector<double>& HostOpTimer::collect() {
  collected_.swap(seconds_);
  seconds_.clear();
  return collected_;
}

ProfilingBackend::ProfilingBackend(Backend& inner, std::unique_ptr<OpTimer> timer)
    : inner_(inner), timer_(timer ? std::move(timer) : std::make_unique<HostOpTimer>()) {}
ProfilingBackend::~ProfilingBackend() = default;

template <typename Cost, typename Call>
void ProfilingBackend::timed(OpKind kind, int64_t rows, Cost&& cost, Call&& call) {
  const int64_t t0 = now_ns();
  const OpSite& s = site();
  OpRecord& r = records_[Key{phase_, s.layer, s.expert, s.name, kind}];
  if (r.calls == 0) {
    r.phase = phase_;
    r.name = s.name;
    r.kind = kind;
    r.layer = s.layer;
    r.expert = s.expert;
  }
  const OpCost c = cost();
  ++r.calls;
  r.rows += rows;
  r.bytes += c.bytes;
  r.flops += c.flops;
  pending_.push_back(&r);
  const int64_t t1 = now_ns();
  timer_->start();
  call();
  timer_->stop();
  step_profiler_seconds_ += 1e-9 * static_cast<double>(t1 - t0);
  if (!in_step_) flush();
}

void ProfilingBackend::flush() {
  const std::vector<double>& seconds = timer_->collect();
  EKVA_CHECK(seconds.size() == pending_.size(), "op timer returned {} durations for {} calls",
             seconds.size(), pending_.size());
  double total = 0;
  for (size_t i = 0; i < seconds.size(); ++i) {
    pending_[i]->seconds += seconds[i];
    total += seconds[i];
  }
  pending_.clear();
  PhaseTotals& ph = phases_[phase_];
  ph.phase = phase_;
  ph.op_seconds += total;
}

void ProfilingBackend::begin_step(std::string_view phase, int64_t sequences, int64_t tokens) {
  EKVA_CHECK(!in_step_, "profiling backend: begin_step inside a step");
  flush();
  phase_ = phase;
  PhaseTotals& ph = phases_[phase_];
  ph.phase = phase_;
  ++ph.steps;
  ph.sequences += sequences;
  ph.tokens += tokens;
  in_step_ = true;
  step_profiler_seconds_ = 0;
  step_t0_ns_ = now_ns();
}

void ProfilingBackend::end_step() {
  EKVA_CHECK(in_step_, "profiling backend: end_step without begin_step");
  const double wall = 1e-9 * static_cast<double>(now_ns() - step_t0_ns_);
  flush();  // for an asynchronous timer, after the step's synchronisation
  PhaseTotals& ph = phases_[phase_];
  ph.wall_seconds += wall;
  ph.profiler_seconds += step_profiler_seconds_;
  ph.step_seconds.push_back(wall);
  in_step_ = false;
  phase_ = "other";
}

void ProfilingBackend::reset() {
  EKVA_CHECK(!in_step_, "profiling backend: reset inside a step");
  flush();
  records_.clear();
  phases_.clear();
}

OpProfile ProfilingBackend::profile() const {
  EKVA_CHECK(!in_step_ && pending_.empty(), "profiling backend: profile() inside a step");
  OpProfile p;
  p.backend = std::string(inner_.name());
  p.timer = std::string(timer_->name());
  for (const auto& [phase, totals] : phases_)
    if (totals.steps > 0 || totals.op_seconds > 0) p.phases.push_back(totals);
  for (const auto& [key, r] : records_) p.ops.push_back(r);
  return p;
}

void ProfilingBackend::embedding(const EmbeddingParams& p) {
  timed(
      OpKind::kEmbedding, p.n_tokens, [&] { return p.cost(); }, [&] { inner_.embedding(p); });
}
void ProfilingBackend::matmul(const MatmulParams& p) {
  timed(
      OpKind::kMatmul, p.n_rows, [&] { return p.cost(); }, [&] { inner_.matmul(p); });
}
void ProfilingBackend::rmsnorm(const RmsNormParams& p) {
  timed(
      OpKind::kRmsNorm, p.n_rows, [&] { return p.cost(); }, [&] { inner_.rmsnorm(p); });
}
void ProfilingBackend::rope(const RopeParams& p) {
  timed(
      OpKind::kRope, p.n_tokens, [&] { return p.cost(); }, [&] { inner_.rope(p); });
}
void ProfilingBackend::add_bias(const AddBiasParams& p) {
  timed(
      OpKind::kAddBias, p.n_rows, [&] { return p.cost(); }, [&] { inner_.add_bias(p); });
}
void ProfilingBackend::clamp(const ClampParams& p) {
  timed(
      OpKind::kClamp, 0, [&] { return p.cost(); }, [&] { inner_.clamp(p); });
}
void ProfilingBackend::add(const AddParams& p) {
  timed(
      OpKind::kAdd, 0, [&] { return p.cost(); }, [&] { inner_.add(p); });
}
void ProfilingBackend::silu_mul(const SiluMulParams& p) {
  timed(
      OpKind::kSiluMul, 0, [&] { return p.cost(); }, [&] { inner_.silu_mul(p); });
}
void ProfilingBackend::route(const RouteParams& p) {
  timed(
      OpKind::kRoute, p.n_tokens, [&] { return p.cost(); }, [&] { inner_.route(p); });
}
void ProfilingBackend::scatter_add(const ScatterAddParams& p) {
  timed(
      OpKind::kScatterAdd, p.n, [&] { return p.cost(); }, [&] { inner_.scatter_add(p); });
}
void ProfilingBackend::gated_add(const GatedAddParams& p) {
  timed(
      OpKind::kGatedAdd, p.n_rows, [&] { return p.cost(); }, [&] { inner_.gated_add(p); });
}
void ProfilingBackend::copy_rows(const CopyRowsParams& p) {
  timed(
      OpKind::kCopyRows, p.n_rows, [&] { return p.cost(); }, [&] { inner_.copy_rows(p); });
}
OpCost ProfilingBackend::attention_cost_of(const AttentionParams& p,
                                           std::span<const std::vector<KvChunk>> chunks) const {
  // A GPU's chunks hold device pointers: their positions are not the host's to read.
  return inner_.memory_domain() == 0 ? p.cost(chunks) : p.cost_from_sizes(chunks);
}

void ProfilingBackend::attention(const AttentionParams& p,
                                 std::span<const std::vector<KvChunk>> chunks,
                                 const AttentionPlan& plan) {
  timed(
      OpKind::kAttention, p.n_queries, [&] { return attention_cost_of(p, chunks); },
      [&] { inner_.attention(p, chunks, plan); });
}
void ProfilingBackend::attention(const AttentionParams& p,
                                 std::span<const std::vector<KvChunk>> chunks) {
  timed(
      OpKind::kAttention, p.n_queries, [&] { return attention_cost_of(p, chunks); },
      [&] { inner_.attention(p, chunks); });
}

nlohmann::json OpProfile::to_json() const {
  nlohmann::json j;
  j["format"] = "ekva-op-profile";
  j["version"] = kVersion;
  j["backend"] = backend;
  j["timer"] = timer;
  j["phases"] = nlohmann::json::array();
  for (const PhaseTotals& p : phases)
    j["phases"].push_back({{"phase", p.phase},
                           {"steps", p.steps},
                           {"sequences", p.sequences},
                           {"tokens", p.tokens},
                           {"wall_seconds", p.wall_seconds},
                           {"op_seconds", p.op_seconds},
                           {"profiler_seconds", p.profiler_seconds},
                           {"step_seconds", p.step_seconds}});
  j["ops"] = nlohmann::json::array();
  for (const OpRecord& r : ops)
    j["ops"].push_back({{"phase", r.phase},
                        {"name", r.name},
                        {"kind", op_kind_name(r.kind)},
                        {"layer", r.layer},
                        {"expert", r.expert},
                        {"calls", r.calls},
                        {"rows", r.rows},
                        {"seconds", r.seconds},
                        {"bytes", r.bytes},
                        {"flops", r.flops}});
  return j;
}

OpProfile OpProfile::from_json(const nlohmann::json& j, std::string_view where) {
  const JsonFields f{std::string(where)};
  if (!j.is_object()) f.bad("not an op profile (a JSON object)");
  if (f.string(j, "", "format") != "ekva-op-profile")
    f.bad(
        "field 'format' is not \"ekva-op-profile\" (an op profile from ekva generate "
        "--op-profile)");
  const int64_t version = f.integer(j, "", "version", 0, 1 << 30);
  if (version != kVersion)
    f.bad("version {} is not supported (this build reads version {})", version, kVersion);
  OpProfile p;
  p.backend = f.string(j, "", "backend");
  p.timer = f.string(j, "", "timer");
  constexpr double kMax = 1e30;
  constexpr int64_t kMaxCount = int64_t{1} << 62;
  const Json& phases = f.field(j, "", "phases");
  if (!phases.is_array()) f.bad("field 'phases' must be an array");
  for (size_t i = 0; i < phases.size(); ++i) {
    const std::string path = fmt::format("phases[{}]", i);
    PhaseTotals t;
    t.phase = f.string(phases[i], path, "phase");
    t.steps = f.integer(phases[i], path, "steps", 0, kMaxCount);
    t.sequences = f.integer(phases[i], path, "sequences", 0, kMaxCount);
    t.tokens = f.integer(phases[i], path, "tokens", 0, kMaxCount);
    t.wall_seconds = f.number(phases[i], path, "wall_seconds", 0, kMax);
    t.op_seconds = f.number(phases[i], path, "op_seconds", 0, kMax);
    t.profiler_seconds = f.number(phases[i], path, "profiler_seconds", 0, kMax);
    const Json& steps = f.field(phases[i], path, "step_seconds");
    if (!steps.is_array()) f.bad("field '{}.step_seconds' must be an array", path);
    for (size_t k = 0; k < steps.size(); ++k)
      t.step_seconds.push_back(
          f.number(steps[k], fmt::format("{}.step_seconds[{}]", path, k), 0, kMax));
    p.phases.push_back(std::move(t));
  }
  const Json& ops = f.field(j, "", "ops");
  if (!ops.is_array()) f.bad("field 'ops' must be an array");
  for (size_t i = 0; i < ops.size(); ++i) {
    const std::string path = fmt::format("ops[{}]", i);
    OpRecord r;
    r.phase = f.string(ops[i], path, "phase");
    r.name = f.string(ops[i], path, "name");
    const std::string kind = f.string(ops[i], path, "kind");
    const auto* it = std::find_if(std::begin(kAllKinds), std::end(kAllKinds),
                                  [&](OpKind k) { return op_kind_name(k) == kind; });
    if (it == std::end(kAllKinds)) f.bad("field '{}.kind': unknown op kind '{}'", path, kind);
    r.kind = *it;
    r.layer = static_cast<int>(f.integer(ops[i], path, "layer", -1, 1 << 20));
    r.expert = static_cast<int>(f.integer(ops[i], path, "expert", -1, 1 << 20));
    r.calls = f.integer(ops[i], path, "calls", 0, kMaxCount);
    r.rows = f.integer(ops[i], path, "rows", 0, kMaxCount);
    r.seconds = f.number(ops[i], path, "seconds", 0, kMax);
    r.bytes = f.number(ops[i], path, "bytes", 0, kMax);
    r.flops = f.number(ops[i], path, "flops", 0, kMax);
    p.ops.push_back(std::move(r));
  }
  return p;
}

}  // namespace ekva
