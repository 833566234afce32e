// `ekva calibrate`: runs sample text through a model and writes its calibration
// profile (src/kv/profile.h), the statistics the budget allocators read.
//   ekva calibrate -m DIR --data FILE -o profile.json [--context N] [--max-tokens N]
//                  [--sink-tokens N] [--recent-window N] [-t N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "core/xz_file.h"
#include "kv/profile.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "roofline/ceilings.h"
#include "runtime/calibration_run.h"

namespace ekva::cli {

namespace {

struct CalibrateArgs {
  std::string model_dir;
  std::string data;
  std::string output;
  int64_t context = 2048;
  int64_t max_tokens = 65536;
  int64_t sink_tokens = 4;
  int64_t recent_window = 32;
  int threads = 0;
  std::string retrieval_heads;  // needle prompts (.jsonl[.xz]), or none
  std::vector<int> retrieval_contexts{1024, 2048};
  int max_retrieval = 24;
  std::string commit;  // recorded in the profile
};

std::string clock_text(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds) + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

// Progress on stderr: a bar redrawn in place on a terminal, otherwise one line per
// sequence (logs and CI keep every line, and \r would garble them).
class Progress {
 public:
  explicit Progress(int64_t n_sequences)
      : n_sequences_(n_sequences),
        tty_(isatty(STDERR_FILENO) != 0),
        start_(std::chrono::steady_clock::now()) {}

  void update(int64_t done_tokens, int64_t total_tokens) {
    ++done_sequences_;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done_tokens) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_tokens - done_tokens) / rate : 0.0;
    const std::string status =
        fmt::format("{}/{} sequences, {}/{} tokens, {:.0f} tok/s, ETA {}", done_sequences_,
                    n_sequences_, done_tokens, total_tokens, rate, clock_text(eta));
    if (tty_) {
      constexpr int kWidth = 30;
      const auto filled =
          static_cast<int>(kWidth * done_tokens / std::max<int64_t>(1, total_tokens));
      fmt::print(stderr, "\rcalibrate [{}{}] {}", std::string(static_cast<size_t>(filled), '#'),
                 std::string(static_cast<size_t>(kWidth - filled), '.'), status);
      if (done_sequences_ == n_sequences_) fmt::print(stderr, "\n");
    } else {
      fmt::print(stderr, "calibrate: {}\n", status);
    }
    std::fflush(stderr);
  }

 private:
  int64_t n_sequences_;
  int64_t done_sequences_ = 0;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

// What a reader wants to see before opening the JSON: per layer, how unequal the
// experts are (routing, mass on their keys, entropy of their queries) and how much
// mass the best 10% of entries hold.
void print_summary(const CalibrationProfile& p) {
  fmt::print(
      "layer  entropy(nats)  mass@10%  | experts: top-1 freq      mass_received    "
      "query_entropy\n");
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const LayerStats& L = p.layers[l];
    std::string experts = "dense";
    if (L.moe) {
      const auto range = [&](double ExpertStats::*field) {
        const auto [lo, hi] = std::minmax_element(
            L.experts.begin(), L.experts.end(),
            [&](const ExpertStats& a, const ExpertStats& b) { return a.*field < b.*field; });
        return fmt::format("{:.3f}..{:.3f}", (*lo).*field, (*hi).*field);
      };
      experts = fmt::format("{}     {}     {}", range(&ExpertStats::routing_top1_frequency),
                            range(&ExpertStats::mass_received), range(&ExpertStats::query_entropy));
    }
    fmt::print("{:5}  {:13.3f}  {:8.3f}  |          {}\n", l, L.all.query_entropy,
               L.all.coverage.mass_at(0.1), experts);
  }
}

void run_calibrate(const CalibrateArgs& a) {
  if (a.context <= a.sink_tokens + a.recent_window)
    fail("--context {} must be larger than --sink-tokens + --recent-window ({})", a.context,
         a.sink_tokens + a.recent_window);
  if (a.max_tokens < a.context)
    fail("--max-tokens {} is less than one sequence of --context {} tokens", a.max_tokens,
         a.context);
  // Before minutes of work, not after.
  const auto out_dir = std::filesystem::path(a.output).parent_path();
  if (!out_dir.empty() && !std::filesystem::is_directory(out_dir))
    fail("{}: directory {} does not exist", a.output, out_dir.string());
  ThreadPool pool(a.threads > 0 ? a.threads : default_thread_count());

  const auto model = Model::load(a.model_dir);
  const ModelConfig& c = model->config();
  if (a.context > c.max_position_embeddings)
    fail("--context {} exceeds the model's context of {} (max_position_embeddings)", a.context,
         c.max_position_embeddings);
  const Tokenizer tokenizer = Tokenizer::from_model_dir(a.model_dir);
  // Needle prompts (read and checked before minutes of work, not after).
  std::vector<NeedlePrompt> needles;
  if (!a.retrieval_heads.empty()) {
    // Needle prompts of the calibration contexts only (the evaluation's 4k-16k prompts
    // stay held out), spread evenly over the set's tasks, depths and seeds.
    std::vector<nlohmann::json> records;
    for (nlohmann::json& j : read_jsonl(a.retrieval_heads)) {
      const int ctx = j.value("context", 0);
      if (std::find(a.retrieval_contexts.begin(), a.retrieval_contexts.end(), ctx) !=
          a.retrieval_contexts.end())
        records.push_back(std::move(j));
    }
    const size_t take = std::min(records.size(), static_cast<size_t>(a.max_retrieval));
    for (size_t i = 0; i < take; ++i) {
      const nlohmann::json& r = records[i * records.size() / take];
      NeedlePrompt p;
      p.tokens = tokenizer.encode(r.at("prompt").get<std::string>());
      p.answer = r.at("answer_tokens").get<std::vector<int32_t>>();
      p.needle =
          needle_answer_positions(p.tokens, r.value("needle_token_pos", int64_t{-1}), p.answer);
      if (p.needle.empty())
        fail("{}: prompt '{}' has no answer tokens at needle_token_pos", a.retrieval_heads,
             r.value("id", std::string("?")));
      needles.push_back(std::move(p));
    }
    if (needles.empty())
      fail("{}: no prompt of context {} (--retrieval-contexts)", a.retrieval_heads,
           fmt::join(a.retrieval_contexts, ","));
  }
  const auto sequences = calibration_sequences(a.data, tokenizer, a.context, a.max_tokens);
  const auto n = static_cast<int64_t>(sequences.size());
  fmt::print(stderr, "calibrate: {} sequences of {} tokens from {}{}, {} threads\n", n, a.context,
             a.data, n < a.max_tokens / a.context ? " (all the text holds)" : "", pool.size());

  CalibrationOptions options;
  options.sink_tokens = a.sink_tokens;
  options.recent_window = a.recent_window;
  options.data = fmt::format("{} ({} sequences of {} tokens; sink_tokens {}, recent_window {})",
                             a.data, n, a.context, a.sink_tokens, a.recent_window);
  Progress progress(n);
  const auto start = std::chrono::steady_clock::now();
  const CalibrationProfile profile =
      calibrate(*model, sequences, options, pool,
                [&](int64_t done, int64_t total) { progress.update(done, total); });
  CalibrationProfile out = profile;
  out.commit = a.commit;
  out.machine = cpu_description(static_cast<int>(pool.size()));
  out.created = fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", fmt::gmtime(std::time(nullptr)));
  if (!needles.empty()) {
    fmt::print(stderr, "calibrate: retrieval heads over {} needle prompts\n", needles.size());
    const auto mass = retrieval_head_mass(*model, needles, pool, [&](int64_t done, int64_t total) {
      fmt::print(stderr, "calibrate: needle prompt {}/{}\n", done, total);
    });
    for (int l = 0; l < c.n_layers; ++l)
      out.layers[static_cast<size_t>(l)].head_retrieval = mass[static_cast<size_t>(l)];
    out.data +=
        fmt::format("; retrieval heads: {} needle prompts of {} ({} tokens)", needles.size(),
                    a.retrieval_heads, fmt::join(a.retrieval_contexts, ","));
  }
  out.save(a.output);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(stderr, "calibrate: wrote {} ({} tokens in {:.1f} s)\n", a.output, profile.tokens,
             seconds);
  print_summary(profile);
  if (!a.retrieval_heads.empty()) {
    // The heads that retrieve, strongest first (the ones headkv funds).
    std::vector<std::tuple<double, int, int>> heads;
    for (int l = 0; l < c.n_layers; ++l)
      for (int h = 0; h < c.n_kv_heads; ++h)
        heads.emplace_back(
            out.layers[static_cast<size_t>(l)].head_retrieval[static_cast<size_t>(h)], l, h);
    std::sort(heads.begin(), heads.end(), std::greater<>());
    std::string top;
    for (size_t i = 0; i < std::min<size_t>(heads.size(), 5); ++i)
      top += fmt::format("{}layer {} kv-head {}: {:.3f}", i ? ", " : "", std::get<1>(heads[i]),
                         std::get<2>(heads[i]), std::get<0>(heads[i]));
    fmt::print(stderr, "retrieval heads (attention mass on the needle): {}\n", top);
  }
}

}  // namespace

void add_calibrate_command(CLI::App& app) {
  auto args = std::make_shared<CalibrateArgs>();
  auto* cmd = app.add_subcommand(
      "calibrate", "Record a model's attention and routing statistics (a calibration profile)");
  cmd->add_option("-m,--model", args->model_dir, "Model directory")->required();
  cmd->add_option("--data", args->data,
                  "Calibration text: a plain text file, or .jsonl with a \"text\" or \"tokens\" "
                  "field per line")
      ->required();
  cmd->add_option("-o,--output", args->output, "Profile to write (JSON)")->required();
  cmd->add_option("--context", args->context, "Tokens per calibration sequence")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-tokens", args->max_tokens, "Tokens to calibrate on, at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--sink-tokens", args->sink_tokens,
                  "Protected first positions (left out of the statistics)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--recent-window", args->recent_window,
                  "Protected most recent entries (left out of the statistics)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("-t,--threads", args->threads, "Threads (0 = one per core)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--retrieval-heads", args->retrieval_heads,
                  "Needle prompts (retrieval .jsonl[.xz]): also record which kv-heads attend to "
                  "the needle (for the headkv allocator)");
  cmd->add_option("--retrieval-contexts", args->retrieval_contexts,
                  "Contexts of the needle prompts used (keep the evaluation's held out)")
      ->capture_default_str();
  cmd->add_option("--max-retrieval", args->max_retrieval, "Needle prompts, at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--commit", args->commit, "Commit of the engine, recorded in the profile");
  cmd->callback([args] { run_calibrate(*args); });
}

}  // namespace ekva::cli
