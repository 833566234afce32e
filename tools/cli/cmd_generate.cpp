// `ekva generate`: streams the text a model generates from a prompt, or prints one JSON object
// with the text and the run's figures (tokens/s, bytes read, KV sizes).
//   ekva generate -m DIR -p TEXT -n N [--temperature T --top-k K --top-p P --seed S] [--json]
//                 [--policy P --allocator A --budget B --profile FILE] [-t N] [-c N] [--ignore-eos]
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "ekva/ekva.h"

namespace ekva::cli {

namespace {

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

void run_generate(const GenerateArgs& a) {
  ekva::EngineOptions eo;
  eo.threads = a.threads;
  eo.context = a.context;
  eo.kv = a.kv;
  const std::string prompt = a.prompt_file.empty() ? a.prompt : read_prompt_file(a.prompt_file);
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
    j["kv"] = {{"policy", a.kv.policy},
               {"allocator", a.kv.allocator},
               {"budget", a.kv.budget},
               {"profile", a.kv.profile.string()}};
    j["decode_bytes_read"] = stats.decode_bytes_read;
    std::cout << j.dump(2) << "\n";
  } else {
    const double gbps = stats.decode_seconds > 0 ? static_cast<double>(stats.decode_bytes_read) /
                                                       stats.decode_seconds / 1e9
                                                 : 0.0;
    const double saved = stats.kv_full_bytes > 0
                             ? 100.0 * (1.0 - static_cast<double>(stats.kv_bytes) /
                                                  static_cast<double>(stats.kv_full_bytes))
                             : 0.0;
    std::printf(
        "\n[ekva] prompt %lld tok, %.1f tok/s | decode %lld tok, %.1f tok/s, %.2f GB/s read | "
        "KV %s of %s full (%.1f%% saved) | stop: %s\n",
        static_cast<long long>(stats.prompt_tokens), stats.prefill_tokens_per_second(),
        static_cast<long long>(stats.generated_tokens), stats.decode_tokens_per_second(), gbps,
        human_bytes(static_cast<double>(stats.kv_bytes)).c_str(),
        human_bytes(static_cast<double>(stats.kv_full_bytes)).c_str(), saved,
        stats.stop_reason.c_str());
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  GenerateArgs& g = *args;
  auto* gen = app.add_subcommand("generate", "Generate text from a prompt");
  gen->add_option("-m,--model", g.model_dir,
                  "Model directory (config.json, safetensors, tokenizer.json)")
      ->required();
  auto* prompt_opt = gen->add_option("-p,--prompt", g.prompt, "Prompt text");
  gen->add_option("-f,--prompt-file", g.prompt_file, "Read the prompt from a file")
      ->excludes(prompt_opt);
  gen->add_option("-n,--max-new-tokens", g.n, "Tokens to generate")->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", g.sampling.temperature, "0 = greedy")
      ->check(CLI::NonNegativeNumber);
  gen->add_option("--top-k", g.sampling.top_k, "Keep the k most likely tokens (0 = off)")
      ->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", g.sampling.top_p, "Nucleus sampling mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", g.sampling.seed, "Sampling seed");
  gen->add_option("-t,--threads", g.threads, "Threads (0 = one per core)")
      ->check(CLI::NonNegativeNumber);
  gen->add_option("-c,--ctx", g.context, "Context length (0 = the model's)")
      ->check(CLI::NonNegativeNumber);
  gen->add_flag("--json", g.json, "Print one JSON object instead of streaming text");
  gen->add_flag("--ignore-eos", g.ignore_eos, "Keep generating past end-of-sequence tokens");
  gen->add_option("--policy", g.kv.policy,
                  "KV policy: full, streamingllm, h2o, snapkv, knorm, random")
      ->capture_default_str();
  gen->add_option("--allocator", g.kv.allocator,
                  "KV budget allocator: uniform, pyramidkv, adakv, ekva-entropy, ekva-mass")
      ->capture_default_str();
  gen->add_option("--budget", g.kv.budget,
                  "KV budget: tokens (2048), bytes (64MiB) or a fraction (10%)")
      ->capture_default_str();
  gen->add_option("--profile", g.kv.profile,
                  "Calibration profile (ekva calibrate), for the EKVA allocators");
  gen->callback([args] {
    if (args->prompt.empty() && args->prompt_file.empty()) {
      throw UsageError("give a prompt with -p TEXT or -f FILE");
    }
    run_generate(*args);
  });
}

}  // namespace ekva::cli
