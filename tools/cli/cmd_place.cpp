// `ekva place`: how a model splits over N GPUs of one host (runtime/placement.h):
// attention by kv-head, routed experts balanced per layer by their measured load,
// the rest replicated; the weight bytes each device holds and each layer's imbalance.
//   ekva place -m DIR --devices N [--profile FILE] [--json-out FILE]
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cli_util.h"
#include "commands.h"
#include "kv/profile.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "runtime/placement.h"

namespace ekva::cli {

namespace {

struct PlaceArgs {
  std::string model_dir, profile, json_out;
  int devices = 2;
};

void run_place(const PlaceArgs& a) {
  const std::filesystem::path dir(a.model_dir);
  const ModelConfig c = ModelConfig::from_file(dir / "config.json");
  const TensorStore store = TensorStore::open_model_dir(dir);
  std::vector<TensorBytes> tensors;
  for (const std::string& name : store.names()) tensors.push_back({name, store.get(name).nbytes});
  std::optional<CalibrationProfile> profile;
  if (!a.profile.empty()) profile = CalibrationProfile::load(a.profile, c);
  const PlacementPlan plan = plan_placement(c, tensors, profile ? &*profile : nullptr, a.devices);
  fmt::print("model            {} ({}), {} devices\n", c.arch_name, human_bytes(plan.total_bytes),
             plan.n_devices);
  fmt::print("attention        {}\n", plan.attention_split
                                          ? "tensor-parallel: each device its kv-heads' "
                                            "projections and compressed store"
                                          : "replicated (MLA has no kv-heads): sequences split");
  fmt::print("experts          balanced by {} load; worst layer {:.3f}x the mean device load\n",
             plan.load_source, plan.max_imbalance());
  fmt::print("replicated       {} (embeddings, norms, routers, shared/dense FFNs, LM head)\n",
             human_bytes(plan.replicated_bytes));
  for (size_t d = 0; d < plan.devices.size(); ++d) {
    const DevicePlacement& dev = plan.devices[d];
    size_t experts = 0;
    for (const auto& e : dev.experts) experts += e.size();
    fmt::print("device {:<9} kv-heads {}..{}, {} routed experts over the layers, {}\n", d,
               dev.kv_head_begin, dev.kv_head_end - 1, experts, human_bytes(dev.weight_bytes));
  }
  if (!a.json_out.empty()) {
    write_text_file(a.json_out, plan.to_json().dump(1) + "\n", "placement file");
    fmt::print("wrote {}\n", a.json_out);
  }
}

}  // namespace

void add_place_command(CLI::App& app) {
  auto a = std::make_shared<PlaceArgs>();
  auto* place = app.add_subcommand(
      "place", "Split a model over N GPUs: kv-heads, experts balanced by load, the bytes each");
  place->add_option("-m,--model", a->model_dir, "Model directory")->required();
  place->add_option("--devices", a->devices, "GPUs of one host")->required();
  place->add_option("--profile", a->profile,
                    "Calibration profile (ekva calibrate): the experts' measured load");
  place->add_option("--json-out", a->json_out, "Write the plan as JSON");
  place->callback([a] { run_place(*a); });
}

}  // namespace ekva::cli
