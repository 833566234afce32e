// The placement plan for decoding on several GPUs of one host (the multi-GPU issue's
// first piece, computed on the CPU): attention tensor-parallel over KV heads (each
// device holds the projections of its heads and the compressed store of those heads'
// entries, budgets still allocated per sequence over all heads), the MoE layers
// expert-parallel (each routed expert's weights on one device, tokens dispatched to
// it), and everything else (embeddings, norms, routers, shared experts, dense FFNs,
// the LM head) replicated. Experts are balanced per layer by their measured load: the
// share of tokens whose top-1 expert they are in a calibration profile (uniform
// without one), largest first onto the least-loaded device that has room, at most
// ceil(E / N) experts a device so the weights split evenly too.
//
// MLA layers (one latent per token, no KV heads) cannot split attention by heads: their
// attention is replicated and each device keeps the latents of its own sequences.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kv/profile.h"
#include "model/config.h"

namespace ekva {

struct TensorBytes {
  std::string name;  // as in the checkpoint ("model.layers.3.mlp.experts.7.up_proj.weight")
  size_t bytes = 0;
};

struct DevicePlacement {
  int kv_head_begin = 0, kv_head_end = 0;  // [begin, end): all of them for MLA
  std::vector<std::vector<int>> experts;   // [layer]: the routed experts it holds
  std::vector<double> load;                // [layer]: their summed load share
  size_t weight_bytes = 0;
};

struct PlacementPlan {
  int n_devices = 0;
  std::string load_source;      // "calibration profile (top-1 routing share)" or "uniform"
  bool attention_split = true;  // false: MLA (replicated attention, sequences split)
  std::vector<DevicePlacement> devices;
  std::vector<double> layer_imbalance;  // [layer]: max device load over the mean; 1 when dense
  size_t replicated_bytes = 0;          // held by every device
  size_t total_bytes = 0;               // the checkpoint's

  double max_imbalance() const;
  nlohmann::json to_json() const;
};

// Throws ekva::Error for n_devices < 1, KV heads that do not divide among the devices,
// more devices than a MoE layer has experts, or a profile of another model.
PlacementPlan plan_placement(const ModelConfig& config, std::span<const TensorBytes> tensors,
                             const CalibrationProfile* profile, int n_devices);

}  // namespace ekva
