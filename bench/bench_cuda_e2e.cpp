// End to end on the GPU under a fixed KV memory budget: how many sequences of
// `context` tokens fit in `--kv-gib` of device memory with the full bf16 cache and
// with the compressed store at a budget (10% by default), and the aggregate decode
// tokens/s of the engine's forward pass at that batch; plus batch 1 of each as a
// fraction of its bandwidth bound (the bytes a step must read, weights touched +
// KV visited, at the read ceiling measured in the same run).
//
// The caches are filled without running the prompt through the model: each sequence
// gets `context` entries per (layer, kv-head) of random K/V (one device buffer, the
// same for every sequence) with Zipf-skewed expert tags, through the same KvCache
// calls a prefill makes (append, tag, end_layer, end_forward), so the compressed
// cache compresses layer by layer exactly as after a real prompt (its SnapKV scores
// are empty then: the entries it keeps are the most recent of each segment, which
// changes no byte count). A real 32k prefill of hundreds of sequences would take
// most of a device session; what this measures is the decode step and the capacity.
// The decode steps are the engine's: real tokens through the model, attention over
// the caches, the compressed cache scoring decode queries and evicting through decode.
//
//   ekva_bench_cuda_e2e -m DIR [--context 32768 --kv-gib 64 --budget 10% --steps 12]
//                       [--max-batch 1024 --fill-seconds 240] [--json-out F --commit C]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/device_kv_arena.h"
#include "cuda/device_kv_cache.h"
#include "cuda/probe.cuh"
#include "kv/compressed_cache.h"
#include "model/model.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Options {
  std::string model_dir, json_out, commit = "unknown", budget = "10%";
  // allocator:policy of each compressed row at the batch that fits; the first is the
  // headline row (and the batch-1 one).
  std::vector<std::string> methods = {"adakv:snapkv"};
  int64_t context = 32768;
  double kv_gib = 64;
  int steps = 12, max_batch = 1024, block_size = 128;
  double fill_seconds = 240;
};

struct Row {
  std::string cache;
  int batch = 0;
  std::string batch_limited_by;
  double kv_bytes_held = 0, kv_bytes_per_sequence = 0, fill_s = 0;
  std::vector<double> step_ms;
  ekva::ForwardCounters counters;
  int64_t live_entries_per_sequence = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"EKVA GPU end to end: batch that fits a KV memory budget and decode tokens/s"};
  Options o;
  app.add_option("-m,--model", o.model_dir, "Model directory")->required();
  app.add_option("--context", o.context, "Tokens per sequence before decoding")
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-gib", o.kv_gib, "Device memory for the KV caches (GiB)")
      ->check(CLI::PositiveNumber);
  app.add_option("--budget", o.budget, "Compressed cache budget (10%, 4096t, 64MiB)");
  app.add_option("--methods", o.methods,
                 "allocator:policy of each compressed row (e.g. adakv:snapkv,uniform:streamingllm)")
      ->delimiter(',');
  app.add_option("--block-size", o.block_size, "Entries per block of the compressed store")
      ->check(CLI::PositiveNumber);
  app.add_option("--steps", o.steps, "Decode steps timed per row")->check(CLI::PositiveNumber);
  app.add_option("--max-batch", o.max_batch, "Most sequences per row")->check(CLI::PositiveNumber);
  app.add_option("--fill-seconds", o.fill_seconds, "Stop adding sequences after this long")
      ->check(CLI::PositiveNumber);
  app.add_option("--commit", o.commit, "Commit recorded in the JSON");
  app.add_option("--json-out", o.json_out, "Write the figures as JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    if (ekva::cuda::device_count() == 0) ekva::fail("no CUDA device: this benchmark needs a GPU");
    ekva::cuda::CudaBackend gpu(0);
    cudaDeviceProp prop{};
    EKVA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const auto ceiling = ekva::cuda::measure_read_ceiling();
    fmt::print("{}: read ceiling {:.3f} TB/s (median; {:.3f}-{:.3f})\n", prop.name,
               ceiling.bytes_per_s / 1e12, ceiling.min_bytes_per_s / 1e12,
               ceiling.max_bytes_per_s / 1e12);
    const auto model = ekva::Model::load(o.model_dir);
    model->place(gpu);
    const ekva::ModelConfig& c = model->config();
    const ekva::KvShape shape = ekva::kv_cache_shape(c);
    const int64_t capacity = o.context + o.steps + 4;
    if (capacity > c.max_position_embeddings)
      ekva::fail("--context {} + {} steps exceed the model's context of {}", o.context, o.steps,
                 c.max_position_embeddings);
    const auto kv_limit = static_cast<double>(o.kv_gib) * 1073741824.0;
    fmt::print("model {}: {} layers, {}/{} heads x {}, {} experts top-{}, {:.2f} GB of weights\n",
               c.arch_name, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.router.n_experts,
               c.router.top_k, model->tensors().total_bytes() / 1e9);

    // One prompt's K/V for every sequence: [context, n_kv_heads, head_dim] f32 each.
    const auto row = static_cast<size_t>(shape.n_kv_heads) * static_cast<size_t>(shape.head_dim);
    const size_t fill_floats = static_cast<size_t>(o.context) * row;
    float* fill_k = static_cast<float*>(gpu.allocate(fill_floats * 4));
    float* fill_v = static_cast<float*>(gpu.allocate(fill_floats * 4));
    {
      std::mt19937 rng(3);
      std::normal_distribution<float> normal(0.f, 1.f);
      std::vector<float> host(fill_floats);
      for (auto& x : host) x = normal(rng);
      gpu.upload(fill_k, host.data(), host.size() * 4);
      for (auto& x : host) x = normal(rng);
      gpu.upload(fill_v, host.data(), host.size() * 4);
    }
    std::vector<int32_t> positions(static_cast<size_t>(o.context));
    for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int32_t>(i);
    // Zipf(1) over the experts: the top-1 tags a skewed router gives.
    std::vector<double> zipf;
    for (int e = 0; e < std::max(1, c.router.n_experts); ++e) zipf.push_back(1.0 / (e + 1));
    std::mt19937 tag_rng(5);
    std::discrete_distribution<int32_t> expert(zipf.begin(), zipf.end());
    std::vector<int32_t> tags(static_cast<size_t>(o.context));

    std::mt19937 token_rng(7);
    std::uniform_int_distribution<int32_t> token(3, c.vocab_size - 1);
    const auto run_decode = [&](std::vector<ekva::KvCache*>& caches, Row& r) {
      const auto B = static_cast<int>(caches.size());
      ekva::Activations act(c, gpu, {.max_sequences = B, .max_tokens = B});
      std::vector<int32_t> next(static_cast<size_t>(B));
      std::vector<ekva::SequenceStep> batch(static_cast<size_t>(B));
      for (int s = 0; s < o.steps + 2; ++s) {  // two warm-up steps
        for (int64_t b = 0; b < B; ++b) {
          next[static_cast<size_t>(b)] = token(token_rng);
          batch[static_cast<size_t>(b)] = {caches[static_cast<size_t>(b)],
                                           std::span(next).subspan(static_cast<size_t>(b), 1)};
        }
        const auto t0 = Clock::now();
        r.counters = model->forward(batch, act, gpu);  // ends with the logits downloaded
        if (s >= 2) r.step_ms.push_back(seconds_since(t0) * 1e3);
      }
      std::sort(r.step_ms.begin(), r.step_ms.end());
    };

    // After a row's fill: why it stopped, how long it took, the batch.
    const auto end_fill = [&](Row& r, size_t n, Clock::time_point t0) {
      if (r.batch_limited_by.empty()) r.batch_limited_by = "max batch";
      gpu.synchronize();
      r.fill_s = seconds_since(t0);
      r.batch = static_cast<int>(n);
    };
    std::vector<Row> rows;
    const auto full_row = [&](int max_batch) {
      Row r;
      r.cache = "full";
      std::vector<std::unique_ptr<ekva::cuda::DeviceFullKvCache>> caches;
      const auto t0 = Clock::now();
      while (static_cast<int>(caches.size()) < max_batch) {
        auto probe = std::make_unique<ekva::cuda::DeviceFullKvCache>(gpu, shape, capacity);
        if (r.kv_bytes_held + probe->reserved_bytes() > kv_limit) {
          r.batch_limited_by = "kv memory";
          break;
        }
        for (int l = 0; l < c.n_layers; ++l) probe->append(l, positions, fill_k, fill_v);
        r.kv_bytes_held += static_cast<double>(probe->reserved_bytes());
        r.kv_bytes_per_sequence = static_cast<double>(probe->reserved_bytes());
        caches.push_back(std::move(probe));
        if (seconds_since(t0) > o.fill_seconds) {
          r.batch_limited_by = "fill time";
          break;
        }
      }
      end_fill(r, caches.size(), t0);
      r.live_entries_per_sequence = o.context * c.n_layers * c.n_kv_heads;
      std::vector<ekva::KvCache*> ptrs;
      for (auto& p : caches) ptrs.push_back(p.get());
      run_decode(ptrs, r);
      rows.push_back(r);
    };
    const auto compressed_row = [&](const std::string& method, int max_batch) {
      const size_t colon = method.find(':');
      if (colon == std::string::npos)
        ekva::fail("--methods: expected allocator:policy, got '{}'", method);
      Row r;
      r.cache = fmt::format("{} {}", method, o.budget);
      ekva::cuda::DeviceKvArenaMemory memory(gpu);
      ekva::CompressionConfig cc;
      cc.allocator = method.substr(0, colon);
      cc.policy = method.substr(colon + 1);
      cc.budget = ekva::BudgetSpec::parse(o.budget);
      cc.block_size = o.block_size;
      cc.memory = &memory;
      ekva::PagedKvStore store(ekva::store_config_for(c, cc, capacity));
      std::vector<std::unique_ptr<ekva::CompressedKvCache>> caches;
      const auto t0 = Clock::now();
      double per_sequence = 0;
      while (static_cast<int>(caches.size()) < max_batch) {
        // Room for one more at its measured size, plus one layer uncompressed (the
        // peak of its fill) and an eighth for the decode's eviction slack.
        const double layer_bytes = static_cast<double>(o.context) * static_cast<double>(row) * 4;
        if (static_cast<double>(memory.mapped_bytes()) + per_sequence * 1.125 + layer_bytes >
            kv_limit) {
          r.batch_limited_by = "kv memory";
          break;
        }
        auto cache = std::make_unique<ekva::CompressedKvCache>(store, c, cc, gpu);
        for (int l = 0; l < c.n_layers; ++l) {
          for (auto& t : tags) t = expert(tag_rng);
          cache->append(l, positions, fill_k, fill_v);
          cache->scored_queries(l, positions);
          if (c.is_moe_layer(l)) cache->tag(l, positions, tags.data());
          cache->end_layer(l);
        }
        cache->end_forward();
        store.flush();
        // The mean over the sequences so far: slabs come 32 MiB at a time, and the
        // first sequence's uncompressed layer leaves slabs the next ones fill.
        per_sequence =
            static_cast<double>(memory.mapped_bytes()) / static_cast<double>(caches.size() + 1);
        if (caches.empty())
          fmt::print("  first compressed sequence: {} live entries of {}, {:.1f} MB held\n",
                     cache->stats().live_entries, cache->stats().full_entries,
                     static_cast<double>(cache->bytes_used()) / 1e6);
        caches.push_back(std::move(cache));
        if (caches.size() % 64 == 0)
          fmt::print("  {} sequences filled, {:.2f} GiB mapped, {:.0f} s\n", caches.size(),
                     memory.mapped_bytes() / 1073741824.0, seconds_since(t0));
        if (seconds_since(t0) > o.fill_seconds) {
          r.batch_limited_by = "fill time";
          break;
        }
      }
      end_fill(r, caches.size(), t0);
      int64_t live = 0;
      for (auto& p : caches) live += p->stats().live_entries;
      r.live_entries_per_sequence = live / std::max<int64_t>(1, r.batch);
      std::vector<ekva::KvCache*> ptrs;
      for (auto& p : caches) ptrs.push_back(p.get());
      run_decode(ptrs, r);
      r.kv_bytes_held = static_cast<double>(memory.mapped_bytes());  // after the decode
      r.kv_bytes_per_sequence = r.kv_bytes_held / std::max(1, r.batch);
      rows.push_back(r);
    };
    full_row(1);
    compressed_row(o.methods.front(), 1);
    full_row(o.max_batch);
    for (const std::string& m : o.methods) compressed_row(m, o.max_batch);
    gpu.release(fill_k);
    gpu.release(fill_v);

    nlohmann::json out = nlohmann::json::array();
    for (const Row& r : rows) {
      const double med = r.step_ms[r.step_ms.size() / 2];
      const double bytes = static_cast<double>(r.counters.weight_bytes + r.counters.kv_bytes);
      const double tps = r.batch / (med * 1e-3);
      const double bound_ms = bytes / ceiling.bytes_per_s * 1e3;
      fmt::print(
          "{:>22s} batch {:4d} ({}): {:.1f} MB KV per sequence, step {:.2f} ms (median; "
          "{:.2f}-{:.2f}), {:.0f} tok/s; reads {:.1f} MB/step ({:.1f} weights + {:.1f} KV): "
          "bandwidth bound {:.2f} ms = {:.3f} of it; fill {:.0f} s\n",
          r.cache, r.batch, r.batch_limited_by, r.kv_bytes_per_sequence / 1e6, med,
          r.step_ms.front(), r.step_ms.back(), tps, bytes / 1e6, r.counters.weight_bytes / 1e6,
          r.counters.kv_bytes / 1e6, bound_ms, bound_ms / med, r.fill_s);
      out.push_back({{"cache", r.cache},
                     {"batch", r.batch},
                     {"batch_limited_by", r.batch_limited_by},
                     {"kv_bytes_held", r.kv_bytes_held},
                     {"kv_bytes_per_sequence", r.kv_bytes_per_sequence},
                     {"live_entries_per_sequence", r.live_entries_per_sequence},
                     {"step_ms_median", med},
                     {"step_ms_min", r.step_ms.front()},
                     {"step_ms_max", r.step_ms.back()},
                     {"tokens_per_s", tps},
                     {"weight_bytes_per_step", r.counters.weight_bytes},
                     {"kv_bytes_per_step", r.counters.kv_bytes},
                     {"bandwidth_bound_ms", bound_ms},
                     {"fraction_of_bandwidth_bound", bound_ms / med},
                     {"fill_seconds", r.fill_s}});
    }
    const Row& full = rows[2];
    const Row& comp = rows[3];
    const double full_tps = full.batch / (full.step_ms[full.step_ms.size() / 2] * 1e-3);
    const double comp_tps = comp.batch / (comp.step_ms[comp.step_ms.size() / 2] * 1e-3);
    fmt::print(
        "compressed / full at the batch that fits: {:.2f}x the batch, {:.2f}x the tokens/s\n",
        static_cast<double>(comp.batch) / full.batch, comp_tps / full_tps);
    if (!o.json_out.empty()) {
      const std::time_t now = std::time(nullptr);
      char date[32];
      std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
      nlohmann::json j = {
          {"benchmark", "ekva_bench_cuda_e2e"},
          {"commit", o.commit},
          {"device", prop.name},
          {"date", date},
          {"model", o.model_dir},
          {"architecture", c.arch_name},
          {"layers", c.n_layers},
          {"hidden", c.hidden_size},
          {"weights_bytes", model->tensors().total_bytes()},
          {"context", o.context},
          {"kv_memory_gib", o.kv_gib},
          {"compressed",
           {{"methods", o.methods}, {"budget", o.budget}, {"block_size", o.block_size}}},
          {"fill",
           "synthetic prompt K/V (random, Zipf expert tags) through the cache's prefill calls"},
          {"read_ceiling_tb_per_s", ceiling.bytes_per_s / 1e12},
          {"steps", o.steps},
          {"batch_ratio", static_cast<double>(comp.batch) / full.batch},
          {"tokens_per_s_ratio", comp_tps / full_tps},
          {"rows", out}};
      std::ofstream(o.json_out) << j.dump(1) << "\n";
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "ekva_bench_cuda_e2e: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
