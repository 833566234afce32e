#include "runtime/placement.h"

#include <algorithm>
#include <charconv>
#include <numeric>
#include <optional>

#include "core/error.h"

namespace ekva {

namespace {

// The integer after `key` in `name` ("layers." -> 3 in "model.layers.3.mlp"), if any.
std::optional<int> number_after(const std::string& name, std::string_view key) {
  const size_t at = name.find(key);
  if (at == std::string::npos) return std::nullopt;
  const char* begin = name.data() + at + key.size();
  int value = 0;
  const auto [end, ec] = std::from_chars(begin, name.data() + name.size(), value);
  if (ec != std::errc() || end == begin) return std::nullopt;
  return value;
}

struct Kind {
  enum { kReplicated, kAttention, kExpert } what = kReplicated;
  int layer = -1, expert = -1;
};

// A routed expert's tensor (".experts.E." inside layer L; shared experts are named
// shared_expert(s) and stay replicated), an attention tensor, or anything else.
Kind classify(const std::string& name) {
  const auto layer = number_after(name, "layers.");
  if (!layer) return {};
  if (const auto e = number_after(name, ".experts."); e) return {Kind::kExpert, *layer, *e};
  if (name.find(".self_attn.") != std::string::npos) return {Kind::kAttention, *layer, -1};
  return {};
}

}  // namespace

double PlacementPlan::max_imbalance() const {
  return layer_imbalance.empty()
             ? 1.0
             : *std::max_element(layer_imbalance.begin(), layer_imbalance.end());
}

nlohmann::json PlacementPlan::to_json() const {
  nlohmann::json devs = nlohmann::json::array();
  for (const DevicePlacement& d : devices)
    devs.push_back({{"kv_heads", {d.kv_head_begin, d.kv_head_end}},
                    {"experts", d.experts},
                    {"load", d.load},
                    {"weight_bytes", d.weight_bytes}});
  return {{"n_devices", n_devices},
          {"load_source", load_source},
          {"attention",
           attention_split ? "tensor-parallel over kv-heads" : "replicated (MLA), sequences split"},
          {"replicated_bytes", replicated_bytes},
          {"total_bytes", total_bytes},
          {"layer_imbalance", layer_imbalance},
          {"max_imbalance", max_imbalance()},
          {"devices", devs}};
}

PlacementPlan plan_placement(const ModelConfig& c, std::span<const TensorBytes> tensors,
                             const CalibrationProfile* profile, int n_devices) {
  if (n_devices < 1) fail("placement: --devices must be at least 1, got {}", n_devices);
  const int N = n_devices;
  const int E = c.router.n_experts;
  PlacementPlan plan;
  plan.n_devices = N;
  plan.attention_split = !c.is_mla();
  if (plan.attention_split && c.n_kv_heads % N != 0)
    fail(
        "placement: {} kv-heads do not split evenly over {} devices (tensor parallelism splits "
        "attention by kv-head); use a device count that divides {}",
        c.n_kv_heads, N, c.n_kv_heads);
  if (E > 0 && E < N)
    fail("placement: {} devices but only {} experts per MoE layer: some devices would hold none", N,
         E);
  if (profile != nullptr && (profile->n_layers != c.n_layers || profile->n_experts != E))
    fail("placement: the calibration profile is of {} layers x {} experts, the model has {} x {}",
         profile->n_layers, profile->n_experts, c.n_layers, E);
  const auto L = static_cast<size_t>(c.n_layers);
  plan.devices.resize(static_cast<size_t>(N));
  const int heads_each = plan.attention_split ? c.n_kv_heads / N : c.n_kv_heads;
  for (int d = 0; d < N; ++d) {
    DevicePlacement& dev = plan.devices[static_cast<size_t>(d)];
    dev.kv_head_begin = plan.attention_split ? d * heads_each : 0;
    dev.kv_head_end = dev.kv_head_begin + heads_each;
    dev.experts.assign(L, {});
    dev.load.assign(L, 0.0);
  }
  // Experts of each MoE layer: largest load first onto the least-loaded device with room.
  bool measured = false;
  std::vector<std::vector<int>> owner(L);  // [layer][expert] -> device
  plan.layer_imbalance.assign(L, 1.0);
  const int capacity = E > 0 ? (E + N - 1) / N : 0;
  for (size_t l = 0; l < L; ++l) {
    if (E == 0 || !c.is_moe_layer(static_cast<int>(l))) continue;
    std::vector<double> load(static_cast<size_t>(E), 1.0 / E);
    if (profile != nullptr && l < profile->layers.size() &&
        profile->layers[l].experts.size() == static_cast<size_t>(E)) {
      double sum = 0;
      for (int e = 0; e < E; ++e)
        sum += profile->layers[l].experts[static_cast<size_t>(e)].routing_top1_frequency;
      if (sum > 0) {
        measured = true;
        for (int e = 0; e < E; ++e)
          load[static_cast<size_t>(e)] =
              profile->layers[l].experts[static_cast<size_t>(e)].routing_top1_frequency / sum;
      }
    }
    std::vector<int> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return load[static_cast<size_t>(a)] > load[static_cast<size_t>(b)];
    });
    owner[l].assign(static_cast<size_t>(E), -1);
    for (const int e : order) {
      int best = -1;
      for (int d = 0; d < N; ++d) {
        const DevicePlacement& dev = plan.devices[static_cast<size_t>(d)];
        if (static_cast<int>(dev.experts[l].size()) >= capacity) continue;
        if (best < 0 || dev.load[l] < plan.devices[static_cast<size_t>(best)].load[l]) best = d;
      }
      DevicePlacement& dev = plan.devices[static_cast<size_t>(best)];
      dev.experts[l].push_back(e);
      dev.load[l] += load[static_cast<size_t>(e)];
      owner[l][static_cast<size_t>(e)] = best;
    }
    double most = 0;
    for (const DevicePlacement& dev : plan.devices) most = std::max(most, dev.load[l]);
    plan.layer_imbalance[l] = most * N;  // the mean device load is 1 / N
  }
  for (DevicePlacement& dev : plan.devices)
    for (auto& ex : dev.experts) std::sort(ex.begin(), ex.end());
  plan.load_source = measured ? "calibration profile (top-1 routing share)" : "uniform";
  // Weight bytes per device.
  for (const TensorBytes& t : tensors) {
    plan.total_bytes += t.bytes;
    const Kind k = classify(t.name);
    if (k.what == Kind::kExpert && k.layer >= 0 && static_cast<size_t>(k.layer) < L &&
        k.expert >= 0 && k.expert < E && !owner[static_cast<size_t>(k.layer)].empty()) {
      const int d = owner[static_cast<size_t>(k.layer)][static_cast<size_t>(k.expert)];
      plan.devices[static_cast<size_t>(d)].weight_bytes += t.bytes;
    } else if (k.what == Kind::kAttention && plan.attention_split) {
      // Split by heads: an equal share each (the byte remainder to the first).
      for (int d = 0; d < N; ++d)
        plan.devices[static_cast<size_t>(d)].weight_bytes +=
            t.bytes / static_cast<size_t>(N) + (d == 0 ? t.bytes % static_cast<size_t>(N) : 0);
    } else {
      plan.replicated_bytes += t.bytes;
    }
  }
  for (DevicePlacement& dev : plan.devices) dev.weight_bytes += plan.replicated_bytes;
  return plan;
}

}  // namespace ekva
