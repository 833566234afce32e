// `ekva generate`: streams the text a model generates from a prompt, or prints one JSON object
// with the text and the run's figures (tokens/s, bytes read, KV sizes).
//   ekva generate -m DIR -p TEXT -n N [--temperature T --top-k K --top-p P --seed S] [--json]
//                 [--policy P --allocator A --budget B --profile FILE] [--kv-dtype bf16|f32]
//                 [-t N] [-c N] [--ignore-eos] [--op-profile FILE] [--device cpu|cuda[:N]]
//   ekva generate -m DIR --prompts FILE.jsonl [--max-batch B --step-tokens T] [...]
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
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
  std::string kv_dtype = "bf16";  // stored K/V, full and compressed cache alike
  std::string compress_per_layer = "on";
  std::string prompts_file;  // JSONL: many prompts through the scheduler
  int max_batch = 16;
  int64_t step_tokens = 512;
  std::string op_profile;  // where to write the op profile (--op-profile)
  std::string device = "cpu";
};

ekva::EngineOptions engine_options(const GenerateArgs& a) {
  ekva::EngineOptions eo;
  eo.threads = a.threads;
  eo.context = a.context;
  eo.kv = a.kv;
  eo.kv.compress_per_layer = a.compress_per_layer == "on";  // checked by the option
  eo.kv_dtype = a.kv_dtype;
  eo.max_step_tokens = a.step_tokens;
  eo.profile_ops = !a.op_profile.empty();
  eo.device = a.device;
  return eo;
}

// The engine's op profile, with what was run, to --op-profile.
void write_op_profile(const GenerateArgs& a, const ekva::Engine& engine, int64_t prompts) {
  if (a.op_profile.empty()) return;
  nlohmann::json j = nlohmann::json::parse(engine.op_profile_json());
  j["run"] = {{"command", "ekva generate"},
              {"model", a.model_dir},
              {"architecture", engine.architecture()},
              {"prompts", prompts},
              {"max_batch", a.prompts_file.empty() ? 1 : a.max_batch},
              {"max_new_tokens", a.n},
              {"step_tokens", a.step_tokens},
              {"threads", a.threads},
              {"kv",
               {{"policy", a.kv.policy},
                {"allocator", a.kv.allocator},
                {"budget", a.kv.budget},
                {"dtype", a.kv_dtype}}}};
  write_text_file(a.op_profile, j.dump(1) + "\n", "op profile");
  std::cerr << "[ekva] op profile written to " << a.op_profile << std::endl;
}

// One line of a prompts file: {"prompt": TEXT, "max_new_tokens": N (optional),
// "id": anything (optional, echoed in the output)}.
struct PromptLine {
  int64_t line = 0;
  std::string prompt;
  int max_new_tokens = 0;
  nlohmann::json id;
};

// Reads every line before anything runs, so a malformed file fails at once and
// names the line; blank lines are skipped.
std::vector<PromptLine> read_prompts(const std::string& path, int default_max_new_tokens) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ekva::Error(fmt::format("{}: cannot open prompts file", path));
  std::vector<PromptLine> out;
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto bad = [&](std::string_view why) {
      return ekva::Error(fmt::format("{}:{}: {}", path, line, why));
    };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      throw bad(fmt::format("not JSON ({})", e.what()));
    }
    if (!j.is_object()) throw bad("expected a JSON object {\"prompt\": ...}");
    if (!j.contains("prompt") || !j["prompt"].is_string())
      throw bad("expected a string field \"prompt\"");
    PromptLine p{line, j["prompt"].get<std::string>(), default_max_new_tokens,
                 j.value("id", nlohmann::json())};
    if (j.contains("max_new_tokens")) {
      if (!j["max_new_tokens"].is_number_integer() || j["max_new_tokens"].get<int64_t>() < 0 ||
          j["max_new_tokens"].get<int64_t>() > (1 << 30))
        throw bad("\"max_new_tokens\" must be a non-negative integer");
      p.max_new_tokens = j["max_new_tokens"].get<int>();
    }
    out.push_back(std::move(p));
  }
  if (out.empty()) throw ekva::Error(fmt::format("{}: no prompts", path));
  return out;
}

// Many prompts, continuously batched: one JSON record per prompt on stdout as soon
// as it finishes (or is refused), then the aggregate figures. Exits 1 when any
// prompt was refused; the others still run.
void run_prompts(const GenerateArgs& a) {
  const std::vector<PromptLine> prompts = read_prompts(a.prompts_file, a.n);
  auto engine = ekva::Engine::open(a.model_dir, engine_options(a));
  auto scheduler =
      engine->new_scheduler({.max_sequences = a.max_batch, .max_step_tokens = a.step_tokens});
  std::map<int64_t, size_t> index_of;  // scheduler id -> prompt
  std::map<int64_t, std::string> texts;
  int refused = 0;
  const auto record = [&](const PromptLine& p) {
    nlohmann::json j;
    j["line"] = p.line;
    if (!p.id.is_null()) j["id"] = p.id;
    return j;
  };
  for (size_t i = 0; i < prompts.size(); ++i) {
    ekva::GenerateOptions go;
    go.max_new_tokens = prompts[i].max_new_tokens;
    go.sampling = a.sampling;
    go.stop_at_eos = !a.ignore_eos;
    try {
      index_of[scheduler->add(prompts[i].prompt, go)] = i;
    } catch (const ekva::Error& e) {
      nlohmann::json j = record(prompts[i]);
      j["error"] = fmt::format("{}:{}: {}", a.prompts_file, prompts[i].line, e.what());
      std::cout << j.dump() << std::endl;
      ++refused;
    }
  }
  while (!scheduler->idle()) {
    for (const ekva::SequenceUpdate& u : scheduler->step()) {
      texts[u.id] += u.text;
      if (!u.finished) continue;
      const ekva::GenerateStats& st = u.stats;
      nlohmann::json j = record(prompts[index_of.at(u.id)]);
      j["text"] = texts[u.id];
      j["tokens"] = st.tokens;
      j["stop_reason"] = st.stop_reason;
      j["prompt_tokens"] = st.prompt_tokens;
      j["generated_tokens"] = st.generated_tokens;
      j["kv_bytes"] = st.kv_bytes;
      j["kv_full_bytes"] = st.kv_full_bytes;
      std::cout << j.dump() << std::endl;
      texts.erase(u.id);
    }
  }
  const ekva::SchedulerStats& s = scheduler->stats();
  const std::string line = fmt::format(
      "[ekva] {} prompts ({} refused): {} prompt + {} generated tokens in {} steps, {:.2f} s; "
      "{:.1f} generated tok/s aggregate, batch up to {}",
      prompts.size(), refused, s.prompt_tokens, s.generated_tokens, s.steps, s.step_seconds,
      s.generated_tokens_per_second(), s.max_batch);
  std::cerr << line << std::endl;
  if (a.json) {
    nlohmann::json j;
    j["summary"] = {{"prompts", prompts.size()},
                    {"refused", refused},
                    {"steps", s.steps},
                    {"prompt_tokens", s.prompt_tokens},
                    {"generated_tokens", s.generated_tokens},
                    {"seconds", s.step_seconds},
                    {"generated_tokens_per_second", s.generated_tokens_per_second()},
                    {"max_batch", s.max_batch}};
    std::cout << j.dump() << std::endl;
  }
  write_op_profile(a, *engine, static_cast<int64_t>(prompts.size()));
  if (refused > 0)
    throw ekva::Error(fmt::format("{}: {} of {} prompts refused (see their records)",
                                  a.prompts_file, refused, prompts.size()));
}

void run_generate(const GenerateArgs& a) {
  const std::string prompt = a.prompt_file.empty() ? a.prompt : read_prompt_file(a.prompt_file);
  auto engine = ekva::Engine::open(a.model_dir, engine_options(a));
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
  write_op_profile(a, *engine, 1);
  if (a.json) {
    nlohmann::json j;
    j["model"] = a.model_dir;
    j["architecture"] = engine->architecture();
    j["device"] = a.device;
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
               {"profile", a.kv.profile.string()},
               {"dtype", a.kv_dtype}};
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
  auto* file_opt = gen->add_option("-f,--prompt-file", g.prompt_file, "Read the prompt from a file")
                       ->excludes(prompt_opt);
  gen->add_option(
         "--prompts", g.prompts_file,
         "JSONL file of prompts ({\"prompt\": TEXT, \"max_new_tokens\": N, \"id\": ...} per line), "
         "batched continuously; one output record per prompt as it finishes")
      ->excludes(prompt_opt)
      ->excludes(file_opt);
  gen->add_option("--max-batch", g.max_batch, "Sequences in one step (--prompts)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  gen->add_option("--step-tokens", g.step_tokens,
                  "Tokens in one forward pass: prompts longer than this are prefilled in chunks")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
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
  gen->add_option("--device", g.device,
                  "cpu, or cuda / cuda:N: weights, activations and the (full) KV cache on that GPU")
      ->capture_default_str();
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
  gen->add_option("--kv-dtype", g.kv_dtype, "Stored K/V element type: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  gen->add_option("--op-profile", g.op_profile,
                  "Time every op of the forward pass and write the profile (time, bytes, FLOPs "
                  "per op, layer and expert) to this JSON file, for ekva roofline report");
  gen->add_option("--compress-per-layer", g.compress_per_layer,
                  "Compress the prompt layer by layer (on) or after the last layer (off)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  gen->callback([args] {
    if (!args->prompts_file.empty()) return run_prompts(*args);
    if (args->prompt.empty() && args->prompt_file.empty()) {
      throw UsageError("give a prompt with -p TEXT, -f FILE or --prompts FILE.jsonl");
    }
    run_generate(*args);
  });
}

}  // namespace ekva::cli
