// CPU decode attention over the ragged paged store against the machine's read
// bandwidth. A batch of sequences, each with per-(kv-head, expert tag) segments of
// uneven length in 32-entry blocks (as the compressed cache leaves them), is
// attended by one query token per sequence; the K/V bytes read per step over the
// step's time are compared with a read-bandwidth burst measured just before, in
// rounds (the host's bandwidth drifts).
//
//   ekva_bench_attention [--batch 4 --entries 16384 --kv-heads 8 --group 4 --head-dim 128]
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
#include "kv/paged_store.h"
#include "ops/ops.h"
#include "roofline/ceilings.h"
#include "roofline/report.h"

using ekva::median;

int main(int argc, char** argv) {
  CLI::App app{"EKVA CPU ragged decode attention against measured read bandwidth"};
  int batch = 4, kv_heads = 8, group = 4, head_dim = 128, experts = 8, rounds = 8, steps = 10;
  int64_t entries = 16384;  // per (sequence, kv-head), before the split into segments
  std::string json_out, commit = "unknown";
  app.add_option("--batch", batch, "Sequences");
  app.add_option("--entries", entries, "Mean KV entries per (sequence, kv-head)");
  app.add_option("--kv-heads", kv_heads, "KV heads");
  app.add_option("--group", group, "Query heads per kv-head");
  app.add_option("--head-dim", head_dim, "Head dimension");
  app.add_option("--rounds", rounds, "Rounds of (bandwidth burst, attention steps)");
  app.add_option("--steps", steps, "Attention steps per round");
  app.add_option("--commit", commit, "Commit recorded in the JSON");
  app.add_option("--json-out", json_out, "Write the figures as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    ekva::CpuBackend backend;
    ekva::ThreadPool& pool = backend.pool();
    ekva::StoreConfig sc;
    sc.shape = {1, kv_heads, head_dim};
    sc.n_experts = experts;
    sc.granularity = ekva::Granularity::kPerHeadExpert;
    sc.max_context = entries * 2 + 1;
    sc.kv_dtype = ekva::DType::kF32;  // the results say dtype f32
    ekva::PagedKvStore store(sc);
    std::mt19937_64 rng(1);
    std::normal_distribution<float> normal(0.f, 1.f);
    // Sequence lengths vary 0.5x..1.5x; tags follow a skewed router (expert e with
    // weight 1/(e+1)), so segment lengths are ragged.
    std::vector<int> seqs;
    std::vector<int64_t> lengths;
    std::discrete_distribution<int> tag_dist({1.0, 0.5, 0.33, 0.25, 0.2, 0.17, 0.14, 0.125});
    const int64_t chunk = 1024;
    std::vector<float> k(static_cast<size_t>(chunk * kv_heads * head_dim));
    std::vector<float> v(k.size());
    std::vector<int32_t> pos(static_cast<size_t>(chunk)), tags(static_cast<size_t>(chunk));
    for (int s = 0; s < batch; ++s) {
      const int seq = store.add_sequence();
      seqs.push_back(seq);
      const auto n =
          static_cast<int64_t>(entries * (0.5 + static_cast<double>(rng() % 1000) / 1000.0));
      lengths.push_back(n);
      for (int64_t p0 = 0; p0 < n; p0 += chunk) {
        const int64_t m = std::min(chunk, n - p0);
        pos.resize(static_cast<size_t>(m));
        tags.resize(static_cast<size_t>(m));
        for (auto& x : k) x = normal(rng);
        for (auto& x : v) x = normal(rng);
        for (int64_t i = 0; i < m; ++i) {
          pos[static_cast<size_t>(i)] = static_cast<int32_t>(p0 + i);
          tags[static_cast<size_t>(i)] = tag_dist(rng);
        }
        store.cache(seq).append(0, pos, k.data(), v.data());
        store.cache(seq).tag(0, pos, tags.data());
      }
    }
    size_t kv_bytes = 0;
    std::vector<std::vector<std::vector<ekva::KvChunk>>> chunks(static_cast<size_t>(batch));
    size_t n_chunks = 0;
    for (int s = 0; s < batch; ++s) {
      chunks[static_cast<size_t>(s)].resize(static_cast<size_t>(kv_heads));
      for (int h = 0; h < kv_heads; ++h) {
        auto& list = chunks[static_cast<size_t>(s)][static_cast<size_t>(h)];
        store.cache(seqs[static_cast<size_t>(s)]).view(0, h, list);
        n_chunks += list.size();
        for (const auto& c : list) kv_bytes += static_cast<size_t>(c.n) * c.entry_bytes(head_dim);
      }
    }
    const int n_heads = kv_heads * group;
    std::vector<float> q(static_cast<size_t>(n_heads * head_dim)), out(q.size());
    for (auto& x : q) x = normal(rng) * 0.1f;
    fmt::print(
        "ragged store     {} sequences, {} kv-heads x {} query heads, dim {}, {} chunks, {:.1f} MB "
        "of K/V\n",
        batch, kv_heads, group, head_dim, n_chunks, static_cast<double>(kv_bytes) / 1e6);

    const auto step = [&] {
      for (int s = 0; s < batch; ++s) {
        const int32_t qp = static_cast<int32_t>(lengths[static_cast<size_t>(s)]);
        ekva::AttentionParams p{
            1, n_heads,  kv_heads, head_dim,  1.f / std::sqrt(static_cast<float>(head_dim)),
            0, q.data(), &qp,      out.data()};
        backend.attention(p, chunks[static_cast<size_t>(s)]);
      }
    };
    step();  // warm-up
    std::vector<double> fractions, rates, ceilings;
    nlohmann::json rounds_json = nlohmann::json::array();
    for (int r = 0; r < rounds; ++r) {
      const auto bw = ekva::measure_read_bandwidth(pool, size_t{1} << 30, 5);
      std::vector<double> step_rates;
      for (int i = 0; i < steps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        step_rates.push_back(static_cast<double>(kv_bytes) / dt / 1e9);
      }
      const double rate = median(step_rates);
      const double fraction = rate / bw.best_gb_per_s;
      fmt::print(
          "round {:2d}         read ceiling {:6.2f} GB/s | attention {:6.2f} GB/s = {:5.1f}%\n", r,
          bw.best_gb_per_s, rate, 100 * fraction);
      fractions.push_back(fraction);
      rates.push_back(rate);
      ceilings.push_back(bw.best_gb_per_s);
      rounds_json.push_back({{"read_ceiling_gb_per_s", bw.best_gb_per_s},
                             {"attention_gb_per_s", rate},
                             {"fraction", fraction}});
    }
    const double fraction = median(fractions);
    fmt::print(
        "attention        {:.2f} GB/s median = {:.1f}% of the measured read bandwidth (target "
        "70%)\n",
        median(rates), 100 * fraction);
    if (!json_out.empty()) {
      nlohmann::json j = {{"benchmark", "cpu_ragged_decode_attention_vs_read_bandwidth"},
                          {"commit", commit},
                          {"date", ekva::utc_timestamp()},
                          {"device", ekva::cpu_description(pool.size())},
                          {"problem",
                           {{"batch", batch},
                            {"kv_heads", kv_heads},
                            {"group", group},
                            {"head_dim", head_dim},
                            {"mean_entries_per_seq_head", entries},
                            {"chunks", n_chunks},
                            {"kv_bytes", kv_bytes},
                            {"dtype", "f32"}}},
                          {"attention_gb_per_s_median", median(rates)},
                          {"read_ceiling_gb_per_s_median", median(ceilings)},
                          {"fraction_of_read_bandwidth", fraction},
                          {"rounds", rounds_json}};
      std::ofstream(json_out) << j.dump(2) << "\n";
      fmt::print("wrote {}\n", json_out);
    }
  } catch (const ekva::Error& e) {
    fmt::print(stderr, "ekva_bench_attention: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
