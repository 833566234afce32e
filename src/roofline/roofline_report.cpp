#include "roofline/roofline_report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "kv/profile.h"

namespace ekva {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void add(RooflinePoint& p, const OpRecord& r) {
  p.calls += r.calls;
  p.rows += r.rows;
  p.seconds += r.seconds;
  p.bytes += r.bytes;
  p.flops += r.flops;
}

void derive(RooflinePoint& p, const Ceilings& c, double op_seconds) {
  p.share = op_seconds > 0 ? p.seconds / op_seconds : 0;
  p.intensity = p.bytes > 0 ? p.flops / p.bytes : 0;
  p.gb_per_s = p.seconds > 0 ? p.bytes / p.seconds / 1e9 : 0;
  p.gflop_per_s = p.seconds > 0 ? p.flops / p.seconds / 1e9 : 0;
  p.memory_bound = p.intensity < c.ridge_flop_per_byte();
  p.roof_fraction = p.seconds > 0 ? c.roof_seconds(p.bytes, p.flops) / p.seconds : 0;
  if (c.cache_gb_per_s > 0 && p.seconds > 0) {
    Ceilings cache = c;
    cache.memory_gb_per_s = c.cache_gb_per_s;
    p.cache_roof_fraction = cache.roof_seconds(p.bytes, p.flops) / p.seconds;
  }
}

std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[order[k]] = 0.5 * static_cast<double>(i + j);
    i = j + 1;
  }
  return r;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string rho_text(double rho) {
  return std::isnan(rho) ? std::string("undefined") : fmt::format("{:+.2f}", rho);
}

nlohmann::json point_json(const RooflinePoint& p) {
  nlohmann::json j = {{"label", p.label},
                      {"kind", p.kind},
                      {"layer", p.layer},
                      {"expert", p.expert},
                      {"calls", p.calls},
                      {"rows", p.rows},
                      {"rows_per_call", p.rows_per_call()},
                      {"seconds", p.seconds},
                      {"bytes", p.bytes},
                      {"flops", p.flops},
                      {"share", p.share},
                      {"intensity", p.intensity},
                      {"gb_per_s", p.gb_per_s},
                      {"gflop_per_s", p.gflop_per_s},
                      {"bound", p.memory_bound ? "memory" : "compute"},
                      {"roof_fraction", p.roof_fraction},
                      {"cache_roof_fraction", p.cache_roof_fraction}};
  if (p.query_entropy >= 0) j["query_entropy"] = p.query_entropy;
  if (p.routing_frequency >= 0) j["routing_frequency"] = p.routing_frequency;
  return j;
}

nlohmann::json json_number(double x) {
  return std::isnan(x) ? nlohmann::json() : nlohmann::json(x);
}

void table(std::ostringstream& md, const std::vector<RooflinePoint>& points,
           bool with_calibration) {
  md << "| | kind | calls | rows/call | time ms | share | us/call | KB/call | kFLOP/call | "
        "FLOP/B | GB/s | GFLOP/s | bound | of roof | of cache roof |";
  if (with_calibration) md << " entropy | top-1 freq |";
  md << "\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|";
  if (with_calibration) md << "---:|---:|";
  md << "\n";
  for (const RooflinePoint& p : points) {
    const double calls = static_cast<double>(std::max<int64_t>(p.calls, 1));
    md << fmt::format(
        "| {} | {} | {} | {:.1f} | {:.3f} | {:.1f}% | {:.2f} | {:.1f} | {:.1f} | {:.2f} | {:.1f} "
        "| {:.1f} | {} | {:.0f}% | {} |",
        p.label, p.kind, p.calls, p.rows_per_call(), p.seconds * 1e3, 100 * p.share,
        p.seconds / calls * 1e6, p.bytes / calls / 1e3, p.flops / calls / 1e3, p.intensity,
        p.gb_per_s, p.gflop_per_s, p.memory_bound ? "memory" : "compute", 100 * p.roof_fraction,
        p.cache_roof_fraction > 0 ? fmt::format("{:.0f}%", 100 * p.cache_roof_fraction) : "");
    if (with_calibration)
      md << (p.query_entropy >= 0
                 ? fmt::format(" {:.3f} | {:.3f} |", p.query_entropy, p.routing_frequency)
                 : std::string(" | |"));
    md << "\n";
  }
}

}  // namespace

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  EKVA_CHECK(x.size() == y.size(), "spearman: {} against {} values", x.size(), y.size());
  if (x.size() < 3) return kNaN;
  const std::vector<double> rx = ranks(x), ry = ranks(y);
  const auto n = static_cast<double>(x.size());
  const double mx = std::accumulate(rx.begin(), rx.end(), 0.0) / n;
  const double my = std::accumulate(ry.begin(), ry.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < rx.size(); ++i) {
    sxy += (rx[i] - mx) * (ry[i] - my);
    sxx += (rx[i] - mx) * (rx[i] - mx);
    syy += (ry[i] - my) * (ry[i] - my);
  }
  if (sxx == 0 || syy == 0) return kNaN;
  return sxy / std::sqrt(sxx * syy);
}

RooflineReport make_roofline_report(const OpProfile& profile, const Ceilings& ceilings,
                                    std::string_view phase, const CalibrationProfile* calibration) {
  RooflineReport r;
  r.phase = phase;
  r.ceilings = ceilings;
  for (const PhaseTotals& t : profile.phases)
    if (t.phase == phase) r.totals = t;
  std::map<std::pair<std::string, OpKind>, RooflinePoint> by_op;
  std::map<int, RooflinePoint> by_layer, attention;
  std::map<std::pair<int, int>, RooflinePoint> by_expert;
  double op_seconds = 0;
  for (const OpRecord& rec : profile.ops) {
    if (rec.phase != phase) continue;
    op_seconds += rec.seconds;
    RooflinePoint& o = by_op[{rec.name, rec.kind}];
    o.label = rec.name;
    o.kind = op_kind_name(rec.kind);
    add(o, rec);
    if (rec.layer >= 0) {
      RooflinePoint& l = by_layer[rec.layer];
      l.label = fmt::format("layer {}", rec.layer);
      l.kind = "all";
      l.layer = rec.layer;
      add(l, rec);
    }
    if (rec.kind == OpKind::kAttention && rec.layer >= 0) {
      RooflinePoint& a = attention[rec.layer];
      a.label = fmt::format("attention L{}", rec.layer);
      a.kind = "attention";
      a.layer = rec.layer;
      add(a, rec);
    }
    if (rec.expert >= 0) {
      RooflinePoint& e = by_expert[{rec.layer, rec.expert}];
      e.label = fmt::format("L{} E{}", rec.layer, rec.expert);
      e.kind = "ffn";
      e.layer = rec.layer;
      e.expert = rec.expert;
      const int64_t calls = e.calls, rows = e.rows;
      add(e, rec);
      // An expert's calls and tokens are those of one of its ops (its first matmul),
      // not the sum over its four ops and scatter.
      const bool first_matmul = rec.name == "expert_gate";
      e.calls = first_matmul ? rec.calls : calls;
      e.rows = first_matmul ? rec.rows : rows;
    }
  }
  if (by_op.empty()) {
    std::set<std::string> present;
    for (const OpRecord& rec : profile.ops) present.insert(rec.phase);
    std::string phases;
    for (const std::string& ph : present)
      phases += fmt::format("{}{}", phases.empty() ? "" : ", ", ph);
    fail("the op profile has no ops in phase '{}' (it has: {})", phase,
         phases.empty() ? "none" : phases);
  }
  if (r.totals.op_seconds <= 0) r.totals.op_seconds = op_seconds;
  for (auto& [k, p] : by_op) r.ops.push_back(p);
  for (auto& [k, p] : by_layer) r.layers.push_back(p);
  for (auto& [k, p] : attention) r.attention.push_back(p);
  for (auto& [k, p] : by_expert) {
    if (calibration != nullptr && k.first < static_cast<int>(calibration->layers.size())) {
      const LayerStats& ls = calibration->layers[static_cast<size_t>(k.first)];
      if (k.second < static_cast<int>(ls.experts.size())) {
        p.query_entropy = ls.experts[static_cast<size_t>(k.second)].query_entropy;
        p.routing_frequency = ls.experts[static_cast<size_t>(k.second)].routing_top1_frequency;
      }
    }
    r.experts.push_back(p);
  }
  for (auto* list : {&r.ops, &r.layers, &r.experts, &r.attention})
    for (RooflinePoint& p : *list) derive(p, ceilings, op_seconds);
  std::sort(r.ops.begin(), r.ops.end(),
            [](const RooflinePoint& a, const RooflinePoint& b) { return a.seconds > b.seconds; });

  // The expert test.
  std::vector<double> entropy, frequency, intensity, fraction;
  for (const RooflinePoint& p : r.experts) {
    if (p.query_entropy < 0) continue;
    entropy.push_back(p.query_entropy);
    frequency.push_back(p.routing_frequency);
    intensity.push_back(p.intensity);
    fraction.push_back(p.roof_fraction);
  }
  r.rho_entropy_intensity = spearman(entropy, intensity);
  r.rho_frequency_intensity = spearman(frequency, intensity);
  r.rho_entropy_roof_fraction = spearman(entropy, fraction);
  r.rho_entropy_frequency = spearman(entropy, frequency);

  // The diagnosis.
  const PhaseTotals& t = r.totals;
  std::vector<std::string>& d = r.diagnosis;
  if (t.steps > 0) {
    const double wall = t.wall_seconds;
    const auto steps = static_cast<double>(t.steps);
    d.push_back(fmt::format(
        "{} {} steps of {:.1f} sequences ({:.1f} tokens) each; median step {:.3f} ms. Op "
        "calls take {:.1f}% of the steps' wall time, the profiler's own bookkeeping {:.1f}%, "
        "host work between the ops (cache appends and views, grouping tokens per expert) "
        "{:.1f}%.",
        t.steps, phase, static_cast<double>(t.sequences) / steps,
        static_cast<double>(t.tokens) / steps, median_of(t.step_seconds) * 1e3,
        100 * t.op_seconds / wall, 100 * t.profiler_seconds / wall,
        100 * t.other_seconds() / wall));
  }
  d.push_back(fmt::format(
      "Roofs ({}, {}): memory {:.1f} GB/s, compute {:.1f} GFLOP/s ({}); ridge {:.1f} "
      "FLOP/byte{}.",
      ceilings.source, ceilings.device, ceilings.memory_gb_per_s, ceilings.compute_gflop_per_s,
      ceilings.compute_kind, ceilings.ridge_flop_per_byte(),
      ceilings.cache_gb_per_s > 0
          ? fmt::format("; a buffer that fits the last-level cache reads at {:.1f} GB/s",
                        ceilings.cache_gb_per_s)
          : std::string()));
  double memory_time = 0, roof_time = 0;
  for (const RooflinePoint& p : r.ops) {
    if (p.memory_bound) memory_time += p.seconds;
    roof_time += ceilings.roof_seconds(p.bytes, p.flops);
  }
  d.push_back(fmt::format(
      "{:.1f}% of the op time is in ops below the ridge (memory-bound), {:.1f}% in ops above "
      "it (compute-bound). The roofs allow the ops {:.3f} ms per step; they took {:.3f} ms "
      "({:.0f}% of the roofs' rate overall).",
      100 * memory_time / op_seconds, 100 * std::max(0.0, op_seconds - memory_time) / op_seconds,
      roof_time / std::max<double>(1, static_cast<double>(t.steps)) * 1e3,
      op_seconds / std::max<double>(1, static_cast<double>(t.steps)) * 1e3,
      100 * roof_time / op_seconds));
  if (ceilings.cache_gb_per_s > 0) {
    double cache_roof_time = 0, memory_bound_time = 0;
    for (const RooflinePoint& p : r.ops)
      if (p.memory_bound) {
        cache_roof_time += p.cache_roof_fraction * p.seconds;
        memory_bound_time += p.seconds;
      }
    if (memory_bound_time > 0)
      d.push_back(fmt::format(
          "Against the last-level cache's read rate ({:.1f} GB/s) as the memory roof, the "
          "memory-bound ops reach {:.0f}% of it (time-weighted): data a step reuses from cache "
          "can beat the memory roof.",
          ceilings.cache_gb_per_s, 100 * cache_roof_time / memory_bound_time));
  }
  std::string top;
  for (size_t i = 0; i < std::min<size_t>(3, r.ops.size()); ++i) {
    const RooflinePoint& p = r.ops[i];
    const bool above = p.memory_bound && p.gb_per_s > ceilings.memory_gb_per_s;
    top += fmt::format(
        "{}{} {:.1f}% ({:.2f} FLOP/byte, {:.1f} GB/s, {:.1f} GFLOP/s: {:.0f}% of its {} roof{})",
        i == 0 ? "" : "; ", p.label, 100 * p.share, p.intensity, p.gb_per_s, p.gflop_per_s,
        100 * p.roof_fraction, p.memory_bound ? "memory" : "compute",
        above ? ", above it: its bytes come from cache" : "");
  }
  d.push_back("Largest ops: " + top + ".");
  if (!r.experts.empty()) {
    std::vector<double> rows, inten, frac;
    int compute_bound = 0;
    for (const RooflinePoint& p : r.experts) {
      rows.push_back(p.rows_per_call());
      inten.push_back(p.intensity);
      frac.push_back(p.roof_fraction);
      compute_bound += p.memory_bound ? 0 : 1;
    }
    const auto [rmin, rmax] = std::minmax_element(rows.begin(), rows.end());
    const auto [imin, imax] = std::minmax_element(inten.begin(), inten.end());
    d.push_back(fmt::format(
        "{} expert FFNs (layer, expert) ran: {:.1f}-{:.1f} tokens per call (median {:.1f}), "
        "intensity {:.2f}-{:.2f} FLOP/byte (median {:.2f}) against a ridge of {:.1f}: {} "
        "memory-bound, {} compute-bound; median {:.0f}% of the roof.",
        r.experts.size(), *rmin, *rmax, median_of(rows), *imin, *imax, median_of(inten),
        ceilings.ridge_flop_per_byte(), r.experts.size() - static_cast<size_t>(compute_bound),
        compute_bound, 100 * median_of(frac)));
    if (!entropy.empty()) {
      std::string verdict;
      if (std::isnan(r.rho_entropy_intensity) && *imax - *imin < 1e-9 * *imax) {
        verdict =
            "every expert runs at the same intensity, so none is nearer the compute roof than "
            "another, whatever its entropy";
      } else if (r.rho_entropy_intensity > 0.5) {
        verdict = fmt::format(
            "supported here: higher-entropy experts run at higher intensity (rank correlation "
            "{}; with routing frequency {})",
            rho_text(r.rho_entropy_intensity), rho_text(r.rho_frequency_intensity));
      } else {
        verdict = fmt::format(
            "not supported: an expert's place on the roofline follows the tokens routed to it "
            "(rank correlation of intensity with routing frequency {}), not its attention "
            "entropy ({})",
            rho_text(r.rho_frequency_intensity), rho_text(r.rho_entropy_intensity));
      }
      d.push_back(fmt::format(
          "Seed's claim (high-entropy experts nearer compute-bound), over {} experts: {}; "
          "{} of {} are compute-bound. Rank correlations: entropy-intensity {}, "
          "frequency-intensity {}, entropy-fraction of roof {}, entropy-frequency {}.",
          entropy.size(), verdict, compute_bound, r.experts.size(),
          rho_text(r.rho_entropy_intensity), rho_text(r.rho_frequency_intensity),
          rho_text(r.rho_entropy_roof_fraction), rho_text(r.rho_entropy_frequency)));
    }
  }
  return r;
}

nlohmann::json RooflineReport::to_json() const {
  nlohmann::json j;
  j["format"] = "ekva-roofline-report";
  j["title"] = title;
  j["phase"] = phase;
  j["ceilings"] = ceilings.to_json();
  j["run"] = run;
  j["totals"] = {{"steps", totals.steps},
                 {"sequences", totals.sequences},
                 {"tokens", totals.tokens},
                 {"wall_seconds", totals.wall_seconds},
                 {"op_seconds", totals.op_seconds},
                 {"profiler_seconds", totals.profiler_seconds},
                 {"other_seconds", totals.other_seconds()},
                 {"median_step_seconds", json_number(median_of(totals.step_seconds))}};
  for (const auto& [key, list] :
       {std::pair{"ops", &ops}, std::pair{"layers", &layers}, std::pair{"experts", &experts},
        std::pair{"attention", &attention}}) {
    j[key] = nlohmann::json::array();
    for (const RooflinePoint& p : *list) j[key].push_back(point_json(p));
  }
  j["expert_test"] = {{"rho_entropy_intensity", json_number(rho_entropy_intensity)},
                      {"rho_frequency_intensity", json_number(rho_frequency_intensity)},
                      {"rho_entropy_roof_fraction", json_number(rho_entropy_roof_fraction)},
                      {"rho_entropy_frequency", json_number(rho_entropy_frequency)}};
  j["diagnosis"] = diagnosis;
  return j;
}

std::string RooflineReport::markdown() const {
  std::ostringstream md;
  md << "# Roofline: " << title << "\n\n";
  for (const std::string& s : diagnosis) md << "- " << s << "\n";
  md << "\n## Per op (all layers and experts)\n\n";
  table(md, ops, false);
  md << "\n## Per layer\n\n";
  table(md, layers, false);
  if (!attention.empty()) {
    md << "\n## Attention per layer\n\n";
    table(md, attention, false);
  }
  if (!experts.empty()) {
    md << "\n## Per expert (FFN: gate, up, act, down, scatter)\n\n";
    const bool calibrated = std::any_of(experts.begin(), experts.end(), [](const RooflinePoint& p) {
      return p.query_entropy >= 0;
    });
    table(md, experts, calibrated);
  }
  return md.str();
}

}  // namespace ekva
