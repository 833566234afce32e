// Ragged decode attention on the GPU: time, TB/s over the retained K/V bytes, and the
// fraction of a read ceiling measured in the same run (a plain large-buffer read).
//
// Cases (32 query heads / 8 kv-heads, head_dim 128, bf16 K/V, one decode query per
// sequence): dense uniform (batch x context 1x32k, 8x32k, 32x4k, 64x8k); ragged
// (8 expert segments per (sequence, kv-head) with Zipf-skewed sizes, list totals
// 0.5x-1.5x the mean, batch 8/32/64 at 8k/2k/1k mean entries per segment);
// head-adaptive (2 of 8 kv-heads keep 5x); batch 1 x 1k.
// Timing: CUDA events around the launches only, median of --runs runs after three
// warm-ups, L2 flushed by a 256 MB memset before every run. Data are random bf16
// (never zero), generated on the device.
//
// --dump-dir DIR writes each case's output (f32 [batch, 32, 128], DIR/<case>.out.bin)
// and the JSON lists every (sequence, kv-head) list's length, so that
// bench/cuda/peers.py can rebuild the same inputs (the fills below are a hash of the
// element index) and check the peers' outputs against these.
//
//   ekva_bench_cuda_attention [--runs N] [--json-out PATH] [--commit SHA] [--dump-dir DIR]
//                             [--case NAME]... [--tasks-per-sm N] [--min-item-entries N]
// (the last two override the library's plan options, for tuning sweeps)
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/check.cuh"
#include "cuda/probe.cuh"
#include "ops/attention_plan.h"
#include "ops/ops.h"

namespace {

using ekva::AttentionParams;
using ekva::AttentionPlan;
using ekva::KvChunk;

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128;
constexpr size_t kEntryBytes = 2 * kDim * 2;  // K and V rows, bf16
constexpr size_t kFlushBytes = 256u << 20;

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// bf16 values in about +-1, never zero (the top bit of the mantissa is set).
__global__ void fill_bf16(uint16_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint32_t h = hash32(seed * 0x9e3779b97f4a7c15ull + i);
    // sign | exponent 126 or 127 (0.5..2) | 7 random mantissa bits with the top one set
    p[i] = static_cast<uint16_t>((h & 0x8000u) | ((126u + ((h >> 8) & 1u)) << 7) | 0x40u |
                                 (h & 0x3fu));
  }
}
__global__ void fill_f32(float* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    p[i] = (static_cast<float>(hash32(seed + 7919 * i) % 2000001u) - 1000000.f) * 1e-6f + 1e-3f;
}
__global__ void fill_iota(int32_t* p, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    p[i] = static_cast<int32_t>(i);
}

void launch_fill_bf16(uint16_t* p, size_t n, uint64_t seed) {
  fill_bf16<<<4096, 256>>>(p, n, seed);
  EKVA_CUDA_CHECK_LAUNCH();
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    EKVA_CUDA_CHECK(cudaEventCreate(&a));
    EKVA_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

// Median microseconds of fn over `runs` runs, each after an L2 flush.
template <typename Fn>
std::vector<double> time_runs(int runs, void* flush, cudaStream_t stream, Fn&& fn) {
  Timer t;
  for (int w = 0; w < 3; ++w) fn();
  std::vector<double> us;
  for (int r = 0; r < runs; ++r) {
    EKVA_CUDA_CHECK(cudaMemsetAsync(flush, r & 0xff, kFlushBytes, stream));
    EKVA_CUDA_CHECK(cudaEventRecord(t.a, stream));
    fn();
    EKVA_CUDA_CHECK(cudaEventRecord(t.b, stream));
    EKVA_CUDA_CHECK(cudaEventSynchronize(t.b));
    float ms = 0;
    EKVA_CUDA_CHECK(cudaEventElapsedTime(&ms, t.a, t.b));
    us.push_back(1e3 * ms);
  }
  std::sort(us.begin(), us.end());
  return us;
}

// One case: per (sequence, kv-head) the chunk lengths (device K/V are carved from the pools).
struct Case {
  std::string name, kind;
  int64_t batch = 1;
  std::vector<std::vector<int64_t>> chunk_n;  // [batch * kKvHeads] lists of chunk lengths
};

Case dense(int64_t batch, int64_t context) {
  Case c{"dense_" + std::to_string(batch) + "x" + std::to_string(context / 1024) + "k",
         "dense",
         batch,
         {}};
  c.chunk_n.assign(static_cast<size_t>(batch * kKvHeads), {context});
  return c;
}

// Zipf-skewed runs of 8 experts; list totals 0.5x-1.5x the mean; `boost` kv-heads keep 5x.
Case ragged(const std::string& name, const std::string& kind, int64_t batch,
            int64_t mean_per_segment, int boosted, uint64_t seed) {
  Case c{name, kind, batch, {}};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.5, 1.5);
  for (int64_t s = 0; s < batch; ++s) {
    for (int h = 0; h < kKvHeads; ++h) {
      const double factor = h < boosted ? 5.0 : 1.0;
      const auto total = static_cast<int64_t>(
          std::llround(8.0 * mean_per_segment * factor * (boosted > 0 ? 1.0 : u(rng))));
      std::vector<double> w(8);
      for (int e = 0; e < 8; ++e) w[static_cast<size_t>(e)] = 1.0 / std::pow(e + 1.0, 1.1);
      std::shuffle(w.begin(), w.end(), rng);
      double sum = 0;
      for (double x : w) sum += x;
      std::vector<int64_t> runs;
      int64_t left = total;
      for (int e = 0; e < 8; ++e) {
        const int64_t n =
            e == 7 ? left
                   : std::min<int64_t>(left, std::llround(total * w[static_cast<size_t>(e)] / sum));
        runs.push_back(n);
        left -= n;
      }
      c.chunk_n.push_back(runs);
    }
  }
  return c;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    o += ch;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 25;
  std::string json_out, commit = "unknown", dump_dir;
  std::vector<std::string> only;
  int tasks_per_sm = 0, min_item_entries = 0;  // 0: the library's plan options
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--runs" && i + 1 < argc)
      runs = std::max(20, std::atoi(argv[++i]));
    else if (a == "--json-out" && i + 1 < argc)
      json_out = argv[++i];
    else if (a == "--commit" && i + 1 < argc)
      commit = argv[++i];
    else if (a == "--dump-dir" && i + 1 < argc)
      dump_dir = argv[++i];
    else if (a == "--case" && i + 1 < argc)
      only.push_back(argv[++i]);
    else if (a == "--tasks-per-sm" && i + 1 < argc)
      tasks_per_sm = std::max(1, std::atoi(argv[++i]));
    else if (a == "--min-item-entries" && i + 1 < argc)
      min_item_entries = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr,
                   "usage: %s [--runs N>=20] [--json-out PATH] [--commit SHA] [--dump-dir DIR] "
                   "[--case NAME]... [--tasks-per-sm N] [--min-item-entries N]\n",
                   argv[0]);
      return 2;
    }
  }
  try {
    if (ekva::cuda::device_count() == 0) {
      std::fprintf(stderr, "no CUDA device\n");
      return 1;
    }
    EKVA_CUDA_CHECK(cudaSetDevice(0));
    const std::string device = ekva::cuda::device_description(0);

    std::vector<Case> cases = {
        dense(1, 32768),
        dense(8, 32768),
        dense(32, 4096),
        dense(64, 8192),
        ragged("ragged_b8_seg8k", "ragged", 8, 8192, 0, 1),
        ragged("ragged_b32_seg2k", "ragged", 32, 2048, 0, 2),
        ragged("ragged_b64_seg1k", "ragged", 64, 1024, 0, 3),
        ragged("head_adaptive_b16_seg1k", "head_adaptive", 16, 1024, 2, 4),
        dense(1, 1024),
    };

    if (!only.empty()) {
      std::vector<Case> kept;
      for (const Case& c : cases)
        if (std::find(only.begin(), only.end(), c.name) != only.end()) kept.push_back(c);
      if (kept.size() != only.size()) {
        std::fprintf(stderr, "--case: unknown case name (cases:");
        for (const Case& c : cases) std::fprintf(stderr, " %s", c.name.c_str());
        std::fprintf(stderr, ")\n");
        return 2;
      }
      cases = kept;
    }
    // Pools sized for the largest case: K and V rows, positions 0..longest list.
    size_t max_entries = 0, max_list = 0, max_queries = 0;
    for (const Case& c : cases) {
      size_t total = 0;
      for (const auto& l : c.chunk_n) {
        size_t n = 0;
        for (int64_t x : l) n += static_cast<size_t>(x);
        total += n;
        max_list = std::max(max_list, n);
      }
      max_entries = std::max(max_entries, total);
      max_queries = std::max(max_queries, static_cast<size_t>(c.batch));
    }
    uint16_t *k_pool, *v_pool;
    int32_t* positions;
    float *q, *out;
    void* flush;
    unsigned* sink;
    EKVA_CUDA_CHECK(cudaMalloc(&k_pool, max_entries * kDim * 2));
    EKVA_CUDA_CHECK(cudaMalloc(&v_pool, max_entries * kDim * 2));
    EKVA_CUDA_CHECK(cudaMalloc(&positions, max_list * 4));
    EKVA_CUDA_CHECK(cudaMalloc(&q, max_queries * kHeads * kDim * 4));
    EKVA_CUDA_CHECK(cudaMalloc(&out, max_queries * kHeads * kDim * 4));
    EKVA_CUDA_CHECK(cudaMalloc(&flush, kFlushBytes));
    EKVA_CUDA_CHECK(cudaMalloc(&sink, 4));
    launch_fill_bf16(k_pool, max_entries * kDim, 1);
    launch_fill_bf16(v_pool, max_entries * kDim, 2);
    fill_iota<<<1024, 256>>>(positions, max_list);
    EKVA_CUDA_CHECK_LAUNCH();
    fill_f32<<<1024, 256>>>(q, max_queries * kHeads * kDim, 3);
    EKVA_CUDA_CHECK_LAUNCH();
    EKVA_CUDA_CHECK(cudaDeviceSynchronize());
    cudaStream_t stream;
    EKVA_CUDA_CHECK(cudaStreamCreate(&stream));

    // The read ceiling over both pools (at least 1 GiB, several times the L2).
    const size_t read_bytes = 2 * max_entries * kDim * 2;
    int sms = 0;
    EKVA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    std::vector<double> read_us;
    {
      const auto* base = reinterpret_cast<const uint4*>(k_pool);
      // K and V pools are separate allocations: read each.
      read_us = time_runs(runs, flush, stream, [&] {
        ekva::cuda::launch_read(base, max_entries * kDim * 2, sink, stream);
        ekva::cuda::launch_read(v_pool, max_entries * kDim * 2, sink, stream);
      });
    }
    const double ceiling_tbs =
        static_cast<double>(read_bytes) / (read_us[read_us.size() / 2] * 1e-6) / 1e12;
    std::printf("%s\nread ceiling: %.3f TB/s (%.2f GB read, median %.1f us)\n", device.c_str(),
                ceiling_tbs, read_bytes / 1e9, read_us[read_us.size() / 2]);
    std::printf("%-26s %10s %8s %8s %10s %10s %8s %8s\n", "case", "entries", "items", "tasks",
                "median_us", "min_us", "TB/s", "of_ceil");

    ekva::AttentionPlanOptions plan_options = ekva::cuda::attention_plan_options(0);
    if (tasks_per_sm > 0) plan_options.min_tasks = static_cast<int64_t>(tasks_per_sm) * sms;
    if (min_item_entries > 0) plan_options.min_item_entries = min_item_entries;
    std::printf("plan: min_tasks %lld, min_item_entries %lld\n",
                static_cast<long long>(plan_options.min_tasks),
                static_cast<long long>(plan_options.min_item_entries));

    std::ostringstream js;
    const std::time_t now = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    js << "{\n  \"bench\": \"cuda_attention\",\n  \"device\": \"" << json_escape(device)
       << "\",\n  \"date\": \"" << date << "\",\n  \"commit\": \"" << json_escape(commit)
       << "\",\n  \"runs\": " << runs
       << ",\n  \"timing\": \"CUDA events, median, L2 flushed by a 256 MB memset before each "
          "run\",\n"
       << "  \"inputs\": \"K pool fill_bf16 seed 1, V pool seed 2, q fill_f32 seed 3 (this file); "
          "each case's lists are carved from the pools' start in order\",\n"
       << "  \"plan_min_tasks\": " << plan_options.min_tasks
       << ",\n  \"plan_min_item_entries\": " << plan_options.min_item_entries << ",\n"
       << "  \"read_ceiling_tbs\": " << ceiling_tbs << ",\n  \"read_ceiling_bytes\": " << read_bytes
       << ",\n  \"cases\": [\n";

    for (size_t ci = 0; ci < cases.size(); ++ci) {
      const Case& c = cases[ci];
      // Host lists of device chunks carved from the pools in order.
      std::vector<std::vector<KvChunk>> lists(c.chunk_n.size());
      size_t at = 0, entries = 0, chunks = 0;
      for (size_t li = 0; li < c.chunk_n.size(); ++li) {
        int64_t start = 0;
        for (int64_t n : c.chunk_n[li]) {
          lists[li].push_back({k_pool + at * kDim, v_pool + at * kDim, positions + start, n,
                               ekva::DType::kBF16, nullptr});
          at += static_cast<size_t>(n);
          start += n;
          ++chunks;
        }
        entries += static_cast<size_t>(start);
      }
      std::vector<int32_t> q_pos(static_cast<size_t>(c.batch)), q_seq(static_cast<size_t>(c.batch));
      for (int64_t s = 0; s < c.batch; ++s) {
        q_seq[static_cast<size_t>(s)] = static_cast<int32_t>(s);
        q_pos[static_cast<size_t>(s)] = static_cast<int32_t>(max_list);  // decode: sees every entry
      }
      AttentionParams p;
      p.n_queries = c.batch;
      p.n_heads = kHeads;
      p.n_kv_heads = kKvHeads;
      p.head_dim = kDim;
      p.scale = 1.f / std::sqrt(static_cast<float>(kDim));
      p.q = q;
      p.out = out;
      p.q_positions = q_pos.data();
      p.q_seq = q_seq.data();
      p.n_seqs = c.batch;
      const auto t0 = std::chrono::steady_clock::now();
      const AttentionPlan plan = ekva::plan_attention(p, lists, plan_options);
      const size_t ws_bytes = ekva::cuda::attention_workspace_bytes(p, lists, plan);
      void* ws;
      EKVA_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
      const auto t1 = std::chrono::steady_clock::now();
      const ekva::cuda::AttentionTable table =
          ekva::cuda::attention_prepare(p, lists, plan, ws, ws_bytes, stream);
      EKVA_CUDA_CHECK(cudaStreamSynchronize(stream));
      const auto t2 = std::chrono::steady_clock::now();
      const std::vector<double> us =
          time_runs(runs, flush, stream, [&] { ekva::cuda::attention_run(table, q, out, stream); });
      EKVA_CUDA_CHECK(cudaFree(ws));
      if (!dump_dir.empty()) {
        std::vector<float> host(static_cast<size_t>(c.batch) * kHeads * kDim);
        EKVA_CUDA_CHECK(
            cudaMemcpy(host.data(), out, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
        const std::string path = dump_dir + "/" + c.name + ".out.bin";
        std::ofstream f(path, std::ios::binary);
        f.write(reinterpret_cast<const char*>(host.data()),
                static_cast<std::streamsize>(host.size() * sizeof(float)));
        if (!f) {
          std::fprintf(stderr, "cannot write %s\n", path.c_str());
          return 1;
        }
      }
      const double median = us[us.size() / 2];
      const double kv_bytes = static_cast<double>(entries * kEntryBytes);
      const double tbs = kv_bytes / (median * 1e-6) / 1e12;
      const double plan_us = std::chrono::duration<double, std::micro>(t1 - t0).count();
      const double prepare_us = std::chrono::duration<double, std::micro>(t2 - t1).count();
      std::printf("%-26s %10zu %8zu %8lld %10.1f %10.1f %8.3f %8.3f\n", c.name.c_str(), entries,
                  plan.items.size(), static_cast<long long>(plan.n_tasks()), median, us.front(),
                  tbs, tbs / ceiling_tbs);
      js << "    {\"name\": \"" << c.name << "\", \"kind\": \"" << c.kind
         << "\", \"batch\": " << c.batch << ", \"heads\": " << kHeads
         << ", \"kv_heads\": " << kKvHeads << ", \"head_dim\": " << kDim
         << ", \"kv_dtype\": \"bf16\", \"entries\": " << entries << ", \"chunks\": " << chunks
         << ", \"kv_bytes\": " << static_cast<size_t>(kv_bytes)
         << ", \"items\": " << plan.items.size() << ", \"tasks\": " << plan.n_tasks()
         << ", \"median_us\": " << median << ", \"min_us\": " << us.front()
         << ", \"max_us\": " << us.back() << ", \"tbs\": " << tbs
         << ", \"fraction_of_read_ceiling\": " << tbs / ceiling_tbs
         << ", \"host_plan_us\": " << plan_us << ", \"host_prepare_us\": " << prepare_us
         << ", \"list_lengths\": [";
      for (size_t li = 0; li < c.chunk_n.size(); ++li) {
        int64_t n = 0;
        for (int64_t x : c.chunk_n[li]) n += x;
        js << (li ? "," : "") << n;
      }
      js << "]}" << (ci + 1 < cases.size() ? "," : "") << "\n";
    }
    js << "  ]\n}\n";
    if (!json_out.empty()) {
      std::ofstream f(json_out);
      f << js.str();
      if (!f) {
        std::fprintf(stderr, "cannot write %s\n", json_out.c_str());
        return 1;
      }
      std::printf("wrote %s\n", json_out.c_str());
    }
    cudaFree(k_pool);
    cudaFree(v_pool);
    cudaFree(positions);
    cudaFree(q);
    cudaFree(out);
    cudaFree(flush);
    cudaFree(sink);
    cudaStreamDestroy(stream);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
