#include "roofline/planner.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.h"
#include "ops/ops.h"

namespace ekva {

namespace {

// One op of the step: its cost and how many calls make it.
struct StepOp {
  enum class Kind { kMatmul, kAttention, kOther };
  OpCost cost;
  double calls = 1;
  bool pooled = true;  // runs as a pool call on the CPU (matmul, norm, rope, attention)
  Kind kind = Kind::kOther;
  double rows = 0;  // a matmul's token rows
};

OpCost scaled(const OpCost& c, double k) { return {c.bytes * k, c.flops * k}; }

// The cost at a fractional row count (an expected token count): every op's cost is
// affine in its rows, weights once plus rows x per-row bytes and FLOPs.
template <typename Make>
OpCost at_rows(Make make, double rows) {
  const OpCost c0 = make(0), c1 = make(1);
  return {c0.bytes + rows * (c1.bytes - c0.bytes), c0.flops + rows * (c1.flops - c0.flops)};
}

WeightMatrix matrix(DType dtype, int64_t rows, int64_t cols) {
  return {dtype, rows, cols, nullptr};
}

// The ops of one decode step, in forward order (Model::forward).
std::vector<StepOp> decode_ops(const ModelConfig& m, DType wt, int64_t B, double kept,
                               DType kv_dtype, double& weight_bytes, double& kv_bytes,
                               double& experts_touched) {
  static const int32_t kGathered = 0;  // a non-null row list: the experts' gathered form
  const int64_t H = m.hidden_size;
  std::vector<StepOp> ops;
  weight_bytes = 0;
  kv_bytes = 0;
  experts_touched = 0;
  const auto project = [&](int64_t out, int64_t in, double rows, double calls, bool gathered) {
    const WeightMatrix w = matrix(wt, out, in);
    ops.push_back({at_rows(
                       [&](int64_t n) {
                         return MatmulParams{nullptr, n,       gathered ? &kGathered : nullptr,
                                             w,       nullptr, out}
                             .cost();
                       },
                       rows),
                   calls, true, StepOp::Kind::kMatmul, rows});
    weight_bytes += static_cast<double>(w.nbytes()) * calls;
  };
  const auto norm = [&](int64_t width) {
    ops.push_back({RmsNormParams{nullptr, nullptr, B, width}.cost()});
  };
  const auto ffn = [&](int64_t I, double rows, double calls, bool gathered) {
    project(I, H, rows, calls, gathered);  // gate
    project(I, H, rows, calls, gathered);  // up
    ops.push_back({scaled(SiluMulParams{nullptr, nullptr, 1}.cost(), rows * static_cast<double>(I)),
                   calls, false});
    project(H, I, rows, calls, false);  // down
  };

  ops.push_back({EmbeddingParams{matrix(wt, m.vocab_size, H), nullptr, B}.cost(), 1, false});
  weight_bytes += static_cast<double>(B * H) * dtype_size(wt);
  const double entry_bytes = 2.0 * m.head_dim * dtype_size(kv_dtype) + sizeof(int32_t);
  for (int layer = 0; layer < m.n_layers; ++layer) {
    norm(H);
    project(m.q_dim(), H, static_cast<double>(B), 1, false);
    project(m.kv_dim(), H, static_cast<double>(B), 1, false);
    project(m.kv_dim(), H, static_cast<double>(B), 1, false);
    if (m.qkv_bias)
      for (const int64_t w : {m.q_dim(), m.kv_dim(), m.kv_dim()})
        ops.push_back({AddBiasParams{nullptr, nullptr, B, w}.cost(), 1, false});
    if (m.qk_norm != QkNorm::kNone) {  // over whole projections (OLMoE) or per head (Qwen3)
      const int64_t qn = m.q_norm_size(), kn = m.k_norm_size();
      ops.push_back({RmsNormParams{nullptr, nullptr, B * m.q_dim() / qn, qn}.cost()});
      ops.push_back({RmsNormParams{nullptr, nullptr, B * m.kv_dim() / kn, kn}.cost()});
    }
    if (m.clip_qkv > 0.f)
      for (const int64_t w : {m.q_dim(), m.kv_dim(), m.kv_dim()})
        ops.push_back({ClampParams{nullptr, B * w}.cost(), 1, false});
    ops.push_back({RopeParams{nullptr, nullptr, B, m.n_heads, m.head_dim}.cost()});
    ops.push_back({RopeParams{nullptr, nullptr, B, m.n_kv_heads, m.head_dim}.cost()});
    AttentionParams p;
    p.n_queries = B;
    p.n_heads = m.n_heads;
    p.n_kv_heads = m.n_kv_heads;
    p.head_dim = m.head_dim;
    const double seen = static_cast<double>(B * m.n_kv_heads) * kept;
    ops.push_back({attention_cost(p, seen, seen * entry_bytes), 1, true, StepOp::Kind::kAttention});
    kv_bytes += seen * entry_bytes;
    project(H, m.q_dim(), static_cast<double>(B), 1, false);
    if (m.o_bias) ops.push_back({AddBiasParams{nullptr, nullptr, B, H}.cost(), 1, false});
    ops.push_back({AddParams{nullptr, nullptr, B * H}.cost(), 1, false});
    norm(H);
    if (!m.is_moe_layer(layer)) {
      ffn(m.dense_intermediate_size, static_cast<double>(B), 1, false);
    } else {
      const int E = m.router.n_experts, K = m.router.top_k;
      project(E, H, static_cast<double>(B), 1, false);
      ops.push_back({RouteParams{nullptr, B, E, K}.cost(), 1, false});
      const double touched =
          E * (1.0 - std::pow(1.0 - static_cast<double>(K) / E, static_cast<double>(B)));
      const double rows = static_cast<double>(B * K) / touched;
      experts_touched += touched / m.n_layers;
      ffn(m.expert_intermediate_size, rows, touched, true);
      ops.push_back(
          {scaled(ScatterAddParams{nullptr, nullptr, nullptr, nullptr, 1, H}.cost(), rows), touched,
           false});
      if (m.shared_expert_intermediate_size > 0) {
        ffn(m.shared_expert_intermediate_size, static_cast<double>(B), 1, false);
        project(1, H, static_cast<double>(B), 1, false);
        ops.push_back({GatedAddParams{nullptr, nullptr, nullptr, B, H}.cost(), 1, false});
      }
    }
    ops.push_back({AddParams{nullptr, nullptr, B * H}.cost(), 1, false});
  }
  norm(H);
  project(m.vocab_size, H, static_cast<double>(B), 1, false);  // lm_head
  return ops;
}

}  // namespace

double model_weight_bytes(const ModelConfig& m, DType wt) {
  const auto H = static_cast<double>(m.hidden_size);
  const double w = dtype_size(wt);
  double params = static_cast<double>(m.vocab_size) * H * (m.tie_word_embeddings ? 1 : 2) + H;
  for (int layer = 0; layer < m.n_layers; ++layer) {
    params += H * (2.0 * m.q_dim() + 2.0 * m.kv_dim()) + 2 * H;  // q, k, v, o and two norms
    if (!m.is_moe_layer(layer)) {
      params += 3.0 * H * m.dense_intermediate_size;
    } else {
      params += H * m.router.n_experts + 3.0 * H * m.expert_intermediate_size * m.router.n_experts;
      if (m.shared_expert_intermediate_size > 0)
        params += 3.0 * H * m.shared_expert_intermediate_size + H;
    }
  }
  return params * w;
}

StepPrediction predict_decode_step(const ModelConfig& model, DType weight_dtype, const Ceilings& c,
                                   int64_t batch, double kept, DType kv_dtype) {
  EKVA_CHECK(batch >= 1 && kept >= 0, "predict: batch {} and kept {}", batch, kept);
  StepPrediction s;
  const std::vector<StepOp> ops = decode_ops(model, weight_dtype, batch, kept, kv_dtype,
                                             s.weight_bytes, s.kv_bytes, s.experts_touched);
  for (const StepOp& op : ops) {
    s.bytes += op.cost.bytes * op.calls;
    s.flops += op.cost.flops * op.calls;
  }
  const bool in_cache = c.cache_gb_per_s > 0 && c.cache_bytes > 0 && s.bytes <= c.cache_bytes;
  s.memory_gb_per_s = in_cache ? c.cache_gb_per_s : c.memory_gb_per_s;
  const double bandwidth = s.memory_gb_per_s * 1e9, compute = c.compute_gflop_per_s * 1e9;
  // The kernels' own rates (measured at this model's shapes) bound what the roofs allow.
  const KernelRates& k = c.kernels;
  const bool matmul_rates = !k.matmul_tokens.empty() && k.matmul_k == model.hidden_size;
  const bool attention_rate =
      k.attention_gb_per_s > 0 && k.head_dim == model.head_dim && k.group == model.group_size();
  s.kernel_rates = matmul_rates || attention_rate;
  for (const StepOp& op : ops) {
    double memory_s = op.cost.bytes / bandwidth, compute_s = op.cost.flops / compute;
    if (op.kind == StepOp::Kind::kMatmul && matmul_rates) {
      compute_s = std::max(compute_s, op.cost.flops / (k.matmul_rate(op.rows) * 1e9));
      // Weights no faster than the kernel reads them from the level the step runs from.
      const double stream = k.matmul_stream_rate(op.rows, in_cache) * 1e9;
      memory_s = op.cost.bytes / std::min(bandwidth, stream);
    }
    if (op.kind == StepOp::Kind::kAttention && attention_rate)
      memory_s = std::max(memory_s, op.cost.bytes / (k.attention_gb_per_s * 1e9));
    s.roof_seconds += op.calls * std::max(memory_s, compute_s);
    if (op.pooled) {
      s.overhead_seconds += op.calls * c.op_overhead_us * 1e-6;
      s.op_calls += static_cast<int64_t>(std::llround(op.calls));
    }
  }
  s.seconds = s.roof_seconds + s.overhead_seconds;
  return s;
}

Plan plan_decode(const ModelConfig& m, const Ceilings& c, const PlanRequest& q) {
  if (q.context < 1) fail("plan: --context must be at least 1, got {}", q.context);
  if (q.batch < 1) fail("plan: --batch must be at least 1, got {}", q.batch);
  if (!(q.tpot_ms >= 0)) fail("plan: --tpot-ms must be >= 0, got {}", q.tpot_ms);
  if (!(q.memory_fraction > 0 && q.memory_fraction <= 1))
    fail("plan: the memory fraction must be in (0, 1], got {}", q.memory_fraction);
  Plan p;
  p.request = q;
  p.hardware = fmt::format("{} ({}, {})", c.name, c.source, c.device);
  const int64_t N = q.context;
  const auto step = [&](int64_t batch, int64_t kept) {
    return predict_decode_step(m, q.weight_dtype, c, batch, static_cast<double>(kept), q.kv_dtype);
  };
  const double target = q.tpot_ms * 1e-3;
  if (!(q.budget > 0 && q.budget <= 1))
    fail("plan: the budget must be a fraction of the cache in (0, 1], got {}", q.budget);
  const int64_t floor_kept = std::min(N, q.protected_entries);
  p.kept = std::clamp<int64_t>(std::llround(q.budget * static_cast<double>(N)), floor_kept, N);
  if (target > 0) {
    p.kept = N;
    if (step(q.batch, N).seconds <= target) {
      p.full_cache_meets_target = true;
    } else {
      const StepPrediction least = step(q.batch, floor_kept);
      if (least.seconds > target)
        fail(
            "plan: the target of {} ms per output token cannot be met at batch {}: with only the "
            "{} protected entries kept the step takes {:.3f} ms on {} ({:.3f} ms of it reading "
            "{:.1f} MB of weights at {:.1f} GB/s, {:.3f} ms of fixed cost of {} op calls)",
            q.tpot_ms, q.batch, floor_kept, least.seconds * 1e3, c.name,
            least.weight_bytes / (least.memory_gb_per_s * 1e9) * 1e3, least.weight_bytes / 1e6,
            least.memory_gb_per_s, least.overhead_seconds * 1e3, least.op_calls);
      int64_t lo = floor_kept, hi = N;  // step(lo) meets the target, step(hi) does not
      while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        (step(q.batch, mid).seconds <= target ? lo : hi) = mid;
      }
      p.kept = lo;
    }
  }
  p.budget_fraction = static_cast<double>(p.kept) / static_cast<double>(N);
  p.step = step(q.batch, p.kept);
  p.tokens_per_second = static_cast<double>(q.batch) / p.step.seconds;
  p.weight_bytes = model_weight_bytes(m, q.weight_dtype);
  p.kv_bytes_per_sequence = static_cast<double>(m.n_layers) * m.n_kv_heads *
                            static_cast<double>(p.kept) * 2.0 * m.head_dim * dtype_size(q.kv_dtype);
  p.memory_bytes = p.weight_bytes + static_cast<double>(q.batch) * p.kv_bytes_per_sequence;
  p.memory_available = q.memory_fraction * c.memory_bytes;
  p.fits = p.memory_bytes <= p.memory_available;
  p.max_batch_memory = p.memory_available > p.weight_bytes
                           ? static_cast<int64_t>(std::floor((p.memory_available - p.weight_bytes) /
                                                             p.kv_bytes_per_sequence))
                           : 0;
  if (target > 0 && p.max_batch_memory > 0) {
    // The step time grows with the batch: double, then bisect, within what fits.
    int64_t lo = 0, hi = 1;
    while (hi <= p.max_batch_memory && step(hi, p.kept).seconds <= target) {
      lo = hi;
      hi *= 2;
    }
    hi = std::min(hi, p.max_batch_memory + 1);
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      (step(mid, p.kept).seconds <= target ? lo : hi) = mid;
    }
    p.max_batch_target = lo;
  }
  if (N > m.max_position_embeddings)
    p.notes.push_back(fmt::format("the context {} exceeds the model's max_position_embeddings {}",
                                  N, m.max_position_embeddings));
  if (!p.fits)
    p.notes.push_back(fmt::format(
        "weights and KV need {:.2f} GB, more than the {:.2f} GB available ({:.0f}% of {:.2f} GB)",
        p.memory_bytes / 1e9, p.memory_available / 1e9, 100 * q.memory_fraction,
        c.memory_bytes / 1e9));
  p.notes.push_back(
      p.step.kernel_rates
          ? std::string("matmul and attention times bounded by the probed kernel rates at this "
                        "model's shapes as well as by the roofs")
          : std::string("roofs only: the ceilings have no kernel rates at this model's shapes "
                        "(ekva roofline probe --model DIR measures them)"));
  if (p.step.memory_gb_per_s == c.cache_gb_per_s && c.cache_gb_per_s > 0)
    p.notes.push_back(fmt::format(
        "the step's {:.1f} MB fit in the {:.0f} MB the probe found cached: it is predicted at the "
        "cache's read rate",
        p.step.bytes / 1e6, c.cache_bytes / 1e6));
  return p;
}

nlohmann::json Plan::to_json() const {
  return {{"request",
           {{"context", request.context},
            {"batch", request.batch},
            {"tpot_ms", request.tpot_ms},
            {"budget", request.budget},
            {"weight_dtype", dtype_name(request.weight_dtype)},
            {"kv_dtype", dtype_name(request.kv_dtype)},
            {"memory_fraction", request.memory_fraction},
            {"protected_entries", request.protected_entries}}},
          {"hardware", hardware},
          {"kept_entries", kept},
          {"budget_fraction", budget_fraction},
          {"full_cache_meets_target", full_cache_meets_target},
          {"weight_bytes", weight_bytes},
          {"kv_bytes_per_sequence", kv_bytes_per_sequence},
          {"memory_bytes", memory_bytes},
          {"memory_available", memory_available},
          {"fits", fits},
          {"step",
           {{"ms", step.seconds * 1e3},
            {"roof_ms", step.roof_seconds * 1e3},
            {"overhead_ms", step.overhead_seconds * 1e3},
            {"bytes", step.bytes},
            {"flops", step.flops},
            {"weight_bytes", step.weight_bytes},
            {"kv_bytes", step.kv_bytes},
            {"memory_gb_per_s", step.memory_gb_per_s},
            {"experts_touched_per_layer", step.experts_touched},
            {"op_calls", step.op_calls},
            {"kernel_rates", step.kernel_rates}}},
          {"tokens_per_second", tokens_per_second},
          {"max_batch_memory", max_batch_memory},
          {"max_batch_target", max_batch_target},
          {"notes", notes}};
}

}  // namespace ekva
