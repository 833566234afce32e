// CPU ragged decode attention through the plan, against the read bandwidth measured
// in the same run.
//
// A case is one layer of a decode step: a batch of sequences in one paged store (bf16
// K/V, 32-entry blocks), one query token per sequence, 32 query heads over 8 kv-heads
// of dim 128 by default, attended with Backend::attention and a plan from
// plan_attention, the chunk lists taken from the store's kept view. Cases:
//   - dense: every (sequence, kv-head) keeps its whole context;
//   - zipf: tokens tagged by a Zipf(1.1) router over 8 experts (expert ranks shuffled
//     per sequence), sequence lengths 0.5x-1.5x the context; then per (sequence,
//     kv-head) two expert segments evicted whole (empty) and the others kept at
//     50-100%, so the largest segments (a third of the context) stay and the lists
//     are ragged, as the compressed cache leaves them.
// Every case reads well beyond the last-level cache by default. The same entries in an
// f32 store give the f32 time per step for comparison.
//
// Method (as bench_decode, with its helpers): every step comes right after a
// streaming read-bandwidth run of its own (which also leaves the caches cold); every
// sample records the CPU share the process got, and only samples with a full share
// count; a round counts when at least half its samples of each kind do. Per case:
// the median step time of the kept steps and the range of the rounds' medians, the
// retained K/V bytes it reads, GB/s, and the fraction of the median kept bandwidth
// run (per round, then the median over rounds). Planning and refilling the chunk
// lists from the view are timed apart: a decode step does both once per layer.
//
//   ekva_bench_attention [--quick] [--case dense:4x16384 ...] [--rounds 8 --steps 10]
//                        [--json-out FILE --commit SHA]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <random>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/cpu_backend.h"
#include "kv/paged_store.h"
#include "ops/attention_plan.h"
#include "ops/ops.h"
#include "roofline/ceilings.h"
#include "roofline/report.h"

using ekva::median;

namespace {

struct CaseSpec {
  std::string kind;  // "dense" or "zipf"
  int batch = 1;
  int64_t context = 0;  // tokens per sequence (zipf: the mean)

  std::string name() const {
    return context % 1024 == 0 ? fmt::format("{}_{}x{}k", kind, batch, context / 1024)
                               : fmt::format("{}_{}x{}", kind, batch, context);
  }
};

// "zipf:4x16384"
CaseSpec parse_case(const std::string& s) {
  const size_t colon = s.find(':'), x = s.find('x', colon + 1);
  CaseSpec c;
  if (colon != std::string::npos && x != std::string::npos) {
    c.kind = s.substr(0, colon);
    c.batch = std::atoi(s.substr(colon + 1, x - colon - 1).c_str());
    c.context = std::atoll(s.substr(x + 1).c_str());
  }
  if ((c.kind != "dense" && c.kind != "zipf") || c.batch <= 0 || c.context <= 0)
    ekva::fail("bench: bad case '{}' (want dense|zipf:BATCHxCONTEXT, e.g. zipf:4x16384)", s);
  return c;
}

struct Shape {
  int kv_heads = 8, group = 4, head_dim = 128, experts = 8, block_size = 32;
};

// Values in [-1, 1) from a counter (cheap next to a normal distribution; the data only
// have to be non-trivial).
float noise(uint64_t i) {
  i += 0x9e3779b97f4a7c15ull;
  i = (i ^ (i >> 30)) * 0xbf58476d1ce4e5b9ull;
  i = (i ^ (i >> 27)) * 0x94d049bb133111ebull;
  i ^= i >> 31;
  return static_cast<float>(i >> 40) / static_cast<float>(1 << 23) - 1.f;
}

// What a built store holds, for the report.
struct Layout {
  std::vector<int64_t> lengths;       // [batch] positions per sequence (the query's position)
  std::vector<int64_t> list_entries;  // [batch * kv_heads]
  int64_t segments = 0, empty_segments = 0, largest_segment = 0;
};

// The case's store, deterministic for the spec: the bf16 and f32 stores of one case
// hold the same entries.
std::unique_ptr<ekva::PagedKvStore> build_store(const CaseSpec& c, const Shape& sh,
                                                ekva::DType dtype, Layout& layout) {
  std::mt19937_64 rng(static_cast<uint64_t>(c.batch) * 1000003u + static_cast<uint64_t>(c.context));
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  const bool zipf = c.kind == "zipf";
  layout = {};
  for (int s = 0; s < c.batch; ++s)
    layout.lengths.push_back(
        zipf ? std::max<int64_t>(1, std::llround(static_cast<double>(c.context) * (0.5 + u01(rng))))
             : c.context);
  ekva::StoreConfig sc;
  sc.shape = {1, sh.kv_heads, sh.head_dim};
  sc.n_experts = sh.experts;
  sc.block_size = sh.block_size;
  sc.granularity = ekva::Granularity::kPerHeadExpert;
  sc.max_context = *std::max_element(layout.lengths.begin(), layout.lengths.end()) + 1;
  sc.kv_dtype = dtype;
  auto store = std::make_unique<ekva::PagedKvStore>(sc);

  const int64_t kChunk = 1024;
  const size_t row = static_cast<size_t>(sh.kv_heads) * static_cast<size_t>(sh.head_dim);
  std::vector<float> k(static_cast<size_t>(kChunk) * row), v(k.size());
  std::vector<int32_t> pos, tags;
  for (int s = 0; s < c.batch; ++s) {
    const int seq = store->add_sequence();
    // Zipf(1.1) router: expert e has rank[e], weight 1 / (rank + 1)^1.1.
    std::vector<int> rank(static_cast<size_t>(sh.experts));
    for (int e = 0; e < sh.experts; ++e) rank[static_cast<size_t>(e)] = e;
    std::shuffle(rank.begin(), rank.end(), rng);
    std::vector<double> w;
    for (int e = 0; e < sh.experts; ++e)
      w.push_back(1.0 / std::pow(rank[static_cast<size_t>(e)] + 1.0, 1.1));
    std::discrete_distribution<int> router(w.begin(), w.end());
    const int64_t n = layout.lengths[static_cast<size_t>(s)];
    for (int64_t p0 = 0; p0 < n; p0 += kChunk) {
      const int64_t m = std::min(kChunk, n - p0);
      pos.resize(static_cast<size_t>(m));
      tags.resize(static_cast<size_t>(m));
      const size_t base = (static_cast<size_t>(s) << 40) + static_cast<size_t>(p0) * row;
      for (size_t i = 0; i < static_cast<size_t>(m) * row; ++i) {
        k[i] = noise(2 * (base + i));
        v[i] = noise(2 * (base + i) + 1);
      }
      for (int64_t i = 0; i < m; ++i) {
        pos[static_cast<size_t>(i)] = static_cast<int32_t>(p0 + i);
        tags[static_cast<size_t>(i)] = router(rng);
      }
      store->cache(seq).append(0, pos, k.data(), v.data());
      store->cache(seq).tag(0, pos, tags.data());
    }
    std::vector<ekva::SegmentInfo> infos;
    store->segments(seq, 0, infos);
    if (zipf) {
      // Per kv-head: two experts' segments evicted whole, the others kept at 50-100%.
      for (int h = 0; h < sh.kv_heads; ++h) {
        std::vector<int> order(static_cast<size_t>(sh.experts));
        for (int e = 0; e < sh.experts; ++e) order[static_cast<size_t>(e)] = e;
        std::shuffle(order.begin(), order.end(), rng);
        for (int i = 0; i < sh.experts; ++i) {
          const int expert = order[static_cast<size_t>(i)];
          const double share = i < 2 ? 0.0 : 0.5 + 0.5 * u01(rng);
          const int id = store->segment_id({0, h, expert});
          const auto it = std::find_if(infos.begin(), infos.end(),
                                       [&](const ekva::SegmentInfo& x) { return x.id == id; });
          if (it == infos.end()) continue;
          std::vector<int32_t> keep;
          for (int64_t e = 0; e < it->n_entries; ++e)
            if (u01(rng) < share) keep.push_back(static_cast<int32_t>(e));
          store->keep(seq, 0, id, keep);
        }
      }
      infos.clear();
      store->segments(seq, 0, infos);
    }
    // Segments of the routed experts (the untagged kNoExpert one is never used here).
    const int64_t per_seq = static_cast<int64_t>(sh.kv_heads) * sh.experts;
    layout.segments += per_seq;
    layout.empty_segments += per_seq - static_cast<int64_t>(infos.size());
    for (const auto& info : infos)
      layout.largest_segment = std::max(layout.largest_segment, info.n_entries);
  }
  return store;
}

// Chunk lists of every (sequence, kv-head) from the store's kept view.
void fill_lists(ekva::PagedKvStore& store, int batch, int kv_heads,
                std::vector<std::vector<ekva::KvChunk>>& lists) {
  lists.resize(static_cast<size_t>(batch * kv_heads));
  for (int s = 0; s < batch; ++s)
    for (int h = 0; h < kv_heads; ++h) {
      auto& list = lists[static_cast<size_t>(s * kv_heads + h)];
      list.clear();
      store.cache(s).view(0, h, list);
    }
}

size_t kv_bytes_of(const std::vector<std::vector<ekva::KvChunk>>& lists, int head_dim) {
  size_t bytes = 0;
  for (const auto& list : lists)
    for (const auto& c : list) bytes += static_cast<size_t>(c.n) * c.entry_bytes(head_dim);
  return bytes;
}

// Median microseconds of fn over `n` calls.
template <typename Fn>
double median_us(int n, Fn&& fn) {
  std::vector<double> us;
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(us);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"EKVA CPU ragged decode attention through the plan against measured read bandwidth"};
  Shape sh;
  int rounds = 8, steps = 10, threads = 0, min_rounds = 3;
  double bandwidth_gib = 0.5, min_cpu_share = 0.85;
  bool quick = false;
  std::vector<std::string> case_args;
  std::string json_out, commit = "unknown";
  app.add_option("--case", case_args,
                 "KIND:BATCHxCONTEXT, KIND dense or zipf (repeatable; default: the full set)");
  app.add_flag("--quick", quick, "A tiny smoke run (small cases, 2 rounds of 3 steps)");
  app.add_option("--kv-heads", sh.kv_heads, "KV heads")->capture_default_str();
  app.add_option("--group", sh.group, "Query heads per kv-head")->capture_default_str();
  app.add_option("--head-dim", sh.head_dim, "Head dimension")->capture_default_str();
  app.add_option("--rounds", rounds, "Rounds per case")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "Steps per round, each after one bandwidth run")
      ->check(CLI::PositiveNumber);
  app.add_option("--bandwidth-gib", bandwidth_gib, "Buffer of the bandwidth runs (GiB)")
      ->capture_default_str();
  app.add_option("-t,--threads", threads, "Threads (0 = one per core)");
  app.add_option("--min-cpu-share", min_cpu_share,
                 "A sample counts only if the process got this share of its threads' CPU time")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--min-rounds", min_rounds, "A case fails unless this many rounds were kept")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--commit", commit, "Commit recorded in the JSON");
  app.add_option("--json-out", json_out, "Write the figures as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    std::vector<CaseSpec> cases;
    for (const std::string& s : case_args) cases.push_back(parse_case(s));
    if (quick) {
      if (cases.empty()) cases = {{"dense", 2, 1024}, {"zipf", 2, 2048}};
      if (app.count("--rounds") == 0) rounds = 2;
      if (app.count("--steps") == 0) steps = 3;
      if (app.count("--bandwidth-gib") == 0) bandwidth_gib = 1.0 / 16;
      if (app.count("--min-cpu-share") == 0) min_cpu_share = 0;  // a smoke run counts all
      if (app.count("--min-rounds") == 0) min_rounds = 1;
    }
    if (cases.empty()) {
      // bf16 K/V of 8 kv-heads x dim 128 is 4 KiB per token: 128-256 MB per case.
      cases = {{"dense", 1, 32768}, {"dense", 4, 16384}, {"dense", 16, 4096}, {"dense", 32, 2048},
               {"zipf", 4, 32768},  {"zipf", 16, 8192},  {"zipf", 64, 2048}};
    }

    ekva::CpuBackend backend(threads);
    ekva::ThreadPool& pool = backend.pool();
    const std::string load_before = ekva::load_average();
    ekva::ReadBandwidthProbe probe(pool, static_cast<size_t>(bandwidth_gib * (1 << 30)));
    probe.run();  // warm-up
    ekva::IntervalMeter meter(pool.size());
    const auto undisturbed = [&](const ekva::IntervalUsage& u) {
      return u.cpu_share >= min_cpu_share;
    };
    const int n_heads = sh.kv_heads * sh.group;
    fmt::print("shape            {} query heads / {} kv-heads, dim {}, blocks of {}, {} threads\n",
               n_heads, sh.kv_heads, sh.head_dim, sh.block_size, pool.size());

    nlohmann::json cases_json = nlohmann::json::array();
    bool all_ok = true;
    for (const CaseSpec& c : cases) {
      Layout layout;
      const auto bf16 = build_store(c, sh, ekva::DType::kBF16, layout);
      const auto f32 = build_store(c, sh, ekva::DType::kF32, layout);
      std::vector<std::vector<ekva::KvChunk>> lists_bf16, lists_f32;
      fill_lists(*bf16, c.batch, sh.kv_heads, lists_bf16);
      fill_lists(*f32, c.batch, sh.kv_heads, lists_f32);
      const size_t bytes_bf16 = kv_bytes_of(lists_bf16, sh.head_dim);
      const size_t bytes_f32 = kv_bytes_of(lists_f32, sh.head_dim);
      size_t n_chunks = 0;
      for (const auto& l : lists_bf16) n_chunks += l.size();
      for (const auto& list : lists_bf16) {
        int64_t n = 0;
        for (const auto& chunk : list) n += chunk.n;
        layout.list_entries.push_back(n);
      }
      std::vector<double> list_entries(layout.list_entries.begin(), layout.list_entries.end());
      std::sort(list_entries.begin(), list_entries.end());

      // One query per sequence at its next position.
      std::vector<float> q(static_cast<size_t>(c.batch * n_heads * sh.head_dim));
      std::vector<float> out(q.size());
      for (size_t i = 0; i < q.size(); ++i) q[i] = 0.5f * noise(i + (uint64_t{7} << 50));
      std::vector<int32_t> q_pos, q_seq;
      for (int s = 0; s < c.batch; ++s) {
        q_pos.push_back(static_cast<int32_t>(layout.lengths[static_cast<size_t>(s)]));
        q_seq.push_back(s);
      }
      ekva::AttentionParams p;
      p.n_queries = c.batch;
      p.n_heads = n_heads;
      p.n_kv_heads = sh.kv_heads;
      p.head_dim = sh.head_dim;
      p.scale = 1.f / std::sqrt(static_cast<float>(sh.head_dim));
      p.q = q.data();
      p.q_positions = q_pos.data();
      p.out = out.data();
      p.q_seq = q_seq.data();
      p.n_seqs = c.batch;
      const ekva::AttentionPlanOptions options = backend.attention_plan_options();
      ekva::AttentionPlan plan;
      const double plan_us =
          median_us(9, [&] { ekva::plan_attention(p, lists_bf16, options, plan); });
      const double view_us =
          median_us(9, [&] { fill_lists(*bf16, c.batch, sh.kv_heads, lists_bf16); });
      const auto step = [&](const std::vector<std::vector<ekva::KvChunk>>& lists) {
        backend.attention(p, lists, plan);
      };
      step(lists_bf16);  // warm-up: the backend's workspace grows to the case
      step(lists_f32);
      fmt::print(
          "{:<16} {} sequences, {:.1f} MB bf16 K/V in {} chunks; entries per list {:.0f}..{:.0f} "
          "(median {:.0f}); {} of {} segments empty, largest {}; plan {} items in {} tasks, "
          "{:.0f} us; view {:.0f} us\n",
          c.name(), c.batch, static_cast<double>(bytes_bf16) / 1e6, n_chunks, list_entries.front(),
          list_entries.back(), median(list_entries), layout.empty_segments, layout.segments,
          layout.largest_segment, plan.items.size(), plan.n_tasks(), plan_us, view_us);

      nlohmann::json rounds_json = nlohmann::json::array();
      std::vector<double> fr16, fr32, step16_med, step32_med, bw_med, kept16_us, kept32_us;
      for (int r = 0; r < rounds; ++r) {
        std::vector<double> bw_all, bw_kept, s16_us, s32_us;
        int n16 = 0, n32 = 0;
        for (int i = 0; i < steps; ++i) {
          const auto run = probe.run();
          bw_all.push_back(run.gb_per_s);
          if (undisturbed(run.usage)) bw_kept.push_back(run.gb_per_s);
          meter.start();
          step(lists_bf16);
          const auto u16 = meter.stop();
          ++n16;
          if (undisturbed(u16)) s16_us.push_back(u16.wall_s * 1e6);
          const auto run2 = probe.run();  // the f32 step after a bandwidth run of its own
          bw_all.push_back(run2.gb_per_s);
          if (undisturbed(run2.usage)) bw_kept.push_back(run2.gb_per_s);
          meter.start();
          step(lists_f32);
          const auto u32 = meter.stop();
          ++n32;
          if (undisturbed(u32)) s32_us.push_back(u32.wall_s * 1e6);
        }
        const bool kept = 2 * bw_kept.size() >= bw_all.size() && 2 * s16_us.size() >= 1u * n16 &&
                          2 * s32_us.size() >= 1u * n32 && !bw_kept.empty() && !s16_us.empty() &&
                          !s32_us.empty();
        nlohmann::json rj = {{"undisturbed_bandwidth_runs", bw_kept.size()},
                             {"bandwidth_runs", bw_all.size()},
                             {"undisturbed_bf16_steps", s16_us.size()},
                             {"undisturbed_f32_steps", s32_us.size()},
                             {"steps", steps},
                             {"kept", kept}};
        if (!kept) {
          fmt::print("  round {:2d}       disturbed (left out)\n", r);
          rounds_json.push_back(rj);
          continue;
        }
        const double ceiling = median(bw_kept);
        const double us16 = median(s16_us), us32 = median(s32_us);
        const double gbs16 = static_cast<double>(bytes_bf16) / us16 / 1e3;
        const double gbs32 = static_cast<double>(bytes_f32) / us32 / 1e3;
        fmt::print(
            "  round {:2d}       read {:6.2f} GB/s | bf16 {:8.0f} us {:6.2f} GB/s = {:5.1f}% | f32 "
            "{:8.0f} us {:6.2f} GB/s = {:5.1f}%\n",
            r, ceiling, us16, gbs16, 100 * gbs16 / ceiling, us32, gbs32, 100 * gbs32 / ceiling);
        rj["read_ceiling_gb_per_s"] = ceiling;
        rj["bf16_step_us_median"] = us16;
        rj["bf16_gb_per_s"] = gbs16;
        rj["bf16_fraction"] = gbs16 / ceiling;
        rj["f32_step_us_median"] = us32;
        rj["f32_gb_per_s"] = gbs32;
        rj["f32_fraction"] = gbs32 / ceiling;
        rounds_json.push_back(rj);
        fr16.push_back(gbs16 / ceiling);
        fr32.push_back(gbs32 / ceiling);
        step16_med.push_back(us16);
        step32_med.push_back(us32);
        bw_med.push_back(ceiling);
        kept16_us.insert(kept16_us.end(), s16_us.begin(), s16_us.end());
        kept32_us.insert(kept32_us.end(), s32_us.begin(), s32_us.end());
      }

      nlohmann::json cj = {{"name", c.name()},
                           {"kind", c.kind},
                           {"batch", c.batch},
                           {"context", c.context},
                           {"chunks", n_chunks},
                           {"lists",
                            {{"entries_min", list_entries.front()},
                             {"entries_median", median(list_entries)},
                             {"entries_max", list_entries.back()},
                             {"segments", layout.segments},
                             {"empty_segments", layout.empty_segments},
                             {"largest_segment", layout.largest_segment}}},
                           {"plan",
                            {{"items", plan.items.size()},
                             {"tasks", plan.n_tasks()},
                             {"item_entries", plan.item_entries},
                             {"plan_us_median", plan_us}}},
                           {"view_us_median", view_us},
                           {"rounds_kept", fr16.size()},
                           {"rounds", rounds_json}};
      const bool ok = static_cast<int>(fr16.size()) >= min_rounds;
      if (ok) {
        const auto summary = [&](size_t bytes, const std::vector<double>& fractions,
                                 const std::vector<double>& round_us,
                                 const std::vector<double>& kept_us) {
          const double us = median(kept_us);
          const auto [umin, umax] = std::minmax_element(round_us.begin(), round_us.end());
          const auto [fmin, fmax] = std::minmax_element(fractions.begin(), fractions.end());
          return nlohmann::json{{"kv_bytes", bytes},
                                {"step_us_median", us},
                                {"step_us_range", {*umin, *umax}},
                                {"gb_per_s", static_cast<double>(bytes) / us / 1e3},
                                {"fraction_of_read_bw", median(fractions)},
                                {"fraction_range", {*fmin, *fmax}}};
        };
        cj["read_ceiling_gb_per_s_median"] = median(bw_med);
        cj["bf16"] = summary(bytes_bf16, fr16, step16_med, kept16_us);
        cj["f32"] = summary(bytes_f32, fr32, step32_med, kept32_us);
        fmt::print(
            "  {:<14} bf16 {:.0f} us/step (rounds {:.0f}-{:.0f}), {:.2f} GB/s, {:.1f}% of the read "
            "bandwidth (median of rounds; read {:.2f} GB/s); f32 {:.0f} us/step, {:.1f}%\n",
            c.name(), cj["bf16"]["step_us_median"].get<double>(),
            cj["bf16"]["step_us_range"][0].get<double>(),
            cj["bf16"]["step_us_range"][1].get<double>(), cj["bf16"]["gb_per_s"].get<double>(),
            100 * median(fr16), median(bw_med), cj["f32"]["step_us_median"].get<double>(),
            100 * median(fr32));
      } else {
        cj["error"] = fmt::format("only {} of {} rounds were undisturbed (need {})", fr16.size(),
                                  rounds, min_rounds);
        fmt::print("  {:<14} {}\n", c.name(), cj["error"].get<std::string>());
        all_ok = false;
      }
      cases_json.push_back(cj);
    }

    if (!json_out.empty()) {
      nlohmann::json j;
      j["benchmark"] = "cpu_ragged_decode_attention_through_plan_vs_read_bandwidth";
      j["commit"] = commit;
      j["date"] = ekva::utc_timestamp();
      j["device"] = ekva::cpu_description(pool.size());
      j["quick"] = quick;
      j["load_average_before_after"] = {load_before, ekva::load_average()};
      j["problem"] = {{"n_heads", n_heads},
                      {"kv_heads", sh.kv_heads},
                      {"head_dim", sh.head_dim},
                      {"block_size", sh.block_size},
                      {"experts", sh.experts},
                      {"queries_per_sequence", 1},
                      {"store", "PagedKvStore, kPerHeadExpert, kept view"},
                      {"dtype", "bf16 (f32 for comparison)"}};
      j["method"] = {
          {"attention",
           "Backend::attention(p, lists, plan), plan from plan_attention once per case"},
          {"interleaved", "one streaming bandwidth run right before each step (bf16 and f32)"},
          {"bandwidth_bytes", probe.bytes()},
          {"min_cpu_share", min_cpu_share},
          {"sample_kept_if", "cpu_share >= min_cpu_share (process CPU time / (wall x threads))"},
          {"round_kept_if", "at least half its bandwidth runs and half its steps of each dtype"},
          {"bytes_read", "retained K/V bytes of the lists (each entry once per step)"},
          {"step_us_median", "median over the kept steps of all kept rounds"},
          {"step_us_range", "min and max of the kept rounds' medians"},
          {"fraction",
           "per round, median kept step rate / median kept bandwidth run; median "
           "over rounds"}};
      j["cases"] = cases_json;
      std::ofstream(json_out) << j.dump(2) << "\n";
      fmt::print("wrote {}\n", json_out);
    }
    if (!all_ok) {
      fmt::print(stderr,
                 "ekva_bench_attention: error: some cases had too few undisturbed rounds: other "
                 "processes took this machine's CPUs; rerun when it is idle\n");
      return 2;
    }
  } catch (const ekva::Error& e) {
    fmt::print(stderr, "ekva_bench_attention: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
