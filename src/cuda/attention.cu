// Ragged decode attention on the GPU: one thread block per plan task.
//
// Why one block per task (not per item): the planner packs tiny items (many empty or
// short (query, kv-head) lists) into tasks of about item_entries entries and splits
// long lists into items of at most that size, so tasks are the unit of balanced work.
// A block streams the K/V tiles of all its items through one cp.async pipeline, so
// the loads of the next items are in flight while the current one is computed (a
// block per tiny item would pay a full load latency each).
//
// Block layout (Config): kWarps warps, each taking 16 rows of every tile. Scores and
// outputs run on the tensor cores (mma.sync m16n8k8, TF32 in, FP32 accumulate): the
// GQA group's G query heads are the M rows of the MMA (padded to 16 with zeros), the
// tile's entries its N columns for S = Q K^T and its K dimension for O = P V. K/V
// stay bf16 in memory and shared memory; a bf16 value is a TF32 value with its low
// bits zero, so widening it is one shift or mask and exact, and only q (pre-scaled by
// scale * log2 e: the softmax runs in the exp2 domain) and p are rounded to TF32
// (11-bit mantissa, a relative error of 2^-11 against bf16's 2^-8 on K/V). A CUDA-core
// formulation spends about 120 warp instructions per entry on conversions, FMAs and
// shuffles (G heads re-reading each K/V element) and is issue-bound at half the
// bandwidth; here an entry costs a few instructions and each K/V row is read from
// global memory once per block.
//
// The MMA's K index order is free as long as A and B agree, and it is chosen so that
// fragments come straight from ldmatrix: lane (group g, thread t) gets the bf16 pair
// (2t, 2t + 1) of a row and uses them as k = t and k = t + 4. With that order the S
// accumulator of an 8-entry column block is already the A fragment of P for the same
// 8 entries in P V (the FlashAttention-2 register reuse, without any shuffle).
//
// Shared memory rows are XOR-swizzled by 16-byte chunk (chunk ^ (row & 7)) so that
// ldmatrix's eight row reads of one chunk hit eight different bank groups.
//
// Pipeline: kStages stages of kTile rows each (K [kTile, D] and V [kTile, D] bf16,
// positions [kTile], and on an item's first tile its q [G, D] f32), filled with
// cp.async (16-byte, rows past the item's end zero-filled so no garbage reaches the
// MMAs), kStages - 1 tiles ahead of the compute. Tiles never cross items; they may
// cross chunks (each row looks its chunk up, walking forward from the tile's chunk).
//
// After the pass: merge_kernel, one block per (query, kv-head, head of the group),
// combines the items' partials by log-sum-exp into out and keeps the final (m, l); score_kernel,
// one block per scored item, turns the raw logits into probabilities summed over the group and adds
// them to the chunks' score slots (atomicAdd: several scored queries of one sequence may share
// slots).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#include "cuda/attention.cuh"
#include "cuda/check.cuh"

namespace ekva::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr size_t kAlign = 256;

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

[[noreturn]] void fail_arg(const std::string& message, const char* file, int line) {
  fail_argument(message.c_str(), file, line);
}
#define EKVA_ATTN_REQUIRE(cond, message)                                                     \
  do {                                                                                       \
    if (!(cond)) fail_arg(std::string("cuda::attention: ") + (message), __FILE__, __LINE__); \
  } while (0)

// What the kernels read: the packed table plus scratch and the call's tensors.
struct KernelParams {
  const int4* items;            // [n_items] (query, kv_head, begin, end)
  const int* task_begin;        // [n_tasks + 1]
  const int* merge_begin;       // [n_pairs + 1]
  const long long* raw_offset;  // [n_items] offset in raw of a scored item's [G, len] logits, or -1
  const int* q_pos;             // [n_queries]
  const int* q_list;            // [n_queries] seq * n_kv_heads: list of kv-head 0
  const int* list_begin;        // [n_lists + 1] CSR into the chunk arrays
  const int* chunk_start;       // [n_chunks] first entry of the chunk, counted within its list
  const int* chunk_end;         // [n_chunks] one past its last
  const uint16_t* const* chunk_k;  // [n_chunks] bf16 [n, D]
  const uint16_t* const* chunk_v;
  const int* const* chunk_pos;  // [n_chunks] int32 [n]
  float* const* chunk_scores;   // [n_chunks] f32 [n] or nullptr
  const float* q;               // [n_queries, n_heads, D]
  float* out;                   // [n_queries, n_heads, D]
  float* part_m;
  float* part_l;
  float* part_o;
  float* final_m;
  float* final_l;
  float* raw;
  int n_heads;
  int n_kv_heads;
  int head_dim;
  int group;
  float scale_log2;  // scale * log2(e)
  int window;        // 0: none
};

template <int D, int G>
struct Config {
  static constexpr int kVec = 8;            // bf16 per 16-byte chunk
  static constexpr int kChunks = D / kVec;  // 16-byte chunks per K/V row
  static constexpr int kWarps = 4;          // each takes 16 rows of a tile
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTile = 16 * kWarps;  // rows per stage
  // Stages: at D = 128 a stage is ~34 KB, so two stages (~84 KB with the merge
  // scratch) let two blocks share an SM with two 32 KB tiles in flight; at D = 64
  // three stages fit in the same room.
#ifdef EKVA_ATTN_STAGES  // a tuning build (scripts/device_cuda_attention.sh variants)
  static constexpr int kStages = EKVA_ATTN_STAGES;
#else
  static constexpr int kStages = D >= 128 ? 2 : 3;
#endif
  static constexpr int kRowStep = kThreads / kChunks;  // loader: rows apart per thread
  // Stage layout, bytes: K, V (bf16 [kTile, D], swizzled), Q (f32 [G, D]), positions (int [kTile]).
  static constexpr int kOffV = kTile * D * 2;
  static constexpr int kOffQ = 2 * kTile * D * 2;
  static constexpr int kOffPos = kOffQ + G * D * 4;
  static constexpr int kStageBytes = kOffPos + kTile * 4;
  // After the stages: merge scratch (o [kWarps, G, D], m and l [kWarps, G]).
  static constexpr int kMergeBytes = (kWarps * G * D + 2 * kWarps * G) * 4;
  static constexpr int kSmemBytes = kStages * kStageBytes + kMergeBytes;
  static_assert(G >= 1 && G <= 8, "the group's heads fill at most 8 of the MMA's 16 rows");
  static_assert(D % 32 == 0, "ldmatrix.x4 takes four 8-column blocks of a row");
  static_assert(kTile % kRowStep == 0, "the loader covers a tile in whole passes");
  static_assert(kStageBytes % 16 == 0, "16-byte aligned stages");
};

// Element offset of (row, 16-byte chunk) in a swizzled [rows, D] bf16 tile.
template <int D>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return (row * (D / 8) + (chunk ^ (row & 7))) * 8;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Four 8x8 b16 matrices from shared memory; lane l gives the address of row l % 8 of
// matrix l / 8, and gets, of matrix i, row l / 4 and columns 2 (l % 4), + 1 (r<i>; the
// transposed form: rows 2 (l % 4), + 1 and column l / 4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                            const uint16_t* row) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3, const uint16_t* row) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(s));
}
// c += A B for a 16x8x8 TF32 product whose A rows 8-15 are zero: lane (g, t) gives
// A[g][t] (a0) and A[g][t + 4] (a2), B[t][g] (b0) and B[t + 4][g] (b1), and holds
// C[g][2t], C[g][2t + 1] (c0, c1; c2 and c3, rows g + 8, stay zero).
__device__ __forceinline__ void mma_tf32(float& c0, float& c1, float& c2, float& c3, uint32_t a0,
                                         uint32_t a2, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}
// f32 to TF32, rounded to nearest (ties away), as the bits the MMA reads.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
// The two bf16 of a packed pair as TF32 bits (exact: a bf16 is a TF32 with zero low bits).
__device__ __forceinline__ uint32_t tf32_lo(uint32_t x) { return x << 16; }
__device__ __forceinline__ uint32_t tf32_hi(uint32_t x) { return x & 0xffff0000u; }

// The first chunk of list `list` whose end is past entry e (e < the list's length).
__device__ __forceinline__ int find_chunk(const KernelParams& p, int list, int e) {
  int lo = p.list_begin[list], hi = p.list_begin[list + 1] - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (p.chunk_end[mid] > e)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Position in a task's stream of tiles: item, its entry range, the tile's first entry
// and (for the loader) the chunk holding it. Every thread of the block holds the same.
// The chunk a loader is in, kept in registers so that a row's source address costs no
// memory access unless the row is in a later chunk (rare: chunks are long or few).
struct ChunkRef {
  int index;
  int start;  // entries counted within the list
  int end;
  const uint16_t* k;
  const uint16_t* v;
  const int* pos;
};

__device__ __forceinline__ void load_chunk(ChunkRef& c, const KernelParams& p, int index) {
  c.index = index;
  c.start = p.chunk_start[index];
  c.end = p.chunk_end[index];
  c.k = p.chunk_k[index];
  c.v = p.chunk_v[index];
  c.pos = p.chunk_pos[index];
}

// Moves c forward to the chunk holding entry e (e below the list's length).
__device__ __forceinline__ void seek_chunk(ChunkRef& c, const KernelParams& p, int e) {
  while (e >= c.end) load_chunk(c, p, c.index + 1);
}

struct Cursor {
  int item;
  int item_limit;
  int query;
  int kv_head;
  int list;
  int begin;
  int end;
  int tile;
  ChunkRef chunk;  // the loader's: the chunk holding entry `tile`
};

template <bool kChunk>
__device__ __forceinline__ void seek_item(Cursor& c, const KernelParams& p) {
  for (; c.item < c.item_limit; ++c.item) {
    const int4 it = p.items[c.item];
    if (it.z >= it.w) continue;  // empty: the merge skips it, nothing to compute
    c.query = it.x;
    c.kv_head = it.y;
    c.begin = it.z;
    c.end = it.w;
    c.tile = it.z;
    c.list = p.q_list[it.x] + it.y;
    if constexpr (kChunk) load_chunk(c.chunk, p, find_chunk(p, c.list, it.z));
    return;
  }
}

template <int kTile, bool kChunk>
__device__ __forceinline__ void advance(Cursor& c, const KernelParams& p) {
  c.tile += kTile;
  if (c.tile >= c.end) {
    ++c.item;
    seek_item<kChunk>(c, p);
  } else if constexpr (kChunk) {
    seek_chunk(c.chunk, p, c.tile);
  }
}

template <int D, int G>
__device__ __forceinline__ void load_tile(const Cursor& c, const KernelParams& p,
                                          unsigned char* stage) {
  using C = Config<D, G>;
  if (c.item >= c.item_limit) return;
  const int tid = static_cast<int>(threadIdx.x);
  uint16_t* sk = reinterpret_cast<uint16_t*>(stage);
  uint16_t* sv = reinterpret_cast<uint16_t*>(stage + C::kOffV);
  const int col = tid % C::kChunks;
  ChunkRef chunk = c.chunk;
  for (int r = tid / C::kChunks; r < C::kTile; r += C::kRowStep) {
    const int e = c.tile + r;
    const bool valid = e < c.end;
    const void* ks = p.q;  // any valid address: nothing is read when !valid
    const void* vs = p.q;
    if (valid) {
      seek_chunk(chunk, p, e);
      const size_t off = static_cast<size_t>(e - chunk.start) * D + col * C::kVec;
      ks = chunk.k + off;
      vs = chunk.v + off;
    }
    cp_async16(sk + swizzled<D>(r, col), ks, valid);
    cp_async16(sv + swizzled<D>(r, col), vs, valid);
  }
  int* spos = reinterpret_cast<int*>(stage + C::kOffPos);
  chunk = c.chunk;
  for (int r = tid; r < C::kTile; r += C::kThreads) {
    const int e = c.tile + r;
    const bool valid = e < c.end;
    const void* src = p.q;
    if (valid) {
      seek_chunk(chunk, p, e);
      src = chunk.pos + (e - chunk.start);
    }
    cp_async4(spos + r, src, valid);
  }
  if (c.tile == c.begin) {  // the item's first tile also brings its q
    float* sq = reinterpret_cast<float*>(stage + C::kOffQ);
    const float* q =
        p.q + (static_cast<size_t>(c.query) * p.n_heads + static_cast<size_t>(c.kv_head) * G) * D;
    for (int i = tid; i < G * D / 4; i += C::kThreads) cp_async16(sq + 4 * i, q + 4 * i, true);
  }
}

template <int D, int G>
__global__ void __launch_bounds__(Config<D, G>::kThreads) attend_kernel(const KernelParams p) {
  using C = Config<D, G>;
  constexpr int kN = D / 8;  // 8-column blocks of a row: k-steps of S, n-tiles of O
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int g = lane / 4;  // the head this lane's fragments hold (valid below G)
  const int t = lane % 4;

  const int task = static_cast<int>(blockIdx.x);
  Cursor ld{};
  ld.item = p.task_begin[task];
  ld.item_limit = p.task_begin[task + 1];
  seek_item<true>(ld, p);
  Cursor cp = ld;  // the compute cursor trails the loader by kStages - 1 tiles

#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    load_tile<D, G>(ld, p, smem + s * C::kStageBytes);
    cp_async_commit();
    if (ld.item < ld.item_limit) advance<C::kTile, true>(ld, p);
  }

  uint32_t qa[kN][2];            // A of S: q[g][8 ks + 2 t] and [+ 1] as TF32 (k = t, t + 4)
  float o[kN][4];                // C of O: o[g][8 n + 2 t], [+ 1] (o[n][2..3]: the zero rows)
  float m = -INFINITY, l = 0.f;  // l: this lane's columns only, summed over the quad at the end
  int q_pos = 0;
  long long raw_base = -1;
  int stage = 0;
  // The rows this warp computes, and the row this lane addresses for ldmatrix.
  const int warp_row = 16 * warp;
  while (cp.item < cp.item_limit) {
    cp_async_wait<C::kStages - 2>();
    __syncthreads();
    // Refill the stage computed in the previous iteration (every thread is past it).
    load_tile<D, G>(ld, p, smem + ((stage + C::kStages - 1) % C::kStages) * C::kStageBytes);
    cp_async_commit();
    if (ld.item < ld.item_limit) advance<C::kTile, true>(ld, p);

    const unsigned char* st = smem + stage * C::kStageBytes;
    if (cp.tile == cp.begin) {  // a new item: its q, fresh softmax state
      const float* sq = reinterpret_cast<const float*>(st + C::kOffQ) + g * D + 2 * t;
#pragma unroll
      for (int ks = 0; ks < kN; ++ks) {
        float2 x = make_float2(0.f, 0.f);
        if (g < G) x = *reinterpret_cast<const float2*>(sq + 8 * ks);
        qa[ks][0] = to_tf32(x.x * p.scale_log2);
        qa[ks][1] = to_tf32(x.y * p.scale_log2);
      }
#pragma unroll
      for (int n = 0; n < kN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
      m = -INFINITY;
      l = 0.f;
      q_pos = p.q_pos[cp.query];
      raw_base = p.raw_offset[cp.item];
    }
    const uint16_t* sk = reinterpret_cast<const uint16_t*>(st);
    const uint16_t* sv = reinterpret_cast<const uint16_t*>(st + C::kOffV);
    const int* spos = reinterpret_cast<const int*>(st + C::kOffPos);

    // S for the warp's two 8-row blocks j: s[j][c] = score of head g, row 8 j + 2 t + c.
    float s[2][4] = {};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int row = warp_row + 8 * j + lane % 8;
#pragma unroll
      for (int kq = 0; kq < kN / 4; ++kq) {
        uint32_t b[4];
        ldmatrix_x4(b[0], b[1], b[2], b[3], sk + swizzled<D>(row, 4 * kq + lane / 8));
#pragma unroll
        for (int i = 0; i < 4; ++i)
          mma_tf32(s[j][0], s[j][1], s[j][2], s[j][3], qa[4 * kq + i][0], qa[4 * kq + i][1],
                   tf32_lo(b[i]), tf32_hi(b[i]));
      }
    }
    // Masks (log2 domain, -inf where hidden) and the raw logits of a scored item.
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int r = warp_row + 8 * j + 2 * t + c;
        const int e = cp.tile + r;
        const int k_pos = spos[r];
        const bool visible = e < cp.end && k_pos <= q_pos &&
                             (p.window == 0 || static_cast<long long>(q_pos) - k_pos < p.window);
        s[j][c] = visible ? s[j][c] : -INFINITY;
        tile_max = fmaxf(tile_max, s[j][c]);
        if (raw_base >= 0 && g < G && e < cp.end)
          p.raw[raw_base + static_cast<long long>(g) * (cp.end - cp.begin) + (e - cp.begin)] =
              s[j][c];
      }
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float m_new = fmaxf(m, tile_max);
    // Every lane runs the MMAs (they are warp-wide); a head with nothing visible yet
    // keeps m = -inf, weights 0 and correction 1.
    const bool none = m_new == -INFINITY;
    const float correction = none ? 1.f : exp2f(m - m_new);  // 0 while m is -inf
    l *= correction;
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      o[n][0] *= correction;
      o[n][1] *= correction;
    }
    uint32_t pa[2][2];  // A of P V: p[g][row 8 j + 2 t] and [+ 1] as TF32 (k = t, t + 4)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        pa[j][c] = to_tf32(none ? 0.f : exp2f(s[j][c] - m_new));
        l += __uint_as_float(pa[j][c]);  // the weights as the MMA uses them
      }
    }
    m = m_new;
    // O += P V: per 8-row block j (the MMA's K), four 8-column blocks per ldmatrix.
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int row = warp_row + 8 * j + lane % 8;
#pragma unroll
      for (int nq = 0; nq < kN / 4; ++nq) {
        uint32_t b[4];
        ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sv + swizzled<D>(row, 4 * nq + lane / 8));
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float* on = o[4 * nq + i];
          mma_tf32(on[0], on[1], on[2], on[3], pa[j][0], pa[j][1], tf32_lo(b[i]), tf32_hi(b[i]));
        }
      }
    }

    if (cp.tile + C::kTile >= cp.end) {  // the item's last tile: write its partial
      // Warps hold partials over different rows: merge them by log-sum-exp.
      const float l_head = l + __shfl_xor_sync(0xffffffffu, l, 1);
      const float l_sum = l_head + __shfl_xor_sync(0xffffffffu, l_head, 2);
      const int item = cp.item;
      float* so = reinterpret_cast<float*>(smem + C::kStages * C::kStageBytes);  // [kWarps, G, D]
      float* sm = so + C::kWarps * G * D;                                        // [kWarps, G]
      float* sl = sm + C::kWarps * G;
      if (g < G) {
        float* row = so + (warp * G + g) * D + 2 * t;
#pragma unroll
        for (int n = 0; n < kN; ++n)
          *reinterpret_cast<float2*>(row + 8 * n) = make_float2(o[n][0], o[n][1]);
        if (t == 0) {
          sm[warp * G + g] = m;
          sl[warp * G + g] = l_sum;
        }
      }
      __syncthreads();
      // (The next write to this scratch comes after the next loop-top barrier.)
      for (int idx = tid; idx < G * D; idx += C::kThreads) {
        const int h = idx / D;
        const int d = idx % D;
        float mm = -INFINITY;
#pragma unroll
        for (int w = 0; w < C::kWarps; ++w) mm = fmaxf(mm, sm[w * G + h]);
        float ll = 0.f, oo = 0.f;
        if (mm != -INFINITY) {
#pragma unroll
          for (int w = 0; w < C::kWarps; ++w) {
            const float x = exp2f(sm[w * G + h] - mm);
            ll = fmaf(sl[w * G + h], x, ll);
            oo = fmaf(so[(w * G + h) * D + d], x, oo);
          }
        }
        p.part_o[(static_cast<size_t>(item) * G + h) * D + d] = oo;
        if (d == 0) {
          p.part_m[item * G + h] = mm;
          p.part_l[item * G + h] = ll;
        }
      }
    }
    advance<C::kTile, false>(cp, p);
    stage = (stage + 1) % C::kStages;
  }
  cp_async_wait_all();
}

// Max (kMax) or sum of v over the block's threads, for every thread.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  __syncthreads();  // scratch free (an earlier reduction may still read it)
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < n_warps; ++w) v = kMax ? fmaxf(v, scratch[w]) : v + scratch[w];
  return v;
}

constexpr int kMergeThreads = 128;  // at least head_dim: thread d sums column d
constexpr int kMergeChunk = 256;    // items whose weights sit in shared memory at once

// out of one (query, kv-head, head of the group): the log-sum-exp merge of the pair's
// non-empty items. The items' weights are computed in parallel (a chunk at a time) and
// every column's sum then runs over independent loads, so a pair with hundreds of items
// (one long sequence split to fill the GPU) costs a few microseconds, not a serial chain.
__global__ void __launch_bounds__(kMergeThreads) merge_kernel(const KernelParams p) {
  const int G = p.group;
  const int D = p.head_dim;
  const int pair = static_cast<int>(blockIdx.x) / G;
  const int g = static_cast<int>(blockIdx.x) % G;
  const int t = pair / p.n_kv_heads;
  const int h = pair % p.n_kv_heads;
  const int i0 = p.merge_begin[pair];
  const int i1 = p.merge_begin[pair + 1];
  const int tid = static_cast<int>(threadIdx.x);
  __shared__ float weight[kMergeChunk];
  __shared__ float scratch[kMergeThreads / 32];

  float mm = -INFINITY;
  for (int i = i0 + tid; i < i1; i += kMergeThreads) {
    const int4 it = p.items[i];
    if (it.z < it.w) mm = fmaxf(mm, p.part_m[i * G + g]);
  }
  mm = block_reduce<true>(mm, scratch);
  float ll = 0.f, oo = 0.f;
  if (mm != -INFINITY) {
    for (int c0 = i0; c0 < i1; c0 += kMergeChunk) {
      const int c1 = min(c0 + kMergeChunk, i1);
      __syncthreads();  // the previous chunk's weights are used up
      for (int i = c0 + tid; i < c1; i += kMergeThreads) {
        const int4 it = p.items[i];
        // 0 for an empty item (its partial was never written) and one that underflows.
        const float w = it.z < it.w ? exp2f(p.part_m[i * G + g] - mm) : 0.f;
        weight[i - c0] = w;
        if (w != 0.f) ll = fmaf(p.part_l[i * G + g], w, ll);
      }
      __syncthreads();
      if (tid < D) {
        const float* po = p.part_o + static_cast<size_t>(g) * D + tid;
        // Unconditional loads (a branch around them serialises their latency: 60 us
        // for 128 items); an empty item's partial was never written and may hold
        // NaN, so its value is selected away rather than multiplied by 0.
#pragma unroll 8
        for (int i = c0; i < c1; ++i) {
          const float w = weight[i - c0];
          const float x = po[static_cast<size_t>(i) * G * D];
          oo = fmaf(w != 0.f ? x : 0.f, w, oo);
        }
      }
    }
  }
  ll = block_reduce<false>(ll, scratch);  // (every thread takes part: mm is block-uniform)
  if (tid < D)
    p.out[(static_cast<size_t>(t) * p.n_heads + static_cast<size_t>(h) * G + g) * D + tid] =
        ll > 0.f ? oo / ll : 0.f;
  if (tid == 0 && p.final_m != nullptr) {
    p.final_m[pair * G + g] = mm;
    p.final_l[pair * G + g] = ll;
  }
}

// One scored item: every entry's probability, summed over the group's heads, added
// to its chunk's score slot.
__global__ void score_kernel(const KernelParams p) {
  const int item = static_cast<int>(blockIdx.x);
  const long long raw_base = p.raw_offset[item];
  if (raw_base < 0) return;  // whole block: not scored (or empty)
  const int4 it = p.items[item];
  const int G = p.group;
  const int pair = it.x * p.n_kv_heads + it.y;
  const int list = p.q_list[it.x] + it.y;
  __shared__ float fm[8], fl[8];
  if (static_cast<int>(threadIdx.x) < G) {
    fm[threadIdx.x] = p.final_m[pair * G + static_cast<int>(threadIdx.x)];
    fl[threadIdx.x] = p.final_l[pair * G + static_cast<int>(threadIdx.x)];
  }
  __syncthreads();
  const int len = it.w - it.z;
  // Each thread's entries increase, so its chunk only moves forward: one search, then
  // a step per chunk boundary crossed (a paged store's lists are many short chunks).
  int c = -1;
  for (int e = it.z + static_cast<int>(threadIdx.x); e < it.w; e += static_cast<int>(blockDim.x)) {
    if (c < 0)
      c = find_chunk(p, list, e);
    else
      while (p.chunk_end[c] <= e) ++c;
    float* slot = p.chunk_scores[c];
    if (slot == nullptr) continue;
    float prob = 0.f;
    for (int g = 0; g < G; ++g) {
      const float x = p.raw[raw_base + static_cast<long long>(g) * len + (e - it.z)];
      if (x != -INFINITY && fl[g] > 0.f) prob += exp2f(x - fm[g]) / fl[g];
    }
    atomicAdd(slot + (e - p.chunk_start[c]), prob);
  }
}

// Byte layout of the workspace: the packed table first, then the scratch.
struct Layout {
  size_t items, task_begin, merge_begin, raw_offset, q_pos, q_list, list_begin, chunk_start,
      chunk_end, chunk_k, chunk_v, chunk_pos, chunk_scores, table_bytes;
  size_t part_m, part_l, part_o, final_m, final_l, raw, total;
  int64_t n_chunks, raw_floats;
};

Layout make_layout(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
                   const AttentionPlan& plan) {
  const int64_t G = p.n_kv_heads > 0 ? p.n_heads / p.n_kv_heads : 0;
  const auto n_items = static_cast<int64_t>(plan.items.size());
  const int64_t n_pairs = p.n_queries * p.n_kv_heads;
  Layout L{};
  L.n_chunks = 0;
  for (const auto& list : lists) L.n_chunks += static_cast<int64_t>(list.size());
  L.raw_floats = 0;
  if (p.q_scored != nullptr)
    for (const AttentionWorkItem& it : plan.items)
      if (p.q_scored[it.query] != 0) L.raw_floats += G * (it.end - it.begin);
  size_t at = 0;
  const auto take = [&](size_t bytes) {
    const size_t here = at;
    at = align_up(at + bytes);
    return here;
  };
  const auto u = [](int64_t n) { return static_cast<size_t>(std::max<int64_t>(n, 0)); };
  L.items = take(u(n_items) * 16);
  L.task_begin = take(u(plan.n_tasks() + 1) * 4);
  L.merge_begin = take(u(n_pairs + 1) * 4);
  L.raw_offset = take(u(n_items) * 8);
  L.q_pos = take(u(p.n_queries) * 4);
  L.q_list = take(u(p.n_queries) * 4);
  L.list_begin = take((lists.size() + 1) * 4);
  L.chunk_start = take(u(L.n_chunks) * 4);
  L.chunk_end = take(u(L.n_chunks) * 4);
  L.chunk_k = take(u(L.n_chunks) * 8);
  L.chunk_v = take(u(L.n_chunks) * 8);
  L.chunk_pos = take(u(L.n_chunks) * 8);
  L.chunk_scores = take(u(L.n_chunks) * 8);
  L.table_bytes = at;
  L.part_m = take(u(n_items * G) * 4);
  L.part_l = take(u(n_items * G) * 4);
  L.part_o = take(u(n_items * G * p.head_dim) * 4);
  L.final_m = take(u(n_pairs * G) * 4);
  L.final_l = take(u(n_pairs * G) * 4);
  L.raw = take(u(L.raw_floats) * 4);
  L.total = at;
  return L;
}

void check_shapes(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
                  const AttentionPlan& plan) {
  EKVA_ATTN_REQUIRE(p.n_queries >= 0 && p.n_kv_heads > 0 && p.n_heads > 0 && p.n_seqs > 0,
                    "n_queries >= 0 and n_heads, n_kv_heads, n_seqs > 0 required");
  EKVA_ATTN_REQUIRE(p.v_dim == 0 || p.v_dim == p.head_dim,
                    "values read from the keys (MLA, v_dim " + std::to_string(p.v_dim) +
                        ") run on the CPU backend only so far");
  EKVA_ATTN_REQUIRE(p.n_heads % p.n_kv_heads == 0, "n_heads (" + std::to_string(p.n_heads) +
                                                       ") is not a multiple of n_kv_heads (" +
                                                       std::to_string(p.n_kv_heads) + ")");
  const int64_t G = p.n_heads / p.n_kv_heads;
  EKVA_ATTN_REQUIRE(G >= 1 && G <= 8,
                    "GQA group of " + std::to_string(G) + " query heads; supported: 1..8");
  EKVA_ATTN_REQUIRE(p.head_dim == 64 || p.head_dim == 128,
                    "head_dim " + std::to_string(p.head_dim) + " unsupported; supported: 64, 128");
  EKVA_ATTN_REQUIRE(p.sliding_window >= 0 && p.sliding_window <= 0x7fffffff,
                    "sliding_window out of range");
  EKVA_ATTN_REQUIRE(static_cast<int64_t>(lists.size()) == p.n_seqs * p.n_kv_heads,
                    std::to_string(lists.size()) + " chunk lists for " + std::to_string(p.n_seqs) +
                        " sequences x " + std::to_string(p.n_kv_heads) + " kv-heads");
  EKVA_ATTN_REQUIRE(static_cast<int64_t>(plan.merge_begin.size()) == p.n_queries * p.n_kv_heads + 1,
                    "the plan is for another problem (merge_begin size)");
  EKVA_ATTN_REQUIRE(
      !plan.task_begin.empty() && plan.task_begin.back() == static_cast<int64_t>(plan.items.size()),
      "the plan's task_begin does not cover its items");
  EKVA_ATTN_REQUIRE(plan.items.size() < 0x7fffffffu && p.n_queries * p.n_kv_heads < 0x7fffffff,
                    "too many items or (query, kv-head) pairs for int32 indices");
  EKVA_ATTN_REQUIRE(p.n_queries == 0 || p.q_positions != nullptr, "q_positions (host) is null");
  for (size_t li = 0; li < lists.size(); ++li) {
    int64_t total = 0;
    for (const KvChunk& c : lists[li]) {
      EKVA_ATTN_REQUIRE(c.n >= 0, "chunk with negative length in list " + std::to_string(li));
      total += c.n;
      if (c.n == 0) continue;
      EKVA_ATTN_REQUIRE(c.dtype == DType::kBF16,
                        "list " + std::to_string(li) +
                            ": K/V dtype must be bf16 (f32 K/V is not supported on CUDA)");
      EKVA_ATTN_REQUIRE(c.k != nullptr && c.v != nullptr && c.positions != nullptr,
                        "list " + std::to_string(li) + ": chunk with null k, v or positions");
      EKVA_ATTN_REQUIRE(
          reinterpret_cast<uintptr_t>(c.k) % 16 == 0 && reinterpret_cast<uintptr_t>(c.v) % 16 == 0,
          "list " + std::to_string(li) + ": chunk k/v not 16-byte aligned");
      EKVA_ATTN_REQUIRE(reinterpret_cast<uintptr_t>(c.positions) % 4 == 0,
                        "list " + std::to_string(li) + ": chunk positions not 4-byte aligned");
    }
    EKVA_ATTN_REQUIRE(total < 0x7fffffff, "list " + std::to_string(li) + " exceeds 2^31 entries");
  }
}

}  // namespace

AttentionPlanOptions attention_plan_options(int device) {
  int sms = 0;
  EKVA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  // Two or three resident blocks per SM; eight tasks per SM give a few waves, so an
  // uneven task (masked rows, chunk walks) does not leave SMs idle at the tail.
  return {.min_tasks = 8 * static_cast<int64_t>(sms), .min_item_entries = 256};
}

size_t attention_workspace_bytes(const AttentionParams& p,
                                 std::span<const std::vector<KvChunk>> lists,
                                 const AttentionPlan& plan) {
  check_shapes(p, lists, plan);
  return make_layout(p, lists, plan).total;
}

AttentionTable attention_prepare(const AttentionParams& p,
                                 std::span<const std::vector<KvChunk>> lists,
                                 const AttentionPlan& plan, void* workspace, size_t workspace_bytes,
                                 cudaStream_t stream) {
  check_shapes(p, lists, plan);
  const Layout L = make_layout(p, lists, plan);
  EKVA_ATTN_REQUIRE(workspace != nullptr && workspace_bytes >= L.total,
                    "workspace of " + std::to_string(workspace_bytes) + " bytes; this plan needs " +
                        std::to_string(L.total));
  EKVA_ATTN_REQUIRE(reinterpret_cast<uintptr_t>(workspace) % kAlign == 0,
                    "workspace not 256-byte aligned");
  const int64_t G = p.n_heads / p.n_kv_heads;
  const int64_t KH = p.n_kv_heads;

  std::vector<unsigned char> host(L.table_bytes, 0);
  const auto at = [&](size_t off) { return host.data() + off; };
  const auto put = [&](size_t off, size_t index, auto value) {
    std::memcpy(at(off) + index * sizeof(value), &value, sizeof(value));
  };
  // Entries per list, for the items' bounds check.
  std::vector<int64_t> list_len(lists.size(), 0);
  for (size_t li = 0; li < lists.size(); ++li)
    for (const KvChunk& c : lists[li]) list_len[li] += c.n;
  bool any_scored = false;
  int64_t raw_at = 0;
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const AttentionWorkItem& it = plan.items[i];
    EKVA_ATTN_REQUIRE(it.query >= 0 && it.query < p.n_queries && it.kv_head >= 0 && it.kv_head < KH,
                      "plan item " + std::to_string(i) + " names a query or kv-head out of range");
    const int64_t seq = p.q_seq != nullptr ? p.q_seq[it.query] : 0;
    EKVA_ATTN_REQUIRE(seq >= 0 && seq < p.n_seqs, "query " + std::to_string(it.query) +
                                                      " names sequence " + std::to_string(seq) +
                                                      " of " + std::to_string(p.n_seqs));
    EKVA_ATTN_REQUIRE(0 <= it.begin && it.begin <= it.end &&
                          it.end <= list_len[static_cast<size_t>(seq * KH + it.kv_head)],
                      "plan item " + std::to_string(i) + " is outside its list");
    const int4 v{it.query, it.kv_head, static_cast<int>(it.begin), static_cast<int>(it.end)};
    put(L.items, i, v);
    long long raw = -1;
    if (p.q_scored != nullptr && p.q_scored[it.query] != 0 && it.end > it.begin) {
      raw = raw_at;
      raw_at += G * (it.end - it.begin);
      any_scored = true;
    }
    put(L.raw_offset, i, raw);
  }
  for (size_t k = 0; k < plan.task_begin.size(); ++k)
    put(L.task_begin, k, static_cast<int>(plan.task_begin[k]));
  for (size_t k = 0; k < plan.merge_begin.size(); ++k)
    put(L.merge_begin, k, static_cast<int>(plan.merge_begin[k]));
  for (int64_t t = 0; t < p.n_queries; ++t) {
    put(L.q_pos, static_cast<size_t>(t), static_cast<int>(p.q_positions[t]));
    const int64_t seq = p.q_seq != nullptr ? p.q_seq[t] : 0;
    put(L.q_list, static_cast<size_t>(t), static_cast<int>(seq * KH));
  }
  size_t c = 0;
  for (size_t li = 0; li < lists.size(); ++li) {
    put(L.list_begin, li, static_cast<int>(c));
    int start = 0;
    for (const KvChunk& ch : lists[li]) {
      put(L.chunk_start, c, start);
      start += static_cast<int>(ch.n);
      put(L.chunk_end, c, start);
      put(L.chunk_k, c, static_cast<const uint16_t*>(ch.k));
      put(L.chunk_v, c, static_cast<const uint16_t*>(ch.v));
      put(L.chunk_pos, c, ch.positions);
      put(L.chunk_scores, c, ch.scores);
      ++c;
    }
  }
  put(L.list_begin, lists.size(), static_cast<int>(c));
  if (L.table_bytes > 0)
    EKVA_CUDA_CHECK(
        cudaMemcpyAsync(workspace, host.data(), L.table_bytes, cudaMemcpyHostToDevice, stream));
  // (A pageable source: the call returns once the bytes are staged, so `host` may go.)

  auto* base = static_cast<unsigned char*>(workspace);
  AttentionTable t;
  t.n_queries = static_cast<int32_t>(p.n_queries);
  t.n_heads = static_cast<int32_t>(p.n_heads);
  t.n_kv_heads = static_cast<int32_t>(p.n_kv_heads);
  t.head_dim = static_cast<int32_t>(p.head_dim);
  t.scale = p.scale;
  t.sliding_window = static_cast<int32_t>(p.sliding_window);
  t.n_items = static_cast<int32_t>(plan.items.size());
  t.n_tasks = static_cast<int32_t>(plan.n_tasks());
  t.n_pairs = static_cast<int32_t>(p.n_queries * p.n_kv_heads);
  t.any_scored = any_scored;
  t.table = workspace;
  t.part_m = reinterpret_cast<float*>(base + L.part_m);
  t.part_l = reinterpret_cast<float*>(base + L.part_l);
  t.part_o = reinterpret_cast<float*>(base + L.part_o);
  t.final_m = reinterpret_cast<float*>(base + L.final_m);
  t.final_l = reinterpret_cast<float*>(base + L.final_l);
  t.raw = reinterpret_cast<float*>(base + L.raw);
  t.off_items = L.items;
  t.off_task_begin = L.task_begin;
  t.off_merge_begin = L.merge_begin;
  t.off_raw_offset = L.raw_offset;
  t.off_q_pos = L.q_pos;
  t.off_list = L.q_list;
  t.off_list_begin = L.list_begin;
  t.off_chunk_start = L.chunk_start;
  t.off_chunk_end = L.chunk_end;
  t.off_chunk_k = L.chunk_k;
  t.off_chunk_v = L.chunk_v;
  t.off_chunk_pos = L.chunk_pos;
  t.off_chunk_scores = L.chunk_scores;
  return t;
}

namespace {

template <int D, int G>
void launch_attend(const KernelParams& kp, int n_tasks, cudaStream_t stream) {
  using C = Config<D, G>;
  // The dynamic shared-memory limit is raised once per device (outside any graph
  // capture that later calls come from).
  static std::atomic<uint64_t> raised{0};
  int device = 0;
  EKVA_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = uint64_t{1} << (device & 63);
  if ((raised.load(std::memory_order_acquire) & bit) == 0) {
    EKVA_CUDA_CHECK(cudaFuncSetAttribute(
        attend_kernel<D, G>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    raised.fetch_or(bit, std::memory_order_acq_rel);
  }
  attend_kernel<D, G><<<static_cast<unsigned>(n_tasks), C::kThreads, C::kSmemBytes, stream>>>(kp);
  EKVA_CUDA_CHECK_LAUNCH();
}

// The one dispatch layer: run-time head_dim and group size to compile-time constants.
template <int D>
void dispatch_group(const KernelParams& kp, int n_tasks, cudaStream_t stream) {
  switch (kp.group) {
    case 1:
      return launch_attend<D, 1>(kp, n_tasks, stream);
    case 2:
      return launch_attend<D, 2>(kp, n_tasks, stream);
    case 3:
      return launch_attend<D, 3>(kp, n_tasks, stream);
    case 4:
      return launch_attend<D, 4>(kp, n_tasks, stream);
    case 5:
      return launch_attend<D, 5>(kp, n_tasks, stream);
    case 6:
      return launch_attend<D, 6>(kp, n_tasks, stream);
    case 7:
      return launch_attend<D, 7>(kp, n_tasks, stream);
    case 8:
      return launch_attend<D, 8>(kp, n_tasks, stream);
    default:
      fail_arg("cuda::attention: GQA group of " + std::to_string(kp.group) +
                   " unsupported; supported: 1..8",
               __FILE__, __LINE__);
  }
}

}  // namespace

void attention_run(const AttentionTable& t, const float* q, float* out, cudaStream_t stream) {
  EKVA_ATTN_REQUIRE(t.table != nullptr || t.n_items == 0, "table not prepared");
  if (t.n_pairs == 0) return;
  EKVA_ATTN_REQUIRE(q != nullptr && out != nullptr, "q or out is null");
  EKVA_ATTN_REQUIRE(reinterpret_cast<uintptr_t>(q) % 16 == 0, "q not 16-byte aligned");
  const auto* base = static_cast<const unsigned char*>(t.table);
  KernelParams kp{};
  kp.items = reinterpret_cast<const int4*>(base + t.off_items);
  kp.task_begin = reinterpret_cast<const int*>(base + t.off_task_begin);
  kp.merge_begin = reinterpret_cast<const int*>(base + t.off_merge_begin);
  kp.raw_offset = reinterpret_cast<const long long*>(base + t.off_raw_offset);
  kp.q_pos = reinterpret_cast<const int*>(base + t.off_q_pos);
  kp.q_list = reinterpret_cast<const int*>(base + t.off_list);
  kp.list_begin = reinterpret_cast<const int*>(base + t.off_list_begin);
  kp.chunk_start = reinterpret_cast<const int*>(base + t.off_chunk_start);
  kp.chunk_end = reinterpret_cast<const int*>(base + t.off_chunk_end);
  kp.chunk_k = reinterpret_cast<const uint16_t* const*>(base + t.off_chunk_k);
  kp.chunk_v = reinterpret_cast<const uint16_t* const*>(base + t.off_chunk_v);
  kp.chunk_pos = reinterpret_cast<const int* const*>(base + t.off_chunk_pos);
  kp.chunk_scores = reinterpret_cast<float* const*>(base + t.off_chunk_scores);
  kp.q = q;
  kp.out = out;
  kp.part_m = t.part_m;
  kp.part_l = t.part_l;
  kp.part_o = t.part_o;
  kp.final_m = t.any_scored ? t.final_m : nullptr;
  kp.final_l = t.any_scored ? t.final_l : nullptr;
  kp.raw = t.raw;
  kp.n_heads = t.n_heads;
  kp.n_kv_heads = t.n_kv_heads;
  kp.head_dim = t.head_dim;
  kp.group = t.n_heads / t.n_kv_heads;
  kp.scale_log2 = t.scale * kLog2e;
  kp.window = t.sliding_window;

  if (t.n_tasks > 0) {
    switch (t.head_dim) {
      case 64:
        dispatch_group<64>(kp, t.n_tasks, stream);
        break;
      case 128:
        dispatch_group<128>(kp, t.n_tasks, stream);
        break;
      default:
        fail_arg("cuda::attention: head_dim " + std::to_string(t.head_dim) +
                     " unsupported; supported: 64, 128",
                 __FILE__, __LINE__);
    }
  }
  merge_kernel<<<static_cast<unsigned>(t.n_pairs * kp.group), kMergeThreads, 0, stream>>>(kp);
  EKVA_CUDA_CHECK_LAUNCH();
  if (t.any_scored && t.n_items > 0) {
    score_kernel<<<static_cast<unsigned>(t.n_items), 128, 0, stream>>>(kp);
    EKVA_CUDA_CHECK_LAUNCH();
  }
}

void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
               const AttentionPlan& plan, void* workspace, size_t workspace_bytes,
               cudaStream_t stream) {
  const AttentionTable t = attention_prepare(p, lists, plan, workspace, workspace_bytes, stream);
  attention_run(t, p.q, p.out, stream);
}

}  // namespace ekva::cuda
