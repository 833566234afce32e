// The whole forward pass on the GPU (weights placed on it, activations and the full
// KV cache in its memory) against the independent references: the numpy float64
// forward of every random checkpoint architecture, and transformers' logits of the
// shipped model; batched and ragged steps per sequence against single-sequence runs;
// the errors for what the GPU path does not take. Skipped where there is no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/device_kv_cache.h"
#include "cuda/register.h"
#include "ekva/ekva.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace ekva {
namespace {

// The GPU's GEMMs read the activations in bf16 (cuBLAS bf16 tensor cores, f32
// accumulation) and the cache holds bf16 K/V: logits differ from an f32 forward by
// the rounding of every projection's input, about 2^-9 relative per element, grown
// over the layers. Measured on the H200 (bench/results/cuda_engine_*.json): the
// largest error over the cases below sits well inside this bound.
constexpr double kBf16Tolerance = 3e-2;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: the GPU engine needs one"

cuda::CudaBackend& gpu() {
  static auto* backend = new cuda::CudaBackend(0);  // never destroyed (see test_cuda_ops.cpp)
  return *backend;
}

std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo& t = f.get(name);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  std::memcpy(out.data(), t.data, t.nbytes);
  return out;
}
std::vector<int32_t> read_i32(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo& t = f.get(name);
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  std::memcpy(out.data(), t.data, t.nbytes);
  return out;
}

int64_t argmax(const float* p, size_t n) { return std::max_element(p, p + n) - p; }

class CudaEngineReference : public ::testing::TestWithParam<std::string> {};

// Prefill, then decode token by token, on the GPU: every position's logits against
// the float64 reference, and every router choice.
TEST_P(CudaEngineReference, PrefillThenDecodeMatch) {
  SKIP_WITHOUT_GPU();
  const auto dir = test::reference_dir() / GetParam();
  ASSERT_TRUE(std::filesystem::exists(dir)) << dir << " missing: run the make_reference fixture";
  const auto model = Model::load(dir);
  model->place(gpu());
  const auto ref = SafetensorsFile::open(dir / "reference.safetensors");
  const auto tokens = read_i32(*ref, "tokens");
  const auto want = read_f32(*ref, "logits");
  const int64_t prefill = std::stoll(ref->metadata().at("prefill_len"));
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  const auto N = static_cast<int64_t>(tokens.size());

  std::map<int, std::vector<std::vector<int32_t>>> routed;
  ForwardObserver observer;
  observer.routing = [&](int layer, const int32_t* e, const float*, int64_t n, int k) {
    for (int64_t t = 0; t < n; ++t) routed[layer].emplace_back(e + t * k, e + (t + 1) * k);
  };
  cuda::DeviceFullKvCache cache(gpu(), {c.n_layers, c.n_kv_heads, c.head_dim}, N);
  std::vector<float> logits;
  model->forward(std::span(tokens).first(static_cast<size_t>(prefill)), cache, logits, true, gpu(),
                 &observer);
  ASSERT_EQ(logits.size(), static_cast<size_t>(prefill) * V);
  double worst = 0;
  for (int64_t t = 0; t < N; ++t) {
    if (t >= prefill) {
      model->forward(std::span(tokens).subspan(static_cast<size_t>(t), 1), cache, logits, false,
                     gpu(), &observer);
      ASSERT_EQ(logits.size(), V);
    }
    const float* mine = t >= prefill ? logits.data() : &logits[static_cast<size_t>(t) * V];
    const double err = test::rel_error(mine, &want[static_cast<size_t>(t) * V], V);
    worst = std::max(worst, err);
    EXPECT_LT(err, kBf16Tolerance) << "position " << t;
  }
  RecordProperty("worst_rel_error", fmt::format("{:.3g}", worst));
  std::cout << "[ worst    ] " << GetParam() << ": rel error " << worst << "\n";
  EXPECT_EQ(cache.length(), N);
  if (ref->metadata().count("router_topk")) {
    const auto topk = nlohmann::json::parse(ref->metadata().at("router_topk"));
    for (const auto& [layer, per_token] : topk.items()) {
      const auto& mine = routed[std::stoi(layer)];
      ASSERT_EQ(mine.size(), per_token.size()) << "layer " << layer;
      // The reference keeps a margin (0.1 in router logits) between the 1st and 2nd
      // expert and between the k-th and (k+1)-th, not between the ranks inside the
      // top-k: bf16 rounding may swap two of those (same experts, same output). So the
      // top-1 (the entry's tag) must match exactly and the chosen set as a set.
      for (size_t t = 0; t < mine.size(); ++t) {
        auto chosen = per_token[t].get<std::vector<int32_t>>();
        ASSERT_FALSE(chosen.empty());
        EXPECT_EQ(mine[t].front(), chosen.front()) << "top-1, layer " << layer << " token " << t;
        auto got = mine[t];
        std::sort(got.begin(), got.end());
        std::sort(chosen.begin(), chosen.end());
        EXPECT_EQ(got, chosen) << "expert set, layer " << layer << " token " << t;
      }
    }
  }
}

// Every named intermediate of the forward pass (ForwardObserver) on the GPU against
// the CPU engine's, layer by layer: where logits disagree, the first tensor that does
// names the op.
TEST_P(CudaEngineReference, IntermediatesMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  const auto dir = test::reference_dir() / GetParam();
  const auto model = Model::load(dir);
  model->place(gpu());
  const auto ref = SafetensorsFile::open(dir / "reference.safetensors");
  const auto tokens = read_i32(*ref, "tokens");
  const ModelConfig& c = model->config();
  const auto run = [&](Backend& backend, KvCache& cache) {
    std::vector<std::pair<std::string, std::vector<float>>> seen;
    ForwardObserver observer;
    observer.tensor = [&](std::string_view name, int layer, const float* x, int64_t n,
                          int64_t width) {
      seen.emplace_back(fmt::format("layer {} {}", layer, name),
                        std::vector<float>(x, x + n * width));
    };
    std::vector<float> logits;
    model->forward(std::span(tokens).first(8), cache, logits, true, backend, &observer);
    seen.emplace_back("logits", logits);
    return seen;
  };
  FullKvCache host_cache({c.n_layers, c.n_kv_heads, c.head_dim}, 16, DType::kBF16);
  cuda::DeviceFullKvCache dev_cache(gpu(), {c.n_layers, c.n_kv_heads, c.head_dim}, 16);
  const auto want = run(test::cpu(), host_cache);
  const auto got = run(gpu(), dev_cache);
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(want[i].first, got[i].first);
    ASSERT_EQ(want[i].second.size(), got[i].second.size()) << want[i].first;
    const double err =
        test::rel_error(got[i].second.data(), want[i].second.data(), want[i].second.size());
    ASSERT_LT(err, kBf16Tolerance) << "first tensor that differs: " << want[i].first;
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, CudaEngineReference,
                         ::testing::Values("mixtral", "mixtral_sharded", "mixtral_f32",
                                           "mixtral_f16", "qwen2_moe", "qwen2_moe_norm",
                                           "qwen3_moe", "qwen3_moe_dense", "qwen3_moe_sharded",
                                           "olmoe", "olmoe_clip", "mistral", "mistral_swa",
                                           "llama"));

// CudaBackend::attention on head dims the kernel lacks (padded) and has, against
// ref::attention on the same bf16 K/V: a prefill chunk of 5 queries over 9 entries.
TEST(CudaBackendAttention, PaddedHeadDimsMatchTheReference) {
  SKIP_WITHOUT_GPU();
  for (const int64_t D : {16, 24, 64, 96}) {
    const int64_t Dp = D <= 64 ? 64 : 128, H = 4, KV = 2, T = 5, N = 9;
    std::mt19937 rng(static_cast<uint32_t>(D));
    std::normal_distribution<float> normal;
    std::vector<float> q(static_cast<size_t>(T * H * D));
    for (float& x : q) x = normal(rng);
    // Host K/V [N, D] per kv-head and the device copies [N, Dp], zero-padded.
    std::vector<std::vector<uint16_t>> hk(KV), hv(KV), dk(KV), dv(KV);
    for (int64_t h = 0; h < KV; ++h) {
      hk[h].resize(static_cast<size_t>(N * D));
      hv[h].resize(static_cast<size_t>(N * D));
      dk[h].assign(static_cast<size_t>(N * Dp), 0);
      dv[h].assign(static_cast<size_t>(N * Dp), 0);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t d = 0; d < D; ++d) {
          hk[h][i * D + d] = dk[h][i * Dp + d] = f32_to_bf16(normal(rng));
          hv[h][i * D + d] = dv[h][i * Dp + d] = f32_to_bf16(normal(rng));
        }
    }
    std::vector<int32_t> pos(N), qpos(T);
    for (int64_t i = 0; i < N; ++i) pos[i] = static_cast<int32_t>(i);
    for (int64_t t = 0; t < T; ++t) qpos[t] = static_cast<int32_t>(N - T + t);
    const auto dev = [&](const void* src, size_t bytes) {
      void* p = gpu().allocate(bytes);
      gpu().upload(p, src, bytes);
      return p;
    };
    auto* d_pos = static_cast<int32_t*>(dev(pos.data(), pos.size() * 4));
    auto* d_q = static_cast<float*>(dev(q.data(), q.size() * 4));
    auto* d_out = static_cast<float*>(gpu().allocate(q.size() * 4));
    std::vector<std::vector<KvChunk>> host_lists(KV), dev_lists(KV);
    std::vector<void*> owned;
    for (int64_t h = 0; h < KV; ++h) {
      host_lists[h].push_back({hk[h].data(), hv[h].data(), pos.data(), N, DType::kBF16});
      owned.push_back(dev(dk[h].data(), dk[h].size() * 2));
      owned.push_back(dev(dv[h].data(), dv[h].size() * 2));
      dev_lists[h].push_back({owned[owned.size() - 2], owned.back(), d_pos, N, DType::kBF16});
    }
    AttentionParams p;
    p.n_queries = T;
    p.n_heads = H;
    p.n_kv_heads = KV;
    p.head_dim = D;
    p.scale = 1.f / std::sqrt(static_cast<float>(D));
    p.q = q.data();
    p.q_positions = qpos.data();
    std::vector<float> want(q.size()), got(q.size());
    p.out = want.data();
    ref::attention(p, host_lists);
    p.q = d_q;
    p.out = d_out;
    gpu().attention(p, dev_lists);
    gpu().download(got.data(), d_out, got.size() * 4);
    // The kernel rounds q and p to TF32 (10-bit mantissa) for its tensor-core products.
    EXPECT_LT(test::rel_error(got.data(), want.data(), got.size()), 5e-3) << "head_dim " << D;
    for (void* o : owned) gpu().release(o);
    gpu().release(d_pos);
    gpu().release(d_q);
    gpu().release(d_out);
  }
}

const std::filesystem::path kModel =
    std::filesystem::path(EKVA_SOURCE_DIR) / "models/ekva-moe-tiny";

// The shipped model on the GPU against transformers' float32 logits (computed on
// the GPU machine, tests/data/ekva_moe_tiny_reference.safetensors): the same argmax
// at every stored position and the logits within the bf16 bound.
TEST(CudaEngineShipped, LogitsMatchTransformers) {
  SKIP_WITHOUT_GPU();
  const auto model = Model::load(kModel);
  model->place(gpu());
  const auto ref = SafetensorsFile::open(std::filesystem::path(EKVA_SOURCE_DIR) /
                                         "tests/data/ekva_moe_tiny_reference.safetensors");
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  for (int i = 0; i < 3; ++i) {
    const auto tokens = read_i32(*ref, fmt::format("tokens_{}", i));
    const auto want = read_f32(*ref, fmt::format("logits_{}", i));
    const int64_t start = std::stoll(ref->metadata().at(fmt::format("logits_start_{}", i)));
    const auto N = static_cast<int64_t>(tokens.size());
    cuda::DeviceFullKvCache cache(gpu(), {c.n_layers, c.n_kv_heads, c.head_dim}, N);
    std::vector<float> logits;
    model->forward(std::span(tokens).first(static_cast<size_t>(start + 1)), cache, logits, false,
                   gpu());
    int agree = 0;
    double worst = 0;
    for (int64_t t = start; t < N; ++t) {
      if (t > start)
        model->forward(std::span(tokens).subspan(static_cast<size_t>(t), 1), cache, logits, false,
                       gpu());
      const float* w = &want[static_cast<size_t>(t - start) * V];
      const double err = test::rel_error(logits.data(), w, V);
      worst = std::max(worst, err);
      EXPECT_LT(err, kBf16Tolerance) << "sequence " << i << " position " << t;
      agree += argmax(logits.data(), V) == argmax(w, V);
    }
    std::cout << "[ shipped  ] sequence " << i << " (" << N << " tokens): worst rel error " << worst
              << ", argmax agrees at " << agree << " of " << N - start << "\n";
    EXPECT_GE(agree, (N - start) * 15 / 16) << "sequence " << i;
  }
}

// A ragged batch on the GPU (three sequences at different lengths, prefill chunks
// and decode tokens in one call) gives each sequence what it gets alone on the GPU.
TEST(CudaEngineBatch, RaggedBatchMatchesSequencesAlone) {
  SKIP_WITHOUT_GPU();
  const auto model = Model::load(kModel);
  model->place(gpu());
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  const KvShape shape{c.n_layers, c.n_kv_heads, c.head_dim};
  std::vector<std::vector<int32_t>> prompts(3);
  for (size_t s = 0; s < prompts.size(); ++s)
    for (size_t t = 0; t < 40 + 37 * s; ++t)
      prompts[s].push_back(static_cast<int32_t>(3 + (t * 131 + s * 977) % (V - 3)));
  // Alone: prefill all but the last 4 tokens, then decode them one by one.
  std::vector<std::vector<float>> alone(prompts.size());
  for (size_t s = 0; s < prompts.size(); ++s) {
    cuda::DeviceFullKvCache cache(gpu(), shape, 256);
    std::vector<float> logits;
    const size_t n = prompts[s].size();
    model->forward(std::span(prompts[s]).first(n - 4), cache, logits, false, gpu());
    for (size_t t = n - 4; t < n; ++t) {
      model->forward(std::span(prompts[s]).subspan(t, 1), cache, logits, false, gpu());
      alone[s].insert(alone[s].end(), logits.begin(), logits.end());
    }
  }
  // Together: sequence s's prefill enters at step s, then every step carries the
  // others' decode tokens beside it.
  std::vector<std::unique_ptr<cuda::DeviceFullKvCache>> caches;
  for (size_t s = 0; s < prompts.size(); ++s)
    caches.push_back(std::make_unique<cuda::DeviceFullKvCache>(gpu(), shape, 256));
  Activations act(c, gpu(), {.max_sequences = 3, .max_tokens = 256});
  std::vector<size_t> fed(prompts.size(), 0);
  std::vector<int> decoded(prompts.size(), 0);
  for (int step = 0; step < 12; ++step) {
    std::vector<SequenceStep> batch;
    std::vector<size_t> who;
    for (size_t s = 0; s < prompts.size(); ++s) {
      const size_t n = prompts[s].size();
      if (static_cast<int>(s) > step || fed[s] == n) continue;
      const size_t take = fed[s] == 0 ? n - 4 : 1;
      batch.push_back({caches[s].get(), std::span(prompts[s]).subspan(fed[s], take)});
      who.push_back(s);
      fed[s] += take;
    }
    if (batch.empty()) break;
    model->forward(batch, act, gpu());
    for (size_t b = 0; b < batch.size(); ++b) {
      const size_t s = who[b];
      if (batch[b].tokens.size() != 1) continue;  // the prefill's logits are not compared
      const float* row = act.host_logits() + static_cast<size_t>(act.logit_begin[b]) * V;
      const float* want = &alone[s][static_cast<size_t>(decoded[s]) * V];
      // Same kernels, other GEMM shapes (cuBLAS may pick another algorithm per M).
      EXPECT_LT(test::rel_error(row, want, V), 2e-3) << "sequence " << s << " step " << step;
      EXPECT_EQ(argmax(row, V), argmax(want, V)) << "sequence " << s << " step " << step;
      ++decoded[s];
    }
  }
  for (size_t s = 0; s < prompts.size(); ++s) EXPECT_EQ(decoded[s], 4) << "sequence " << s;
}

TEST(CudaEngineErrors, HostCacheOnTheGpuIsRefused) {
  SKIP_WITHOUT_GPU();
  const auto model = Model::load(kModel);
  model->place(gpu());
  const ModelConfig& c = model->config();
  FullKvCache cache({c.n_layers, c.n_kv_heads, c.head_dim}, 16);
  std::vector<float> logits;
  const std::vector<int32_t> tokens = {1, 5, 9};
  test::expect_error([&] { model->forward(tokens, cache, logits, false, gpu()); },
                     {"KV cache of batch entry 0 is in host memory", "cuda"});
}

TEST(CudaEngineErrors, UnplacedWeightsAreRefused) {
  SKIP_WITHOUT_GPU();
  const auto model = Model::load(kModel);  // not placed
  const ModelConfig& c = model->config();
  cuda::DeviceFullKvCache cache(gpu(), {c.n_layers, c.n_kv_heads, c.head_dim}, 16);
  std::vector<float> logits;
  const std::vector<int32_t> tokens = {1, 5, 9};
  test::expect_error([&] { model->forward(tokens, cache, logits, false, gpu()); },
                     {"weights are not in the backend's memory", "Model::place"});
}

// The engine on the GPU: greedy text equal to the CPU engine's on the shipped model
// (bf16 rounding may part them only at a near-tie, which this prompt does not have:
// both are checked token by token), with the full cache and with the compressed one
// (SnapKV at 10% of a long prompt); what the GPU cannot take is refused with the reason.
TEST(CudaEngineApi, GeneratesWhatTheCpuEngineGenerates) {
  SKIP_WITHOUT_GPU();
  cuda::register_cuda();
  auto cpu = Engine::open(kModel, {.context = 1024});
  auto gpu_engine = Engine::open(kModel, {.context = 1024, .device = "cuda"});
  GenerateOptions opts;
  opts.max_new_tokens = 24;
  opts.stop_at_eos = false;
  const auto a = cpu->generate("The kernel of the system", opts, nullptr);
  const auto b = gpu_engine->generate("The kernel of the system", opts, nullptr);
  ASSERT_EQ(a.tokens.size(), b.tokens.size());
  size_t same = 0;
  while (same < a.tokens.size() && a.tokens[same] == b.tokens[same]) ++same;
  std::cout << "[ generate ] cpu and cuda agree on the first " << same << " of " << a.tokens.size()
            << " tokens; cuda decode " << b.decode_tokens_per_second() << " tok/s\n";
  EXPECT_GE(same, a.tokens.size() / 2);
  EXPECT_GT(b.kv_bytes, 0u);

  EngineOptions compressed{.context = 1024};
  compressed.kv.policy = "snapkv";
  compressed.kv.budget = "10%";
  auto cpu_snap = Engine::open(kModel, compressed);
  compressed.device = "cuda";
  auto gpu_snap = Engine::open(kModel, compressed);
  std::string prompt;
  for (int i = 0; i < 60; ++i) prompt += "The kernel of the system keeps a table of every page. ";
  const auto c = cpu_snap->generate(prompt, opts, nullptr);
  const auto d = gpu_snap->generate(prompt, opts, nullptr);
  ASSERT_EQ(c.tokens.size(), d.tokens.size());
  same = 0;
  while (same < c.tokens.size() && c.tokens[same] == d.tokens[same]) ++same;
  std::cout << "[ generate ] snapkv 10%: cpu and cuda agree on the first " << same << " of "
            << c.tokens.size() << " tokens after a " << c.prompt_tokens << "-token prompt; kv "
            << d.kv_bytes << " bytes on the GPU, " << c.kv_bytes << " on the CPU\n";
  EXPECT_GE(same, c.tokens.size() / 2);
  EXPECT_LT(d.kv_bytes, d.kv_full_bytes / 4);
  compressed.kv.policy = "knorm";
  test::expect_error([&] { Engine::open(kModel, compressed); },
                     {"policy 'knorm'", "K rows on the host"});
  test::expect_error([&] { Engine::open(kModel, {.device = "cuda:99"}); },
                     {"device cuda:99", "CUDA device"});
  test::expect_error([&] { Engine::open(kModel, {.device = "tpu"}); },
                     {"device 'tpu'", "cpu, cuda or cuda:N"});
}

// The op profile on the GPU: every op timed by CUDA events on the backend's stream,
// attention's cost from its chunks' sizes (their positions are device memory), the
// ops' time within the steps' wall time.
TEST(CudaEngineApi, ProfilesOpsWithCudaEvents) {
  SKIP_WITHOUT_GPU();
  cuda::register_cuda();
  auto engine = Engine::open(kModel, {.context = 1024, .profile_ops = true, .device = "cuda"});
  GenerateOptions opts;
  opts.max_new_tokens = 8;
  opts.stop_at_eos = false;
  engine->generate("The kernel of the system", opts, nullptr);
  const auto j = nlohmann::json::parse(engine->op_profile_json());
  EXPECT_EQ(j["timer"], "cuda events");
  double attention_s = 0, attention_bytes = 0, op_s = 0;
  for (const auto& o : j["ops"]) {
    op_s += o["seconds"].get<double>();
    if (o["kind"] == "attention") {
      attention_s += o["seconds"].get<double>();
      attention_bytes += o["bytes"].get<double>();
    }
  }
  double wall = 0;
  for (const auto& ph : j["phases"]) wall += ph["wall_seconds"].get<double>();
  std::cout << "[ profile  ] cuda: ops " << op_s * 1e3 << " ms of " << wall * 1e3
            << " ms wall; attention " << attention_s * 1e3 << " ms, " << attention_bytes / 1e6
            << " MB\n";
  EXPECT_GT(attention_s, 0);
  EXPECT_GT(attention_bytes, 0);
  EXPECT_LE(op_s, wall * 1.01);
}

// Where there is no GPU (CI): asking for one is a clear error, not a crash.
TEST(CudaEngineNoDevice, OpeningCudaNamesTheMissingDevice) {
  if (cuda::device_count() > 0) GTEST_SKIP() << "a GPU is present";
  cuda::register_cuda();
  test::expect_error([&] { Engine::open(kModel, {.context = 256, .device = "cuda"}); },
                     {"device cuda:0", "no CUDA device is present"});
}

}  // namespace
}  // namespace ekva
