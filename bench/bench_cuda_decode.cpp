// The engine's decode step on the GPU: weights placed on the device, a full bf16 KV
// cache per sequence in device memory, B sequences of `context` tokens decoding
// together. Per batch size: the median step time over the steps (each step ends with
// the logits copied back, so wall time is the step's), tokens/s, the bytes the step
// must read (the weights it touches, routed experts only, plus the KV entries
// attention visits: ForwardCounters) per second, and that rate as a fraction of the
// read ceiling measured in the same run (cuda::measure_read_ceiling).
//
// What the figures are: the forward pass as it stands reads the routing back to the
// host once per MoE layer (grouping tokens per expert on the host) and uploads the
// batch layout, so a step pays a host round trip per layer; small models are bound
// by that and by kernel launches, not by memory. No CUDA graph yet.
//
//   ekva_bench_cuda_decode -m DIR [--batch 1,8,32 --context 1024 --steps 24] [--json-out F]
#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/device_kv_cache.h"
#include "cuda/probe.cuh"
#include "model/model.h"

int main(int argc, char** argv) {
  CLI::App app{"EKVA GPU decode benchmark: step time and bytes read against the read ceiling"};
  std::string model_dir, json_out, commit = "unknown";
  std::vector<int> batches = {1, 8, 32};
  int64_t context = 1024;
  int steps = 24;
  app.add_option("-m,--model", model_dir, "Model directory")->required();
  app.add_option("--batch", batches, "Batch sizes (sequences decoding together)")->delimiter(',');
  app.add_option("--context", context, "Tokens of each sequence before decoding")
      ->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "Decode steps timed per batch size")->check(CLI::PositiveNumber);
  app.add_option("--commit", commit, "Commit recorded in the JSON");
  app.add_option("--json-out", json_out, "Write the figures as JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    if (ekva::cuda::device_count() == 0) ekva::fail("no CUDA device: this benchmark needs a GPU");
    ekva::cuda::CudaBackend gpu(0);
    cudaDeviceProp prop{};
    EKVA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const auto ceiling = ekva::cuda::measure_read_ceiling();
    fmt::print("{}: read ceiling {:.3f} TB/s (median of {}; {:.3f}-{:.3f})\n", prop.name,
               ceiling.bytes_per_s / 1e12, ceiling.runs, ceiling.min_bytes_per_s / 1e12,
               ceiling.max_bytes_per_s / 1e12);
    const auto model = ekva::Model::load(model_dir);
    model->place(gpu);
    const ekva::ModelConfig& c = model->config();
    const ekva::KvShape shape{c.n_layers, c.n_kv_heads, c.head_dim};
    if (context + steps + 2 > c.max_position_embeddings)
      ekva::fail("--context {} + {} steps exceed the model's context of {}", context, steps,
                 c.max_position_embeddings);
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> token(3, c.vocab_size - 1);
    nlohmann::json rows = nlohmann::json::array();
    for (const int B : batches) {
      if (B < 1) ekva::fail("--batch: sizes must be positive, got {}", B);
      std::vector<std::unique_ptr<ekva::cuda::DeviceFullKvCache>> caches;
      for (int b = 0; b < B; ++b)
        caches.push_back(
            std::make_unique<ekva::cuda::DeviceFullKvCache>(gpu, shape, context + steps + 2));
      const int64_t chunk = 512;
      ekva::Activations act(c, gpu,
                            {.max_sequences = B, .max_tokens = std::max<int64_t>(B, chunk)});
      // Prefill every sequence (one at a time, in chunks).
      std::vector<int32_t> prompt(static_cast<size_t>(context));
      for (int b = 0; b < B; ++b) {
        for (auto& t : prompt) t = token(rng);
        for (int64_t t0 = 0; t0 < context; t0 += chunk) {
          const int64_t n = std::min(chunk, context - t0);
          const ekva::SequenceStep st{
              caches[static_cast<size_t>(b)].get(),
              std::span(prompt).subspan(static_cast<size_t>(t0), static_cast<size_t>(n))};
          model->forward({&st, 1}, act, gpu);
        }
      }
      std::vector<int32_t> next(static_cast<size_t>(B));
      std::vector<ekva::SequenceStep> batch(static_cast<size_t>(B));
      std::vector<double> ms;
      ekva::ForwardCounters counters;
      for (int s = 0; s < steps + 2; ++s) {  // two warm-up steps (capacity: steps + 2)
        for (int b = 0; b < B; ++b) {
          next[static_cast<size_t>(b)] = token(rng);
          batch[static_cast<size_t>(b)] = {caches[static_cast<size_t>(b)].get(),
                                           std::span(next).subspan(static_cast<size_t>(b), 1)};
        }
        const auto t0 = std::chrono::steady_clock::now();
        counters = model->forward(batch, act, gpu);  // ends with the logits downloaded
        const double dt =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count();
        if (s >= 2) ms.push_back(dt);
      }
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      const double bytes = static_cast<double>(counters.weight_bytes + counters.kv_bytes);
      const double gbs = bytes / (med * 1e-3) / 1e9;
      fmt::print(
          "batch {:3d} x {:6d} tokens: step {:.3f} ms (median; {:.3f}-{:.3f}), {:.0f} tok/s, "
          "{:.1f} MB read per step ({:.1f} MB weights, {:.1f} MB KV): {:.1f} GB/s = {:.3f} of "
          "the ceiling\n",
          B, context, med, ms.front(), ms.back(), B / (med * 1e-3), bytes / 1e6,
          counters.weight_bytes / 1e6, counters.kv_bytes / 1e6, gbs,
          gbs * 1e9 / ceiling.bytes_per_s);
      rows.push_back({{"batch", B},
                      {"context", context},
                      {"step_ms_median", med},
                      {"step_ms_min", ms.front()},
                      {"step_ms_max", ms.back()},
                      {"tokens_per_s", B / (med * 1e-3)},
                      {"weight_bytes_per_step", counters.weight_bytes},
                      {"kv_bytes_per_step", counters.kv_bytes},
                      {"gb_per_s", gbs},
                      {"fraction_of_read_ceiling", gbs * 1e9 / ceiling.bytes_per_s}});
    }
    if (!json_out.empty()) {
      const std::time_t now = std::time(nullptr);
      char date[32];
      std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
      nlohmann::json j = {{"benchmark", "ekva_bench_cuda_decode"},
                          {"commit", commit},
                          {"device", prop.name},
                          {"date", date},
                          {"model", model_dir},
                          {"architecture", c.arch_name},
                          {"weights_bytes", model->tensors().total_bytes()},
                          {"kv_dtype", "bf16"},
                          {"kv_cache", "full (device)"},
                          {"read_ceiling_tb_per_s", ceiling.bytes_per_s / 1e12},
                          {"read_ceiling_range_tb_per_s",
                           {ceiling.min_bytes_per_s / 1e12, ceiling.max_bytes_per_s / 1e12}},
                          {"steps_per_batch", steps},
                          {"rows", rows}};
      std::ofstream(json_out) << j.dump(1) << "\n";
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "ekva_bench_cuda_decode: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
