// CPU decode against the machine's read bandwidth.
//
// Measures (1) the streaming read bandwidth of this machine with the engine's
// thread pool and (2) the decode step of a model too large for the caches: the
// bytes each step must read (the weights it touches, routed experts only, plus the
// KV entries attention visits) over the step's time, as a fraction of (1).
//
// On a shared host the two do not suffer alike from other load: a decode step makes
// about a hundred parallel_for calls (one per matmul, split into per-thread shares), each of
// which waits for its slowest thread, while a bandwidth run is one call. So a step
// during which a thread of ours was preempted reads as slow memory when it was a
// busy CPU. Every sample (bandwidth run or decode step) therefore records the CPU
// share the process got (and its context switches and page faults); only samples
// with a full share count, both sides use the same statistic (the median), and the
// run says how many samples and rounds it kept. The host's bandwidth also drifts
// within a second, so each step comes right after a bandwidth run of its own. A
// round with fewer than half its samples of either kind kept is left out; with too
// few rounds left the run fails (exit 2) rather than report a figure of the load.
//
// Between the two, a third reference: the step's own matrices read in its order, one
// pool call each, with no arithmetic (roofline::read_regions). Its rate over the
// streaming rate is what the read pattern costs; the step's rate over it is what the
// GEMV kernel and the rest of the step cost.
//
//   ekva_bench_decode -m DIR [--prompt 128 --rounds 10 --steps 12] [--json-out FILE]
#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/cpu_backend.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "roofline/ceilings.h"
#include "roofline/report.h"

using ekva::load_average;
using ekva::median;

int main(int argc, char** argv) {
  CLI::App app{"EKVA CPU decode benchmark: bytes read per step against measured read bandwidth"};
  std::string model_dir, json_out, commit = "unknown";
  int prompt_len = 128, steps = 12, rounds = 10, threads = 0, min_rounds = 3;
  double bandwidth_gib = 0.5, min_cpu_share = 0.85;
  app.add_option("-m,--model", model_dir, "Model directory (larger than the last-level cache)")
      ->required();
  app.add_option("--prompt", prompt_len, "Prompt tokens before decoding")
      ->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "Decode steps per round, each after one bandwidth run")
      ->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "Rounds of interleaved bandwidth runs and decode steps")
      ->check(CLI::PositiveNumber);
  app.add_option("--bandwidth-gib", bandwidth_gib,
                 "Buffer for the bandwidth runs (GiB; many times the last-level cache)")
      ->capture_default_str();
  app.add_option("-t,--threads", threads, "Threads (0 = one per core)");
  app.add_option("--min-cpu-share", min_cpu_share,
                 "A sample counts only if the process got this share of its threads' CPU time")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--min-rounds", min_rounds, "Fail unless this many rounds were undisturbed")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--commit", commit, "Commit recorded in the JSON");
  app.add_option("--json-out", json_out, "Write the figures as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    ekva::CpuBackend backend(threads);
    ekva::ThreadPool& pool = backend.pool();
    const auto bandwidth_bytes = static_cast<size_t>(bandwidth_gib * (1 << 30));

    const auto model = ekva::Model::load(model_dir);
    const auto& c = model->config();
    fmt::print("model            {} ({:.1f} MB of weights, {:.1f} MB active per token)\n",
               c.arch_name, static_cast<double>(model->tensors().total_bytes()) / 1e6,
               static_cast<double>(model->active_weight_bytes_per_token()) / 1e6);

    const int total_steps = rounds * steps;
    ekva::FullKvCache cache(kv_cache_shape(c), prompt_len + total_steps + 1);
    std::mt19937 rng(1);
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
    for (auto& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));
    std::vector<float> logits;
    const auto t0 = std::chrono::steady_clock::now();
    model->forward(prompt, cache, logits, false, backend);
    ekva::Activations act(c, backend, {.max_sequences = 1, .max_tokens = 1});
    const double prefill_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("prefill          {} tokens in {:.3f} s ({:.1f} tok/s)\n", prompt_len, prefill_s,
               prompt_len / prefill_s);

    // Rounds of interleaved (bandwidth run, decode step) pairs: each round's decode rate
    // is compared with the bandwidth measured around it, and the rounds' median is
    // reported. The probe's buffer is allocated and touched once, so no run pays page
    // faults.
    const std::string load_before = load_average();
    ekva::ReadBandwidthProbe probe(pool, bandwidth_bytes);
    probe.run();  // warm-up
    // The decode step's read pattern without its arithmetic: the matrices a step reads,
    // in its order, one pool call each (two experts per layer, rotating).
    const auto& w = model->weights();
    const auto step_regions = [&](int first_expert) {
      std::vector<ekva::MemoryRegion> regions;
      const auto add = [&](const ekva::WeightMatrix& m) {
        regions.push_back({m.data, m.nbytes()});
      };
      for (const auto& layer : w.layers) {
        for (const auto* m : {&layer.q, &layer.k, &layer.v, &layer.o}) add(*m);
        if (layer.mlp) {
          for (const auto* m : {&layer.mlp->gate, &layer.mlp->up, &layer.mlp->down}) add(*m);
          continue;
        }
        add(layer.router);
        const auto E = static_cast<int>(layer.experts.size());
        for (int k = 0; k < c.router.top_k; ++k) {
          const auto& e = layer.experts[static_cast<size_t>((first_expert + k) % E)];
          for (const auto* m : {&e.gate, &e.up, &e.down}) add(*m);
        }
      }
      add(w.lm_head);
      return regions;
    };
    ekva::IntervalMeter meter(pool.size());
    const auto undisturbed = [&](const ekva::IntervalUsage& u) {
      return u.cpu_share >= min_cpu_share;
    };
    const auto usage_json = [](double gb_per_s, const ekva::IntervalUsage& u) {
      return nlohmann::json{{"gb_per_s", gb_per_s},
                            {"cpu_share", u.cpu_share},
                            {"involuntary_switches", u.involuntary_switches},
                            {"minor_faults", u.minor_faults},
                            {"major_faults", u.major_faults}};
    };
    nlohmann::json rounds_json = nlohmann::json::array();
    std::vector<double> fractions, kept_step_s, kept_gbs, ceilings, all_samples_fractions;
    std::vector<double> pattern_fractions, pattern_over_stream;
    size_t bytes_total = 0, weight_total = 0, kv_total = 0;
    int kept_bw_samples = 0, kept_step_samples = 0;
    long major_faults = 0;
    for (int r = 0; r < rounds; ++r) {
      nlohmann::json bw_json = nlohmann::json::array(), steps_json = nlohmann::json::array();
      std::vector<double> bw_all, bw_kept, step_all, step_kept, step_kept_s, pattern_kept;
      nlohmann::json pattern_json = nlohmann::json::array();
      // Each decode step right after a bandwidth run: the host's bandwidth drifts over
      // fractions of a second, and a burst of runs before a burst of steps compared the
      // steps with a bandwidth that was no longer there.
      for (int s = 0; s < steps; ++s) {
        const auto run = probe.run();
        bw_all.push_back(run.gb_per_s);
        if (undisturbed(run.usage)) bw_kept.push_back(run.gb_per_s);
        major_faults += run.usage.major_faults;
        bw_json.push_back(usage_json(run.gb_per_s, run.usage));

        const auto pattern = ekva::read_regions(pool, step_regions(r * steps + s));
        if (undisturbed(pattern.usage)) pattern_kept.push_back(pattern.gb_per_s);
        pattern_json.push_back(usage_json(pattern.gb_per_s, pattern.usage));

        const auto next =
            static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        const ekva::SequenceStep step{&cache, {&next, 1}};
        meter.start();
        const auto counters = model->forward({&step, 1}, act, backend);
        const auto u = meter.stop();
        logits.assign(act.host_logits(), act.host_logits() + c.vocab_size);
        const size_t bytes = counters.weight_bytes + counters.kv_bytes;
        const double gbs = static_cast<double>(bytes) / u.wall_s / 1e9;
        step_all.push_back(gbs);
        if (undisturbed(u)) {
          step_kept.push_back(gbs);
          step_kept_s.push_back(u.wall_s);
        }
        major_faults += u.major_faults;
        steps_json.push_back(usage_json(gbs, u));
        bytes_total += bytes;
        weight_total += counters.weight_bytes;
        kv_total += counters.kv_bytes;
      }
      // The all-samples fraction, as the benchmark computed it before (median step over
      // the best bandwidth run), to show what the interference did to this round.
      all_samples_fractions.push_back(median(step_all) /
                                      *std::max_element(bw_all.begin(), bw_all.end()));
      const bool kept =
          2 * bw_kept.size() >= bw_all.size() && 2 * step_kept.size() >= step_all.size();
      nlohmann::json rj = {{"undisturbed_bandwidth_runs", bw_kept.size()},
                           {"undisturbed_steps", step_kept.size()},
                           {"kept", kept},
                           {"bandwidth_runs", bw_json},
                           {"pattern_reads", pattern_json},
                           {"steps", steps_json}};
      if (!kept) {
        fmt::print(
            "round {:2d}         disturbed: {}/{} bandwidth runs and {}/{} steps undisturbed "
            "(left out)\n",
            r, bw_kept.size(), bw_all.size(), step_kept.size(), step_all.size());
        rounds_json.push_back(rj);
        continue;
      }
      const double ceiling = median(bw_kept);
      const double gbs = median(step_kept);
      const double fraction = gbs / ceiling;
      fmt::print(
          "round {:2d}         read {:6.2f} GB/s | decode {:6.2f} GB/s = {:5.1f}%  ({}/{} runs, "
          "{}/{} steps undisturbed)\n",
          r, ceiling, gbs, 100.0 * fraction, bw_kept.size(), bw_all.size(), step_kept.size(),
          step_all.size());
      fractions.push_back(fraction);
      kept_gbs.push_back(gbs);
      ceilings.push_back(ceiling);
      kept_step_s.insert(kept_step_s.end(), step_kept_s.begin(), step_kept_s.end());
      kept_bw_samples += static_cast<int>(bw_kept.size());
      kept_step_samples += static_cast<int>(step_kept.size());
      rj["read_ceiling_gb_per_s"] = ceiling;
      rj["read_median_gb_per_s"] = ceiling;
      rj["read_best_gb_per_s"] = *std::max_element(bw_kept.begin(), bw_kept.end());
      rj["decode_read_gb_per_s_median"] = gbs;
      rj["fraction"] = fraction;
      if (!pattern_kept.empty()) {
        rj["pattern_read_gb_per_s_median"] = median(pattern_kept);
        pattern_fractions.push_back(gbs / median(pattern_kept));
        pattern_over_stream.push_back(median(pattern_kept) / ceiling);
      }
      rounds_json.push_back(rj);
    }
    fmt::print("read per step    {:.1f} MB ({:.1f} weights + {:.2f} KV); {} major page faults\n",
               static_cast<double>(bytes_total) / total_steps / 1e6,
               static_cast<double>(weight_total) / total_steps / 1e6,
               static_cast<double>(kv_total) / total_steps / 1e6, major_faults);
    fmt::print(
        "all samples      {:.1f}% median over rounds (undisturbed or not, median step over "
        "best run)\n",
        100.0 * median(all_samples_fractions));
    const bool enough = static_cast<int>(fractions.size()) >= min_rounds;
    nlohmann::json summary = {{"prompt_tokens", prompt_len},
                              {"rounds", rounds},
                              {"steps_per_round", steps},
                              {"bytes_per_step", static_cast<double>(bytes_total) / total_steps},
                              {"rounds_kept", fractions.size()},
                              {"undisturbed_steps", kept_step_samples},
                              {"undisturbed_bandwidth_runs", kept_bw_samples},
                              {"fraction_all_samples", median(all_samples_fractions)}};
    if (enough) {
      const double med_s = median(kept_step_s);
      const double fraction = median(fractions);
      const auto [fmin, fmax] = std::minmax_element(fractions.begin(), fractions.end());
      fmt::print("decode step      {:.2f} ms median ({:.1f} tok/s) over {} undisturbed steps\n",
                 med_s * 1e3, 1.0 / med_s, kept_step_samples);
      fmt::print(
          "decode read rate {:.2f} GB/s median = {:.1f}% of the measured read bandwidth "
          "(median over {} of {} rounds, range {:.1f}-{:.1f}%; target 70%)\n",
          median(kept_gbs), 100.0 * fraction, fractions.size(), rounds, 100.0 * *fmin,
          100.0 * *fmax);
      summary["step_ms_median"] = med_s * 1e3;
      summary["tokens_per_second"] = 1.0 / med_s;
      summary["read_gb_per_s_median"] = median(kept_gbs);
      summary["read_ceiling_gb_per_s_median"] = median(ceilings);
      summary["fraction_of_read_bandwidth"] = fraction;
      summary["fraction_range"] = {*fmin, *fmax};
      if (!pattern_fractions.empty()) {
        summary["fraction_of_pattern_read"] = median(pattern_fractions);
        summary["pattern_read_over_stream_read"] = median(pattern_over_stream);
        fmt::print(
            "read pattern     the step's matrices read without arithmetic: {:.1f}% of the "
            "streaming rate; the step reaches {:.1f}% of that (medians over rounds)\n",
            100.0 * median(pattern_over_stream), 100.0 * median(pattern_fractions));
      }
    } else {
      summary["error"] = fmt::format("only {} of {} rounds were undisturbed (need {})",
                                     fractions.size(), rounds, min_rounds);
    }

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
      j["decode"] = summary;
      j["load_average_before_after"] = {load_before, load_average()};
      j["method"] = {
          {"bandwidth_runs_per_round", steps},
          {"interleaved", "one bandwidth run right before each decode step"},
          {"bandwidth_bytes", probe.bytes()},
          {"min_cpu_share", min_cpu_share},
          {"sample_kept_if", "cpu_share >= min_cpu_share (process CPU time / (wall x threads))"},
          {"round_kept_if", "at least half its bandwidth runs and half its steps kept"},
          {"fraction", "per round, median kept step rate / median kept bandwidth run"}};
      j["rounds"] = rounds_json;
      j["prefill"] = {{"tokens", prompt_len}, {"seconds", prefill_s}};
      std::ofstream(json_out) << j.dump(2) << "\n";
      fmt::print("wrote {}\n", json_out);
    }
    if (!enough) {
      fmt::print(stderr,
                 "ekva_bench_decode: error: only {} of {} rounds were undisturbed (need {}): other "
                 "processes took this machine's CPUs; rerun when it is idle\n",
                 fractions.size(), rounds, min_rounds);
      return 2;
    }
  } catch (const ekva::Error& e) {
    fmt::print(stderr, "ekva_bench_decode: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
