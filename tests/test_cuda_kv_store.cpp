// The compressed KV store in a GPU's memory (cuda::DeviceKvArenaMemory under the
// paged store): entry for entry the same as the host store through appends, tags,
// evictions, a decode with periodic eviction and a defragmentation (K/V bit-exact
// after the same bf16 rounding, the padding columns zero, positions and the score
// slots moving with their entries); the compressed cache on the GPU against the same
// cache on the CPU over the shipped model (the entries kept, the decode logits); and
// the refusals (a policy that reads K on the host, a store in the wrong memory).
// Skipped where there is no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "cpu/cpu_backend.h"
#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/device_kv_arena.h"
#include "kv/compressed_cache.h"
#include "kv/paged_store.h"
#include "model/model.h"
#include "test_util.h"

namespace ekva {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: the device KV store needs one"

cuda::CudaBackend& gpu() {
  static auto* backend = new cuda::CudaBackend(0);  // never destroyed (see test_cuda_ops.cpp)
  return *backend;
}

const std::filesystem::path kModel =
    std::filesystem::path(EKVA_SOURCE_DIR) / "models" / "ekva-moe-tiny";

// Device memory holding a copy of host floats, freed with the test.
struct DeviceFloats {
  explicit DeviceFloats(const std::vector<float>& host)
      : ptr(static_cast<float*>(gpu().allocate(std::max<size_t>(4, host.size() * 4)))) {
    gpu().upload(ptr, host.data(), host.size() * 4);
  }
  ~DeviceFloats() { gpu().release(ptr); }
  float* ptr;
};

template <typename T>
std::vector<T> download(const void* p, size_t n) {
  std::vector<T> out(n);
  gpu().download(out.data(), p, n * sizeof(T));
  return out;
}

// Both stores hold the same entries, run for run: the device chunks' K/V rows equal
// the host ones bit for bit in the first head_dim columns and are zero past them, and
// the positions in the device blocks' cells equal the host's.
void expect_same_views(PagedKvStore& host, int hs, PagedKvStore& dev, int ds,
                       const std::string& when) {
  const KvShape& shape = host.config().shape;
  const auto D = static_cast<size_t>(shape.head_dim);
  const auto W = static_cast<size_t>(dev.arena().stored_dim());
  for (int l = 0; l < shape.n_layers; ++l)
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      const auto a = host.view_list(hs, l, h);
      const auto b = dev.view_list(ds, l, h);
      ASSERT_EQ(a.size(), b.size()) << when << ": runs of layer " << l << " head " << h;
      for (size_t r = 0; r < a.size(); ++r) {
        const KvChunk& x = a[r].chunk;
        const KvChunk& y = b[r].chunk;
        ASSERT_EQ(x.n, y.n) << when << ": run " << r;
        const auto n = static_cast<size_t>(x.n);
        const auto yk = download<uint16_t>(y.k, n * W);
        const auto yv = download<uint16_t>(y.v, n * W);
        const auto yp = download<int32_t>(y.positions, n);
        const auto* xk = static_cast<const uint16_t*>(x.k);
        const auto* xv = static_cast<const uint16_t*>(x.v);
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) {
          bad += yp[i] != x.positions[i];
          for (size_t d = 0; d < W; ++d) {
            const uint16_t want_k = d < D ? xk[i * D + d] : 0, want_v = d < D ? xv[i * D + d] : 0;
            bad += yk[i * W + d] != want_k || yv[i * W + d] != want_v;
          }
        }
        ASSERT_EQ(bad, 0u) << when << ": layer " << l << " head " << h << " run " << r;
      }
    }
}

// Sets every live entry's score to a function of (layer, head, position) in both
// stores: on the device in the kernel cells (as attention would), on the host in its
// cells.
float score_of(int layer, int head, int32_t pos) {
  return static_cast<float>(pos) * 0.25f + static_cast<float>(layer * 10 + head);
}
void set_scores(PagedKvStore& host, int hs, PagedKvStore& dev, int ds) {
  const KvShape& shape = host.config().shape;
  std::vector<EntryRun> runs;
  for (int l = 0; l < shape.n_layers; ++l)
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      runs.clear();
      host.view_runs(hs, l, h, runs);
      for (const EntryRun& r : runs)
        for (int64_t i = 0; i < r.n; ++i) r.scores[i] = score_of(l, h, r.positions[i]);
      for (const ViewRun& v : dev.view_list(ds, l, h)) {
        const auto pos = download<int32_t>(v.chunk.positions, static_cast<size_t>(v.chunk.n));
        std::vector<float> s;
        for (const int32_t p : pos) s.push_back(score_of(l, h, p));
        gpu().upload(v.chunk.scores, s.data(), s.size() * 4);
      }
    }
}
// After pull_scores, the device store's host cells hold the host store's scores.
void expect_same_scores(PagedKvStore& host, int hs, PagedKvStore& dev, int ds,
                        const std::string& when) {
  const KvShape& shape = host.config().shape;
  std::vector<EntryRun> a, b;
  for (int l = 0; l < shape.n_layers; ++l) {
    dev.pull_scores(ds, l);
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      a.clear();
      b.clear();
      host.view_runs(hs, l, h, a);
      dev.view_runs(ds, l, h, b);
      std::vector<float> sa, sb;
      for (const EntryRun& r : a) sa.insert(sa.end(), r.scores, r.scores + r.n);
      for (const EntryRun& r : b) sb.insert(sb.end(), r.scores, r.scores + r.n);
      ASSERT_EQ(sa, sb) << when << ": scores of layer " << l << " head " << h;
    }
  }
}

class DeviceKvStore : public ::testing::TestWithParam<int> {};

TEST_P(DeviceKvStore, MirrorsTheHostStoreEntryForEntry) {
  SKIP_WITHOUT_GPU();
  StoreConfig cfg;
  cfg.shape = {2, 3, GetParam()};
  cfg.n_experts = 4;
  cfg.block_size = 16;
  cfg.granularity = Granularity::kPerHeadExpert;
  cfg.sink_tokens = 4;
  cfg.recent_window = 8;
  cfg.max_context = 4096;
  cfg.slab_blocks = 8;  // several slabs, so eviction and defragment return some
  PagedKvStore host(cfg);
  cuda::DeviceKvArenaMemory memory(gpu());
  cfg.memory = &memory;
  PagedKvStore dev(cfg);
  ASSERT_EQ(dev.arena().memory_domain(), gpu().memory_domain());
  const int hs = host.add_sequence(), ds = dev.add_sequence();
  const int H = cfg.shape.n_kv_heads, D = cfg.shape.head_dim;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int32_t> expert(0, cfg.n_experts - 1);
  int32_t next = 0;
  // n more entries per (layer, kv-head) in host sequence a and device sequence b.
  const auto append_to = [&](int a, int b, int n, bool tagged) {
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (auto& p : pos) p = next++;
    for (int l = 0; l < cfg.shape.n_layers; ++l) {
      std::vector<float> k(static_cast<size_t>(n * H * D)), v(k.size());
      for (auto& x : k) x = normal(rng);
      for (auto& x : v) x = normal(rng);
      host.cache(a).append(l, pos, k.data(), v.data());
      const DeviceFloats dk(k), dv(v);
      dev.cache(b).append(l, pos, dk.ptr, dv.ptr);
      dev.flush();  // the queued writes read dk, dv
      if (!tagged) continue;
      std::vector<int32_t> tags(static_cast<size_t>(n));
      for (auto& t : tags) t = expert(rng);
      host.cache(a).tag(l, pos, tags.data());
      dev.cache(b).tag(l, pos, tags.data());
    }
  };
  const auto append = [&](int n) { append_to(hs, ds, n, true); };
  // Keeps a random subset of every segment, the same in both stores.
  const auto evict = [&](double keep_fraction) {
    std::vector<SegmentInfo> segs;
    for (int l = 0; l < cfg.shape.n_layers; ++l) {
      segs.clear();
      host.segments(hs, l, segs);
      for (const SegmentInfo& s : segs) {
        std::vector<int32_t> keep;
        std::bernoulli_distribution coin(keep_fraction);
        for (int32_t i = 0; i < s.n_entries; ++i)
          if (coin(rng)) keep.push_back(i);
        host.keep(hs, l, s.id, keep);
        dev.keep(ds, l, s.id, keep);
      }
    }
  };
  append(301);
  expect_same_views(host, hs, dev, ds, "after the prompt");
  set_scores(host, hs, dev, ds);
  expect_same_scores(host, hs, dev, ds, "after the prompt");
  evict(0.3);
  expect_same_views(host, hs, dev, ds, "after the first eviction");
  expect_same_scores(host, hs, dev, ds, "after the first eviction");
  for (int step = 0; step < 40; ++step) {
    append(1);
    if (step % 10 == 9) {
      set_scores(host, hs, dev, ds);
      evict(0.7);
      expect_same_scores(host, hs, dev, ds, "after a decode eviction");
    }
  }
  expect_same_views(host, hs, dev, ds, "after the decode");
  EXPECT_EQ(host.bytes(hs).kv * static_cast<size_t>(dev.arena().stored_dim()),
            dev.bytes(ds).kv * static_cast<size_t>(D));
  dev.defragment();
  host.defragment();
  expect_same_views(host, hs, dev, ds, "after defragment");
  expect_same_scores(host, hs, dev, ds, "after defragment");
  // A second sequence reuses the blocks the first gives back.
  dev.remove_sequence(ds);
  host.remove_sequence(hs);
  const int hs2 = host.add_sequence(), ds2 = dev.add_sequence();
  next = 0;
  append_to(hs2, ds2, 77, false);
  expect_same_views(host, hs2, dev, ds2, "a second sequence");
  EXPECT_GT(memory.mapped_bytes(), 0u);
}

// 40 is padded to 64 in device memory; 128 is the kernel's own.
INSTANTIATE_TEST_SUITE_P(HeadDims, DeviceKvStore, ::testing::Values(40, 64, 128));

// The shipped model with SnapKV at a 25% budget, compressed layer by layer during the
// prefill and through the decode: the GPU's cache keeps (almost) the entries the CPU's
// keeps (scores come from attention over bf16-rounded activations on one side and f32
// on the other, so an entry near the cut may go either way), and the decode logits
// agree as far as those kept sets allow.
TEST(DeviceCompressedCache, KeepsWhatTheCpuKeeps) {
  SKIP_WITHOUT_GPU();
  const auto cpu_model = Model::load(kModel);
  const auto gpu_model = Model::load(kModel);
  gpu_model->place(gpu());
  const ModelConfig& c = cpu_model->config();
  CpuBackend cpu(2);
  cuda::DeviceKvArenaMemory memory(gpu());
  CompressionConfig cc;
  cc.policy = "snapkv";
  cc.allocator = "adakv";
  cc.budget = BudgetSpec::parse("25%");
  CompressedKvCache host(c, cc, 2048, cpu);
  cc.memory = &memory;
  CompressedKvCache dev(c, cc, 2048, gpu());
  std::vector<int32_t> prompt;
  for (int t = 0; t < 900; ++t) prompt.push_back(3 + (t * 7919 + 13) % (c.vocab_size - 3));
  std::vector<float> a, b;
  cpu_model->forward(prompt, host, a, false, cpu);
  gpu_model->forward(prompt, dev, b, false, gpu());
  double worst = 0;
  int same_argmax = 0, steps = 16;
  for (int s = 0; s < steps; ++s) {
    const std::vector<int32_t> tok = {static_cast<int32_t>(3 + (s * 131) % (c.vocab_size - 3))};
    cpu_model->forward(tok, host, a, false, cpu);
    gpu_model->forward(tok, dev, b, false, gpu());
    worst = std::max(worst, test::rel_error(b.data(), a.data(), a.size()));
    same_argmax += std::max_element(a.begin(), a.end()) - a.begin() ==
                   std::max_element(b.begin(), b.end()) - b.begin();
  }
  // The entries kept, per (layer, kv-head), from the host cells of both stores.
  int64_t common = 0, total = 0;
  std::vector<EntryRun> ra, rb;
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_kv_heads; ++h) {
      ra.clear();
      rb.clear();
      host.store().view_runs(host.sequence(), l, h, ra);
      dev.store().view_runs(dev.sequence(), l, h, rb);
      std::set<int32_t> pa, pb;
      for (const EntryRun& r : ra) pa.insert(r.positions, r.positions + r.n);
      for (const EntryRun& r : rb) pb.insert(r.positions, r.positions + r.n);
      for (const int32_t p : pa) common += pb.count(p);
      total += static_cast<int64_t>(std::max(pa.size(), pb.size()));
    }
  const double overlap = static_cast<double>(common) / static_cast<double>(total);
  std::cout << "[ compressed ] cuda vs cpu: " << overlap * 100 << "% of the kept entries shared, "
            << "decode logits worst rel err " << worst << ", argmax " << same_argmax << "/" << steps
            << "; " << dev.stats().live_entries << " live entries on the GPU, "
            << host.stats().live_entries << " on the CPU\n";
  // Measured on the H200: 99.45% of the kept entries shared, argmax 14 of 16, worst
  // relative error 0.18. The logits' error is the kept sets' (the full caches agree to
  // 2e-2, test_cuda_engine.cpp): attention over a few other entries, at every layer,
  // moves the logits more than bf16 rounding does; the store itself is checked bit
  // for bit above, and greedy text agrees (CudaEngineApi).
  EXPECT_GT(dev.stats().evicted_entries, 0);
  EXPECT_GE(overlap, 0.98);
  EXPECT_LT(worst, 0.3);
  EXPECT_GE(same_argmax, steps - 3);
}

TEST(DeviceCompressedCache, RefusesWhatItCannotDo) {
  SKIP_WITHOUT_GPU();
  const auto model = Model::load(kModel);
  const ModelConfig& c = model->config();
  cuda::DeviceKvArenaMemory memory(gpu());
  CompressionConfig cc;
  cc.policy = "knorm";
  cc.budget = BudgetSpec::parse("25%");
  cc.memory = &memory;
  test::expect_error([&] { CompressedKvCache(c, cc, 2048, gpu()); },
                     {"policy 'knorm'", "K rows on the host"});
  cc.policy = "snapkv";
  cc.memory = nullptr;  // a host store under the GPU's backend
  test::expect_error([&] { CompressedKvCache(c, cc, 2048, gpu()); }, {"memory domain 0", "cuda"});
  cc.memory = &memory;
  cc.kv_dtype = DType::kF32;
  test::expect_error([&] { CompressedKvCache(c, cc, 2048, gpu()); }, {"bf16"});
}

}  // namespace
}  // namespace ekva
