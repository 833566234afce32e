// `ekva info`: describes a model directory (shapes, experts, weight and KV sizes).
//   ekva info -m DIR
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cli_util.h"
#include "commands.h"
#include "model/model.h"

namespace ekva::cli {

namespace {

void run_info(const std::string& model_dir) {
  const auto model = ekva::Model::load(model_dir);
  const auto& c = model->config();
  fmt::print("architecture      {}\n", c.arch_name);
  fmt::print("layers            {}\n", c.n_layers);
  fmt::print("hidden            {}\n", c.hidden_size);
  const char* qk_norm = c.qk_norm == ekva::QkNorm::kPerHead           ? ", q/k norm per head"
                        : c.qk_norm == ekva::QkNorm::kWholeProjection ? ", q/k norm"
                                                                      : "";
  if (c.is_mla()) {
    const ekva::MlaConfig& m = c.mla;
    fmt::print("attention         MLA, {} heads x (nope {} + rope {}), v_head_dim {}\n", c.n_heads,
               m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim);
    fmt::print("latent            kv_lora_rank {} + rope {} per token, {}\n", m.kv_lora_rank,
               m.qk_rope_head_dim,
               m.q_lora_rank > 0 ? fmt::format("q_lora_rank {}", m.q_lora_rank) : "no query LoRA");
  } else {
    fmt::print("heads / kv heads  {} / {} (head_dim {}{})\n", c.n_heads, c.n_kv_heads, c.head_dim,
               qk_norm);
  }
  if (c.router.n_experts > 0) {
    fmt::print("experts           {} routed, top-{}{} (expert ffn {})\n", c.router.n_experts,
               c.router.top_k, c.router.renormalize ? ", renormalised" : "",
               c.expert_intermediate_size);
    if (c.router.scoring == ekva::RouterScoring::kSigmoid || c.router.n_groups > 1 ||
        c.router.scale != 1.f)
      fmt::print("routing           {}{}{}, scale {}\n",
                 c.router.scoring == ekva::RouterScoring::kSigmoid ? "sigmoid" : "softmax",
                 c.router.selection_bias ? " + selection bias" : "",
                 c.router.n_groups > 1
                     ? fmt::format(", best {} of {} groups", c.router.top_groups, c.router.n_groups)
                     : std::string(),
                 c.router.scale);
    std::vector<int> dense;
    for (int i = 0; i < c.n_layers; ++i)
      if (!c.is_moe_layer(i)) dense.push_back(i);
    if (!dense.empty())
      fmt::print("dense layers      {} (ffn {})\n", fmt::join(dense, ", "),
                 c.dense_intermediate_size);
    if (c.shared_expert_intermediate_size > 0)
      fmt::print("shared expert     ffn {}\n", c.shared_expert_intermediate_size);
  }
  fmt::print("vocab             {}\n", c.vocab_size);
  fmt::print("context           {}\n", c.max_position_embeddings);
  fmt::print("weights           {} in {} tensors\n",
             human_bytes(static_cast<double>(model->tensors().total_bytes())),
             model->tensors().names().size());
  fmt::print("active per token  {}\n",
             human_bytes(static_cast<double>(model->active_weight_bytes_per_token())));
  // MLA stores the latent only (values are read from it): one row per layer.
  fmt::print("KV per token      {} (f32)\n",
             human_bytes((c.is_mla() ? 1.0 : 2.0) * c.n_layers * c.kv_dim() * sizeof(float)));
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("info", "Describe a model directory");
  cmd->add_option("-m,--model", *model_dir, "Model directory")->required();
  cmd->callback([model_dir] { run_info(*model_dir); });
}

}  // namespace ekva::cli
