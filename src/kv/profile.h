// The calibration profile: statistics of one model's attention and routing,
// recorded by `ekva calibrate` over sample text, that the allocators turn into
// budgets. Saved as human-readable JSON, versioned, and validated on load against
// the model it is used with (architecture, layers, kv-heads, experts).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kv/model_shape.h"

namespace ekva {

// How much of a group's attention mass its best entries hold: keeping the
// fraction_kept[i] highest-scoring entries of the group (by attention received)
// covers mass_covered[i] of the mass the group receives. Both ascend from 0 to 1;
// the curve is concave (sorted entries), so greedy water-filling on it is optimal.
struct CoverageCurve {
  std::vector<float> fraction_kept;
  std::vector<float> mass_covered;

  // Linear interpolation; f outside [0, 1] is clamped.
  double mass_at(double fraction) const;
};

// Statistics of the keys (and queries) of one group of entries: (layer, expert tag)
// or (layer, kv-head).
struct GroupStats {
  double entries_fraction = 0;  // share of the layer's keys in this group
  double mass_received = 0;     // share of the layer's attention mass these keys receive
  double query_entropy = 0;     // mean entropy (nats) of the attention rows of this group's queries
  CoverageCurve coverage;
};

struct ExpertStats : GroupStats {
  double routing_top1_frequency = 0;  // share of tokens whose top-1 expert this is
  double routing_topk_weight = 0;  // mean router weight this expert gets (0 when not in the top-k)
};

struct LayerStats {
  bool moe = false;                  // dense layers have no expert statistics
  std::vector<ExpertStats> experts;  // [n_experts] (empty for dense layers)
  std::vector<GroupStats> heads;     // [n_kv_heads]
  // [n_kv_heads]: the attention mass the last token of a needle-in-a-haystack prompt
  // puts on the needle's answer tokens, mean over the GQA group's query heads and the
  // prompts (`ekva calibrate --retrieval-heads`): which heads retrieve over long
  // distances. Empty when not calibrated.
  std::vector<double> head_retrieval;
  GroupStats all;  // the whole layer (mass_received = 1)
};

struct CalibrationProfile {
  static constexpr int kVersion = 1;

  int version = kVersion;
  std::string architecture;  // config.json "architectures"[0]
  int n_layers = 0;
  int n_kv_heads = 0;
  int n_experts = 0;
  int head_dim = 0;
  int64_t tokens = 0;  // tokens the statistics were gathered over
  int64_t sequences = 0;
  int64_t context = 0;  // tokens per calibration sequence
  std::string data;     // where the text came from
  // Provenance, written when known (`ekva calibrate` sets them): the commit the
  // engine was built from (--commit), the machine, and the UTC time of the run.
  std::string commit, machine, created;
  std::vector<LayerStats> layers;  // [n_layers]

  // Throws ekva::Error naming the file and the field at fault, or the mismatch
  // with `model` (a profile of another model must not be used silently).
  static CalibrationProfile load(const std::filesystem::path& path, const KvModelShape& model);
  void save(const std::filesystem::path& path) const;
};

}  // namespace ekva
