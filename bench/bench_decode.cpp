// CPU decode against the machine's read bandwidth.
//
// Measures (1) the streaming read bandwidth of this machine with the engine's
// thread pool and (2) the decode step of a model too large for the caches: the
// bytes each step must read (the weights it touches, routed experts only, plus the
// KV entries attention visits) over the step's median time, as a fraction of (1).
//
//   ekva_bench_decode -m DIR [--prompt 128 --rounds 8 --steps 12] [--json-out FILE]
#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <random>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/cpu_backend.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "roofline/ceilings.h"
#include "roofline/report.h"

using ekva::median;

int main(int argc, char** argv) {
  CLI::App app{"EKVA CPU decode benchmark: bytes read per step against measured read bandwidth"};
  std::string model_dir, json_out, commit = "unknown";
  int prompt_len = 128, steps = 12, rounds = 8, bandwidth_runs = 5, threads = 0;
  double bandwidth_gib = 1.0;
  app.add_option("-m,--model", model_dir, "Model directory (larger than the last-level cache)")->required();
  app.add_option("--prompt", prompt_len, "Prompt tokens before decoding")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "Decode steps per round")->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "Rounds of (bandwidth burst, decode steps)")->check(CLI::PositiveNumber);
  app.add_option("--bandwidth-gib", bandwidth_gib, "Buffer for the bandwidth measurement (GiB)");
  app.add_option("--bandwidth-runs", bandwidth_runs, "Repetitions of the bandwidth measurement");
  app.add_option("-t,--threads", threads, "Threads (0 = one per core)");
  app.add_option("--commit", commit, "Commit recorded in the JSON");
  app.add_option("--json-out", json_out, "Write the figures as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    ekva::CpuBackend backend(threads);
    ekva::ThreadPool& pool = backend.pool();
    const auto bandwidth_bytes = static_cast<size_t>(bandwidth_gib * (1 << 30));

    const auto model = ekva::Model::load(model_dir);
    const auto& c = model->config();
    fmt::print("model            {} ({:.1f} MB of weights, {:.1f} MB active per token)\n", c.arch_name,
               static_cast<double>(model->tensors().total_bytes()) / 1e6,
               static_cast<double>(model->active_weight_bytes_per_token()) / 1e6);

    const int total_steps = rounds * steps;
    ekva::FullKvCache cache({c.n_layers, c.n_kv_heads, c.head_dim}, prompt_len + total_steps + 1);
    std::mt19937 rng(1);
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
    for (auto& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));
    std::vector<float> logits;
    const auto t0 = std::chrono::steady_clock::now();
    model->forward(prompt, cache, logits, false, backend);
    ekva::Activations act(c, backend, {.max_sequences = 1, .max_tokens = 1});
    const double prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("prefill          {} tokens in {:.3f} s ({:.1f} tok/s)\n", prompt_len, prefill_s,
               prompt_len / prefill_s);

    // Rounds of (bandwidth burst, decode steps): on a shared host the available
    // bandwidth drifts over seconds, so each round's decode rate is compared with
    // the ceiling measured just before it, and the rounds' median is reported.
    nlohmann::json rounds_json = nlohmann::json::array();
    std::vector<double> fractions, all_step_s, all_gbs, ceilings;
    size_t bytes_total = 0, weight_total = 0, kv_total = 0;
    for (int r = 0; r < rounds; ++r) {
      const auto bw = ekva::measure_read_bandwidth(pool, bandwidth_bytes, bandwidth_runs);
      std::vector<double> step_gbs;
      for (int s = 0; s < steps; ++s) {
        const auto next =
            static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        const auto a = std::chrono::steady_clock::now();
        const ekva::SequenceStep step{&cache, {&next, 1}};
        const auto counters = model->forward({&step, 1}, act, backend);
        logits.assign(act.logits.data(), act.logits.data() + c.vocab_size);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
        const size_t bytes = counters.weight_bytes + counters.kv_bytes;
        step_gbs.push_back(static_cast<double>(bytes) / dt / 1e9);
        all_step_s.push_back(dt);
        bytes_total += bytes;
        weight_total += counters.weight_bytes;
        kv_total += counters.kv_bytes;
      }
      const double gbs = median(step_gbs);
      // The ceiling is the round's best bandwidth run (as STREAM reports it): a
      // conservative denominator, since interference only ever slows a run.
      const double fraction = gbs / bw.best_gb_per_s;
      fmt::print("round {:2d}         read ceiling {:6.2f} GB/s | decode {:6.2f} GB/s = {:5.1f}%\n", r,
                 bw.best_gb_per_s, gbs, 100.0 * fraction);
      fractions.push_back(fraction);
      all_gbs.push_back(gbs);
      ceilings.push_back(bw.best_gb_per_s);
      rounds_json.push_back({{"read_ceiling_gb_per_s", bw.best_gb_per_s},
                             {"read_median_gb_per_s", bw.median_gb_per_s},
                             {"decode_read_gb_per_s_median", gbs},
                             {"fraction", fraction}});
    }
    const double med_s = median(all_step_s);
    const double fraction = median(fractions);
    fmt::print("decode step      {:.2f} ms median ({:.1f} tok/s), {:.1f} MB read per step "
               "({:.1f} weights + {:.2f} KV)\n",
               med_s * 1e3, 1.0 / med_s, static_cast<double>(bytes_total) / total_steps / 1e6,
               static_cast<double>(weight_total) / total_steps / 1e6,
               static_cast<double>(kv_total) / total_steps / 1e6);
    fmt::print("decode read rate {:.2f} GB/s median = {:.1f}% of the measured read bandwidth "
               "(median over {} rounds; target 70%)\n",
               median(all_gbs), 100.0 * fraction, rounds);

    if (!json_out.empty()) {
      nlohmann::json j;
      j["benchmark"] = "cpu_decode_vs_read_bandwidth";
      j["commit"] = commit;
      j["date"] = ekva::utc_timestamp();
      j["device"] = ekva::cpu_description(pool.size());
      j["model"] = {{"dir", model_dir},
                    {"architecture", c.arch_name},
                    {"weight_bytes", model->tensors().total_bytes()},
                    {"active_weight_bytes_per_token", model->active_weight_bytes_per_token()}};
      j["decode"] = {{"prompt_tokens", prompt_len},
                     {"rounds", rounds},
                     {"steps_per_round", steps},
                     {"step_ms_median", med_s * 1e3},
                     {"tokens_per_second", 1.0 / med_s},
                     {"bytes_per_step", static_cast<double>(bytes_total) / total_steps},
                     {"read_gb_per_s_median", median(all_gbs)},
                     {"read_ceiling_gb_per_s_median", median(ceilings)},
                     {"fraction_of_read_bandwidth", fraction}};
      j["rounds"] = rounds_json;
      j["prefill"] = {{"tokens", prompt_len}, {"seconds", prefill_s}};
      std::ofstream(json_out) << j.dump(2) << "\n";
      fmt::print("wrote {}\n", json_out);
    }
  } catch (const ekva::Error& e) {
    fmt::print(stderr, "ekva_bench_decode: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
