// The `ekva` command.
//   ekva generate -m DIR -p TEXT -n N [--temperature T --top-k K --top-p P --seed S] [--json]
//   ekva info -m DIR
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "ekva/ekva.h"
#include "model/model.h"

namespace {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return fmt::format("{:.{}f} {}", bytes, u == 0 ? 0 : 1, units[u]);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ekva::Error(fmt::format("{}: cannot open prompt file", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct GenerateArgs {
  std::string model_dir;
  std::string prompt;
  std::string prompt_file;
  int n = 128;
  ekva::SamplingOptions sampling;
  int threads = 0;
  int64_t context = 0;
  bool json = false;
  bool ignore_eos = false;
  ekva::KvCompressionOptions kv;
};

int run_generate(const GenerateArgs& a) {
  ekva::EngineOptions eo;
  eo.threads = a.threads;
  eo.context = a.context;
  eo.kv = a.kv;
  const std::string prompt = a.prompt_file.empty() ? a.prompt : read_file(a.prompt_file);
  auto engine = ekva::Engine::open(a.model_dir, eo);
  ekva::GenerateOptions go;
  go.max_new_tokens = a.n;
  go.sampling = a.sampling;
  go.stop_at_eos = !a.ignore_eos;

  std::string text;
  const auto stats = engine->generate(prompt, go, [&](std::string_view piece) {
    text += piece;
    if (!a.json) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
  });
  if (a.json) {
    nlohmann::json j;
    j["model"] = a.model_dir;
    j["architecture"] = engine->architecture();
    j["prompt"] = prompt;
    j["text"] = text;
    j["tokens"] = stats.tokens;
    j["stop_reason"] = stats.stop_reason;
    j["prompt_tokens"] = stats.prompt_tokens;
    j["generated_tokens"] = stats.generated_tokens;
    j["prefill_seconds"] = stats.prefill_seconds;
    j["decode_seconds"] = stats.decode_seconds;
    j["prefill_tokens_per_second"] = stats.prefill_tokens_per_second();
    j["decode_tokens_per_second"] = stats.decode_tokens_per_second();
    j["kv_bytes"] = stats.kv_bytes;
    j["kv_full_bytes"] = stats.kv_full_bytes;
    j["kv"] = {{"policy", a.kv.policy}, {"allocator", a.kv.allocator}, {"budget", a.kv.budget},
               {"profile", a.kv.profile.string()}};
    j["decode_bytes_read"] = stats.decode_bytes_read;
    std::cout << j.dump(2) << "\n";
  } else {
    const double gbps = stats.decode_seconds > 0
                            ? static_cast<double>(stats.decode_bytes_read) / stats.decode_seconds / 1e9
                            : 0.0;
    const double saved = stats.kv_full_bytes > 0
                             ? 100.0 * (1.0 - static_cast<double>(stats.kv_bytes) / static_cast<double>(stats.kv_full_bytes))
                             : 0.0;
    std::printf("\n[ekva] prompt %lld tok, %.1f tok/s | decode %lld tok, %.1f tok/s, %.2f GB/s read | "
                "KV %s of %s full (%.1f%% saved) | stop: %s\n",
                static_cast<long long>(stats.prompt_tokens), stats.prefill_tokens_per_second(),
                static_cast<long long>(stats.generated_tokens), stats.decode_tokens_per_second(), gbps,
                human_bytes(static_cast<double>(stats.kv_bytes)).c_str(),
                human_bytes(static_cast<double>(stats.kv_full_bytes)).c_str(), saved,
                stats.stop_reason.c_str());
  }
  return 0;
}

int run_info(const std::string& model_dir) {
  const auto model = ekva::Model::load(model_dir);
  const auto& c = model->config();
  fmt::print("architecture      {}\n", c.arch_name);
  fmt::print("layers            {}\n", c.n_layers);
  fmt::print("hidden            {}\n", c.hidden_size);
  fmt::print("heads / kv heads  {} / {} (head_dim {})\n", c.n_heads, c.n_kv_heads, c.head_dim);
  if (c.router.n_experts > 0)
    fmt::print("experts           {} routed, top-{}{} (expert ffn {})\n", c.router.n_experts,
               c.router.top_k, c.router.renormalize ? ", renormalised" : "",
               c.expert_intermediate_size);
  fmt::print("vocab             {}\n", c.vocab_size);
  fmt::print("context           {}\n", c.max_position_embeddings);
  fmt::print("weights           {} in {} tensors\n",
             human_bytes(static_cast<double>(model->tensors().total_bytes())),
             model->tensors().names().size());
  fmt::print("active per token  {}\n",
             human_bytes(static_cast<double>(model->active_weight_bytes_per_token())));
  fmt::print("KV per token      {} (f32)\n",
             human_bytes(2.0 * c.n_layers * c.kv_dim() * sizeof(float)));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"EKVA: MoE inference with an expert-aware compressed KV cache"};
  app.require_subcommand(1);

  GenerateArgs g;
  auto* gen = app.add_subcommand("generate", "Generate text from a prompt");
  gen->add_option("-m,--model", g.model_dir, "Model directory (config.json, safetensors, tokenizer.json)")
      ->required();
  auto* prompt_opt = gen->add_option("-p,--prompt", g.prompt, "Prompt text");
  gen->add_option("-f,--prompt-file", g.prompt_file, "Read the prompt from a file")
      ->excludes(prompt_opt);
  gen->add_option("-n,--max-new-tokens", g.n, "Tokens to generate")->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", g.sampling.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-k", g.sampling.top_k, "Keep the k most likely tokens (0 = off)")
      ->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", g.sampling.top_p, "Nucleus sampling mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", g.sampling.seed, "Sampling seed");
  gen->add_option("-t,--threads", g.threads, "Threads (0 = one per core)")->check(CLI::NonNegativeNumber);
  gen->add_option("-c,--ctx", g.context, "Context length (0 = the model's)")->check(CLI::NonNegativeNumber);
  gen->add_flag("--json", g.json, "Print one JSON object instead of streaming text");
  gen->add_flag("--ignore-eos", g.ignore_eos, "Keep generating past end-of-sequence tokens");
  gen->add_option("--policy", g.kv.policy, "KV policy: full, streamingllm, h2o, snapkv, knorm, random")
      ->capture_default_str();
  gen->add_option("--allocator", g.kv.allocator,
                  "KV budget allocator: uniform, pyramidkv, adakv, ekva-entropy, ekva-mass")
      ->capture_default_str();
  gen->add_option("--budget", g.kv.budget, "KV budget: tokens (2048), bytes (64MiB) or a fraction (10%)")
      ->capture_default_str();
  gen->add_option("--profile", g.kv.profile, "Calibration profile (ekva calibrate), for the EKVA allocators");

  std::string info_dir;
  auto* info = app.add_subcommand("info", "Describe a model directory");
  info->add_option("-m,--model", info_dir, "Model directory")->required();

  ekva::cli::add_calibrate_command(app);
  ekva::cli::add_eval_command(app);

  try {
    app.parse(argc, argv);  // runs the callbacks of calibrate and eval
    if (gen->parsed()) {
      if (g.prompt.empty() && g.prompt_file.empty()) {
        std::fprintf(stderr, "ekva: error: give a prompt with -p TEXT or -f FILE\n");
        return 2;
      }
      return run_generate(g);
    }
    if (info->parsed()) return run_info(info_dir);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ekva::Error& e) {
    std::fprintf(stderr, "ekva: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ekva: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
