#include "cuda_attention_check.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>

#include "cuda/attention.cuh"
#include "cuda/check.cuh"
#include "ekva/error.h"
#include "ops/attention_plan.h"
#include "ops/ops.h"

namespace ekva::test {

namespace {

double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double{a[i]} - double{b[i]};
    num += d * d;
    den += double{b[i]} * double{b[i]};
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return std::sqrt(num / den);  // NaN stays NaN, so `!(err < tol)` fails it
}

// Device buffer that frees itself.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    if (bytes > 0) EKVA_CUDA_CHECK(cudaMalloc(&ptr, bytes));
  }
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

template <typename T>
void upload(const DeviceBuffer& d, const std::vector<T>& h) {
  if (!h.empty())
    EKVA_CUDA_CHECK(cudaMemcpy(d.ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
template <typename T>
void download(std::vector<T>& h, const DeviceBuffer& d) {
  if (!h.empty())
    EKVA_CUDA_CHECK(cudaMemcpy(h.data(), d.ptr, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
}

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// A random ragged problem: host mirrors of everything the device holds, with the
// chunks of every list stored in a shuffled order (so a list's chunks are not
// adjacent in memory) and each list cut into 8 Zipf-sized expert segments, each
// segment into chunks of at most `block` entries.
struct Problem {
  int64_t D, KH, G, H, n_seqs, n_queries;
  std::vector<uint16_t> k, v;  // [total entries, D] bf16, chunk order = storage order
  std::vector<int32_t> pos;    // [total entries]
  std::vector<float> scores;   // [total entries] initial score slots (random, non-zero)
  std::vector<float> q;        // [n_queries, H, D]
  std::vector<int32_t> q_pos, q_seq;
  std::vector<uint8_t> q_scored;
  // Per list: (storage offset of the chunk's first entry, n, has scores).
  struct ChunkDesc {
    int64_t offset, n;
    bool scored;
  };
  std::vector<std::vector<ChunkDesc>> lists;
  int64_t total = 0;
};

Problem make_problem(const CudaAttentionCase& c) {
  std::mt19937_64 rng(c.seed);
  const auto uniform = [&](double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  const auto randint = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  Problem P;
  P.D = c.head_dim;
  P.KH = c.n_kv_heads;
  P.G = c.group;
  P.H = P.KH * P.G;
  P.n_seqs = static_cast<int64_t>(c.queries_per_seq.size());
  // Skewed list lengths: many empty and tiny, some medium, a few huge.
  std::vector<int64_t> length(static_cast<size_t>(P.n_seqs * P.KH));
  for (auto& n : length) {
    const double r = uniform(0, 1);
    n = r < 0.25   ? 0
        : r < 0.5  ? randint(1, 6)
        : r < 0.85 ? randint(7, 400)
                   : randint(c.huge / 2, c.huge);
  }
  // Every sequence with at least one non-empty list, and one list at full size.
  length[static_cast<size_t>(randint(0, P.n_seqs * P.KH - 1))] = c.huge;
  // Zipf weights over 8 experts, a random expert order per list.
  std::vector<std::vector<int64_t>> chunk_n(length.size());
  for (size_t li = 0; li < length.size(); ++li) {
    std::vector<double> w(8);
    for (int e = 0; e < 8; ++e) w[static_cast<size_t>(e)] = 1.0 / std::pow(e + 1.0, 1.1);
    std::shuffle(w.begin(), w.end(), rng);
    const double sum = std::accumulate(w.begin(), w.end(), 0.0);
    int64_t left = length[li];
    for (int e = 0; e < 8; ++e) {
      int64_t seg = e == 7 ? left
                           : std::min<int64_t>(
                                 left, std::llround(length[li] * w[static_cast<size_t>(e)] / sum));
      left -= seg;
      if (seg == 0 && uniform(0, 1) < 0.3) chunk_n[li].push_back(0);  // an empty chunk now and then
      while (seg > 0) {
        const int64_t n = c.block > 0 ? std::min(seg, randint(1, c.block)) : seg;
        chunk_n[li].push_back(n);
        seg -= n;
      }
    }
  }
  // Storage order: all chunks shuffled.
  std::vector<std::pair<size_t, size_t>> order;  // (list, chunk)
  for (size_t li = 0; li < chunk_n.size(); ++li)
    for (size_t ci = 0; ci < chunk_n[li].size(); ++ci) order.emplace_back(li, ci);
  std::shuffle(order.begin(), order.end(), rng);
  P.lists.assign(chunk_n.size(), {});
  for (size_t li = 0; li < chunk_n.size(); ++li) P.lists[li].resize(chunk_n[li].size());
  for (const auto& [li, ci] : order) {
    const int64_t n = chunk_n[li][ci];
    P.lists[li][ci] = {P.total, n, uniform(0, 1) < 0.8};
    P.total += n;
  }
  // Positions: sparse in [0, span) as in a compressed cache; the decode query sits at span.
  std::vector<int32_t> span(static_cast<size_t>(P.n_seqs), 1);
  for (int64_t s = 0; s < P.n_seqs; ++s)
    for (int64_t h = 0; h < P.KH; ++h)
      span[static_cast<size_t>(s)] = std::max<int32_t>(
          span[static_cast<size_t>(s)],
          static_cast<int32_t>(2 * length[static_cast<size_t>(s * P.KH + h)] + 1));
  P.k.resize(static_cast<size_t>(P.total * P.D));
  P.v.resize(P.k.size());
  P.pos.resize(static_cast<size_t>(P.total));
  P.scores.resize(static_cast<size_t>(P.total));
  for (auto& x : P.k) x = to_bf16(static_cast<float>(uniform(-2, 2)));
  for (auto& x : P.v) x = to_bf16(static_cast<float>(uniform(-2, 2)));
  // Small (never zero) so the added probabilities dominate each slot's rounding.
  for (auto& x : P.scores) x = static_cast<float>(uniform(1e-7, 1e-6));
  for (size_t li = 0; li < P.lists.size(); ++li) {
    const int32_t sp = span[li / static_cast<size_t>(P.KH)];
    for (const auto& ch : P.lists[li])
      for (int64_t j = 0; j < ch.n; ++j)
        P.pos[static_cast<size_t>(ch.offset + j)] = static_cast<int32_t>(randint(0, sp - 1));
  }
  // Queries in an interleaved order over the sequences; each sequence's first is a
  // decode query (sees everything), the others sit at random positions (masking).
  for (int64_t s = 0; s < P.n_seqs; ++s)
    for (int64_t j = 0; j < c.queries_per_seq[static_cast<size_t>(s)]; ++j) {
      P.q_seq.push_back(static_cast<int32_t>(s));
      P.q_pos.push_back(j == 0
                            ? span[static_cast<size_t>(s)]
                            : static_cast<int32_t>(randint(0, span[static_cast<size_t>(s)] - 1)));
    }
  std::vector<size_t> perm(P.q_seq.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> qs(perm.size()), qp(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) {
    qs[i] = P.q_seq[perm[i]];
    qp[i] = P.q_pos[perm[i]];
  }
  P.q_seq = qs;
  P.q_pos = qp;
  P.n_queries = static_cast<int64_t>(P.q_seq.size());
  P.q.resize(static_cast<size_t>(P.n_queries * P.H * P.D));
  for (auto& x : P.q) x = static_cast<float>(uniform(-1.5, 1.5));
  P.q_scored.resize(static_cast<size_t>(P.n_queries));
  for (auto& f : P.q_scored) f = c.scored && uniform(0, 1) < 0.7 ? 1 : 0;
  if (c.scored) P.q_scored[0] = 1;
  return P;
}

// KvChunk lists over base pointers (host mirrors or device buffers).
std::vector<std::vector<KvChunk>> chunk_lists(const Problem& P, const uint16_t* k,
                                              const uint16_t* v, const int32_t* pos,
                                              float* scores) {
  std::vector<std::vector<KvChunk>> out(P.lists.size());
  for (size_t li = 0; li < P.lists.size(); ++li)
    for (const auto& ch : P.lists[li])
      out[li].push_back({k + ch.offset * P.D, v + ch.offset * P.D, pos + ch.offset, ch.n,
                         DType::kBF16, ch.scored ? scores + ch.offset : nullptr});
  return out;
}

AttentionPlanOptions plan_options(const CudaAttentionCase& c) {
  AttentionPlanOptions o = cuda::attention_plan_options(0);
  if (c.min_tasks > 0) o.min_tasks = c.min_tasks;
  if (c.min_item_entries > 0) o.min_item_entries = c.min_item_entries;
  return o;
}

}  // namespace

std::vector<CudaAttentionCase> cuda_attention_cases(bool small) {
  std::vector<CudaAttentionCase> all = {
      // name, D, KH, G, queries per sequence, window, scored, block, huge, min_tasks, min_item,
      // seed
      {"d128_g4_decode_batch", 128, 8, 4, {1, 1, 1, 1, 1, 1, 1}, 0, false, 0, 6000, 0, 0, 11},
      {"d64_g1_scored_paged", 64, 3, 1, {1, 3, 1, 2}, 0, true, 16, 1500, 0, 0, 12},
      {"d128_g8_window_scored_fine", 128, 2, 8, {2, 1, 4}, 300, true, 24, 2500, 64, 7, 13},
      {"d64_g4_window_tiny_chunks", 64, 4, 4, {1, 1, 1, 1, 1, 1}, 37, false, 5, 900, 32, 13, 14},
      {"d128_g1_huge", 128, 2, 1, {1, 1}, 0, false, 0, 40000, 0, 0, 15},
      {"d64_g8_prefill_mask_scored", 64, 1, 8, {9, 5}, 0, true, 64, 700, 16, 33, 16},
      {"d128_g3_odd_group", 128, 2, 3, {1, 2, 1}, 0, true, 40, 1200, 0, 0, 17},
      {"d64_g7_odd_group_window", 64, 1, 7, {3, 1, 1}, 129, false, 0, 2000, 40, 50, 18},
      {"d64_g5_scored", 64, 2, 5, {1, 1, 1, 1}, 0, true, 9, 600, 0, 0, 19},
      {"d128_g2_batch16_scored",
       128,
       4,
       2,
       {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
       0,
       true,
       0,
       3000,
       0,
       0,
       20},
      {"d128_g4_window_long", 128, 8, 4, {1, 1, 2}, 1000, true, 128, 12000, 0, 0, 21},
      {"d64_g6_one_item_per_task", 64, 2, 6, {1, 4}, 0, false, 32, 800, 100000, 1, 22},
  };
  if (!small) return all;
  std::vector<CudaAttentionCase> out;
  for (CudaAttentionCase c : all) {
    if (c.huge > 2500) continue;
    c.huge = std::min<int64_t>(c.huge, 600);
    out.push_back(c);
  }
  return out;
}

CudaAttentionResult run_cuda_attention_case(const CudaAttentionCase& c) {
  CudaAttentionResult res;
  const Problem P = make_problem(c);
  res.entries = P.total;
  const size_t out_n = static_cast<size_t>(P.n_queries * P.H * P.D);

  // Reference on the host copies.
  std::vector<float> ref_out(out_n, NAN), ref_scores = P.scores;
  std::vector<uint16_t> hk = P.k, hv = P.v;
  std::vector<int32_t> hpos = P.pos;
  const auto host_lists = chunk_lists(P, hk.data(), hv.data(), hpos.data(), ref_scores.data());
  AttentionParams hp;
  hp.n_queries = P.n_queries;
  hp.n_heads = P.H;
  hp.n_kv_heads = P.KH;
  hp.head_dim = P.D;
  hp.scale = 1.f / std::sqrt(static_cast<float>(P.D));
  hp.sliding_window = c.window;
  hp.q = P.q.data();
  hp.q_positions = P.q_pos.data();
  hp.out = ref_out.data();
  hp.q_seq = P.q_seq.data();
  hp.n_seqs = P.n_seqs;
  hp.q_scored = c.scored ? P.q_scored.data() : nullptr;
  ref::attention(hp, host_lists);

  // The GPU, batched.
  DeviceBuffer dk(P.k.size() * 2), dv(P.v.size() * 2), dpos(P.pos.size() * 4),
      dscores(P.scores.size() * 4), dq(P.q.size() * 4), dout(out_n * 4);
  upload(dk, P.k);
  upload(dv, P.v);
  upload(dpos, P.pos);
  upload(dscores, P.scores);
  upload(dq, P.q);
  EKVA_CUDA_CHECK(cudaMemset(dout.ptr, 0xff, out_n * 4));  // NaN poison
  const auto dev_lists =
      chunk_lists(P, dk.as<uint16_t>(), dv.as<uint16_t>(), dpos.as<int32_t>(), dscores.as<float>());
  const AttentionPlan plan = plan_attention(hp, host_lists, plan_options(c));
  res.items = static_cast<int64_t>(plan.items.size());
  res.tasks = plan.n_tasks();
  AttentionParams dp = hp;
  dp.q = dq.as<float>();
  dp.out = dout.as<float>();
  const size_t ws_bytes = cuda::attention_workspace_bytes(dp, dev_lists, plan);
  DeviceBuffer ws(ws_bytes);
  cudaStream_t stream;
  EKVA_CUDA_CHECK(cudaStreamCreate(&stream));
  const cuda::AttentionTable table =
      cuda::attention_prepare(dp, dev_lists, plan, ws.ptr, ws_bytes, stream);
  cuda::attention_run(table, dp.q, dp.out, stream);
  EKVA_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> out(out_n), scores(P.scores.size());
  download(out, dout);
  download(scores, dscores);
  res.out_err = rel_err(out.data(), ref_out.data(), out_n);
  if (c.scored) {  // compare what was added (the slots start non-zero)
    std::vector<float> got_add(scores.size()), ref_add(scores.size());
    for (size_t i = 0; i < scores.size(); ++i) {
      got_add[i] = scores[i] - P.scores[i];
      ref_add[i] = ref_scores[i] - P.scores[i];
    }
    res.score_err = rel_err(got_add.data(), ref_add.data(), scores.size());
  }

  // Graph capture of the launches, replayed: the same bits (no atomics in out).
  {
    EKVA_CUDA_CHECK(cudaMemsetAsync(dout.ptr, 0xff, out_n * 4, stream));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    EKVA_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    cuda::attention_run(table, dp.q, dp.out, stream);
    EKVA_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    EKVA_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    EKVA_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    EKVA_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<float> again(out_n);
    download(again, dout);
    for (size_t i = 0; i < out_n; ++i)
      if (std::memcmp(&again[i], &out[i], 4) != 0) {
        const double d = std::fabs(double{again[i]} - double{out[i]});
        res.graph_diff = std::isnan(d) ? INFINITY : std::max(res.graph_diff, d + 1e-30);
      }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }

  // Per request: each sequence alone (its queries, its lists, its own plan), unscored.
  for (int64_t s = 0; s < P.n_seqs; ++s) {
    std::vector<int64_t> rows;
    for (int64_t t = 0; t < P.n_queries; ++t)
      if (P.q_seq[static_cast<size_t>(t)] == s) rows.push_back(t);
    const auto n = static_cast<int64_t>(rows.size());
    const size_t row = static_cast<size_t>(P.H * P.D);
    std::vector<float> q1(static_cast<size_t>(n) * row), want(static_cast<size_t>(n) * row),
        got(want.size());
    std::vector<int32_t> pos1(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const auto t = static_cast<size_t>(rows[static_cast<size_t>(i)]);
      std::copy_n(P.q.begin() + static_cast<std::ptrdiff_t>(t * row), row,
                  q1.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(i) * row));
      std::copy_n(out.begin() + static_cast<std::ptrdiff_t>(t * row), row,
                  want.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(i) * row));
      pos1[static_cast<size_t>(i)] = P.q_pos[t];
    }
    DeviceBuffer dq1(q1.size() * 4), dout1(got.size() * 4);
    upload(dq1, q1);
    EKVA_CUDA_CHECK(cudaMemset(dout1.ptr, 0xff, got.size() * 4));
    std::vector<std::vector<KvChunk>> lists1(dev_lists.begin() + s * P.KH,
                                             dev_lists.begin() + (s + 1) * P.KH);
    AttentionParams p1 = dp;
    p1.n_queries = n;
    p1.q = dq1.as<float>();
    p1.out = dout1.as<float>();
    p1.q_positions = pos1.data();
    p1.q_seq = nullptr;
    p1.n_seqs = 1;
    p1.q_scored = nullptr;
    const AttentionPlan plan1 = plan_attention(p1, lists1, plan_options(c));
    const size_t bytes1 = cuda::attention_workspace_bytes(p1, lists1, plan1);
    DeviceBuffer ws1(bytes1);
    cuda::attention(p1, lists1, plan1, ws1.ptr, bytes1, stream);
    EKVA_CUDA_CHECK(cudaStreamSynchronize(stream));
    download(got, dout1);
    res.per_request_err =
        std::max(res.per_request_err, rel_err(got.data(), want.data(), got.size()));
    if (std::isnan(rel_err(got.data(), want.data(), got.size()))) res.per_request_err = NAN;
  }
  EKVA_CUDA_CHECK(cudaStreamDestroy(stream));

  std::ostringstream os;
  os << c.name << ": " << P.n_queries << " queries, " << P.total << " entries, " << res.items
     << " items, " << res.tasks << " tasks; out err " << res.out_err << ", score err "
     << res.score_err << ", per-request err " << res.per_request_err << ", graph diff "
     << res.graph_diff;
  res.ok = res.out_err < kCudaAttentionTolerance && res.score_err < kCudaAttentionTolerance &&
           res.per_request_err < kCudaPerRequestTolerance && res.graph_diff == 0;
  res.detail = os.str();
  return res;
}

std::string check_cuda_attention_rejects() {
  std::vector<uint16_t> kv(64 * 128 * 2, 0x3f80);
  std::vector<int32_t> pos(64, 0);
  int32_t q_pos = 0;
  const auto attempt = [&](int64_t heads, int64_t kv_heads, int64_t dim, DType dtype,
                           const std::string& expect) -> std::string {
    std::vector<std::vector<KvChunk>> lists(static_cast<size_t>(kv_heads));
    for (auto& l : lists) l.push_back({kv.data(), kv.data(), pos.data(), 4, dtype, nullptr});
    AttentionParams p;
    p.n_queries = 1;
    p.n_heads = heads;
    p.n_kv_heads = kv_heads;
    p.head_dim = dim;
    p.q_positions = &q_pos;
    const AttentionPlan plan = plan_attention(p, lists);
    try {
      (void)cuda::attention_workspace_bytes(p, lists, plan);
    } catch (const Error& e) {
      if (std::string(e.what()).find(expect) != std::string::npos) return "";
      return "error '" + std::string(e.what()) + "' lacks '" + expect + "'";
    }
    return "no error for heads " + std::to_string(heads) + "/" + std::to_string(kv_heads) +
           " dim " + std::to_string(dim);
  };
  for (const std::string& why :
       {attempt(8, 1, 80, DType::kBF16, "head_dim 80"),
        attempt(16, 1, 128, DType::kBF16, "group of 16"), attempt(4, 2, 64, DType::kF32, "bf16"),
        attempt(6, 4, 64, DType::kBF16, "not a multiple")})
    if (!why.empty()) return why;
  return "";
}

}  // namespace ekva::test
