// The roofline analysis of an op profile (ops/profiling_backend.h) against a device's
// ceilings (roofline/hardware.h): per op, per layer and per expert the time, bytes,
// FLOPs, arithmetic intensity, attained rates, the roof that bounds it (memory or
// compute, by the ridge point) and the fraction of that roof reached; a short
// diagnosis; and, given a calibration profile, whether an expert's attention entropy
// or its routing frequency goes with its place on the roofline.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ops/profiling_backend.h"
#include "roofline/hardware.h"

namespace ekva {

struct CalibrationProfile;

// The calls of one op site, layer, expert or expert FFN, summed.
struct RooflinePoint {
  std::string label;  // "expert_up", "layer 3", "L3 E5"
  std::string kind;   // op kind(s): "matmul", "ffn" (an expert's ops together), "all"
  int layer = -1;
  int expert = -1;
  int64_t calls = 0;
  int64_t rows = 0;  // token rows (an expert: tokens routed to it, over all calls)
  double seconds = 0;
  double bytes = 0;
  double flops = 0;
  // Derived against the ceilings.
  double share = 0;                // of the phase's op time
  double intensity = 0;            // FLOP/byte
  double gb_per_s = 0;             // attained
  double gflop_per_s = 0;          // attained
  bool memory_bound = true;        // intensity below the ridge
  double roof_fraction = 0;        // least time under the roofs / measured time
  double cache_roof_fraction = 0;  // the same with the cache read rate as memory roof; 0: none
  double query_entropy = -1;       // calibration: mean attention entropy (nats); -1: none
  double routing_frequency = -1;   // calibration: top-1 routing share; -1: none

  double rows_per_call() const { return calls > 0 ? static_cast<double>(rows) / calls : 0; }
};

// Spearman rank correlation (average ranks for ties); NaN when either side is
// constant or there are fewer than 3 pairs.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

struct RooflineReport {
  std::string title;
  std::string phase;
  Ceilings ceilings;
  PhaseTotals totals;
  nlohmann::json run = nlohmann::json::object();  // what was profiled (the profile's "run")
  std::vector<RooflinePoint> ops;                 // per op site (all layers and experts), by time
  std::vector<RooflinePoint> layers;              // per layer, every op of the layer
  std::vector<RooflinePoint> experts;             // per (layer, expert): its FFN ops and scatter
  std::vector<RooflinePoint> attention;           // per layer, the attention op
  // The expert test (NaN where undefined): rank correlations over the experts.
  double rho_entropy_intensity = 0;
  double rho_frequency_intensity = 0;
  double rho_entropy_roof_fraction = 0;
  double rho_entropy_frequency = 0;
  std::vector<std::string> diagnosis;  // sentences

  nlohmann::json to_json() const;
  std::string markdown() const;
};

// The report of one phase of `profile`; `calibration` (optional) joins each expert's
// query entropy and top-1 routing frequency. Throws when the phase has no ops.
RooflineReport make_roofline_report(const OpProfile& profile, const Ceilings& ceilings,
                                    std::string_view phase,
                                    const CalibrationProfile* calibration = nullptr);

}  // namespace ekva
