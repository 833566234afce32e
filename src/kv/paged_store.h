// The ragged paged KV store: the KV entries of many sequences in blocks of one
// KvArena (K/V storage, bf16 by default) with their cells (KvCells: positions, tags,
// scores, host metadata) under the same block id, grouped into segments that policies compress to
// their budgets. Each sequence gets a KvCache (append, tag, view) so the forward pass runs on the
// store unchanged; eviction goes through one call per segment (keep) that compacts the survivors
// and returns the emptied blocks to the arena.
//
// Per (sequence, layer, kv-head) all entries live in one block list in position
// order, every block full except the last:
//   - the protected segment, never evicted: the attention sinks (positions <
//     sink_tokens, the head of the list) and the recent window (its last
//     recent_window entries). New entries enter the window untagged; entries
//     older than the window become evictable once tagged. Untagged entries stay in
//     the window, so between append and tag it may hold a whole prompt.
//   - the evictable entries between them, each with its storage tag.
// Entries keep their original positions (RoPE is applied at write, never redone).
//
// Granularity decides the budget key, i.e. which entries form one segment: the
// evictable entries of one (layer, kv-head, tag), of all tags of a (layer,
// kv-head), or of several kv-heads. A segment is thus a subset of the lists it
// spans, not a list of its own: one list per tag wasted a partly filled tail block
// per tag, plus one for 4 sinks and up to two for the window (1.5x the live K/V at
// a 10% budget on the shipped model), where one list wastes at most one block per
// (layer, kv-head). It also gives attention fewer, longer chunks. The price is that
// an eviction compacts the rest of the list (the entries after the first evicted
// one), which the amortised eviction (in chunks, not every step) pays for.
//
// Attention does not walk the lists: each (sequence, layer) keeps its ragged view, a
// CSR list of runs over its kv-heads (ViewRun: block, first slot, length and the
// KvChunk attention reads), brought up to date by the call that changes a list
// (append extends a tail run or adds one; keep() truncates the lists it compacted;
// defragment() rebuilds them all, since blocks move), so view() is a copy.
//
// Not thread-safe: the sequences share one arena, so calls (forward passes of
// different sequences included) must not overlap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/dtype.h"
#include "kv/kv_arena.h"
#include "kv/kv_cache.h"
#include "kv/kv_cells.h"

namespace ekva {

// Which entries of a sequence share one budget.
enum class Granularity {
  kPerLayer,       // (layer): SnapKV, PyramidKV
  kPerHead,        // (layer, kv-head): Ada-KV
  kPerExpert,      // (layer, expert tag), all kv-heads together
  kPerHeadExpert,  // (layer, kv-head, expert tag): EKVA
};

inline constexpr int kNoExpert = -1;          // tag of entries of dense layers (never tagged)
inline constexpr int kAllExperts = -2;        // SegmentKey::expert when experts are collapsed
inline constexpr int kAllHeads = -1;          // SegmentKey::kv_head when kv-heads are collapsed
inline constexpr int kProtectedSegment = -1;  // EntryRun::segment of sinks and recent window

struct StoreConfig {
  KvShape shape;
  int n_experts = 0;  // 0: a dense model (every entry is tagged kNoExpert)
  int block_size = 32;
  Granularity granularity = Granularity::kPerHeadExpert;
  int sink_tokens = 4;
  int recent_window = 32;
  int64_t max_context = 0;  // positions must stay below it
  int slab_blocks = 0;      // KvArenaConfig::slab_blocks
  int max_empty_slabs = 1;  // KvArenaConfig::max_empty_slabs
  // Stored K/V element type (kBF16 or kF32); appends round f32 to it (nearest even).
  DType kv_dtype = DType::kBF16;
  // Where the K/V live (KvArenaConfig::memory); nullptr: host memory. In a GPU's
  // memory, append() reads the K/V rows there and view() hands out device chunks;
  // the writes are queued, so append's k and v must stay valid until the next view
  // or flush() (the forward pass views every cache of a layer right after appending).
  KvArenaMemory* memory = nullptr;
};

struct SegmentKey {
  int layer = 0;
  int kv_head = kAllHeads;   // 0..n_kv_heads-1, or kAllHeads
  int expert = kAllExperts;  // 0..n_experts-1, kNoExpert, or kAllExperts
};

struct SegmentInfo {
  int id = 0;  // 0..n_segments()-1, the same key for the same id in every sequence
  SegmentKey key;
  int64_t n_entries = 0;
  int64_t n_blocks = 0;  // blocks holding at least one of its entries (shared with other segments)
};

// Entries of one (sequence, layer, kv-head) that sit contiguously in one block, with
// their metadata and one segment. Runs are listed in a fixed order (view_runs: the
// entries of view's chunks in order, a chunk split where the segment changes;
// segment_runs: the order keep's entry indices count in), so a policy can line its
// per-entry scores up with them. Valid until the next call that changes the sequence.
struct EntryRun {
  int segment = kProtectedSegment;  // segment id, or kProtectedSegment
  int kv_head = 0;
  int64_t n = 0;
  const void* k = nullptr;             // [n, head_dim] of dtype, in the arena's memory
  const void* v = nullptr;             // [n, head_dim] of dtype
  DType dtype = DType::kBF16;          // the store's kv_dtype
  const int32_t* positions = nullptr;  // [n] strictly increasing within a segment's list
  const int32_t* tags = nullptr;       // [n] expert tags; kNoExpert until tagged
  float* scores = nullptr;             // [n] the policy's score per entry; 0 at append

  // Element i of K or V (i counts over [n, head_dim]), widened to f32: for host
  // readers of a host arena.
  float k_at(int64_t i) const { return load(k, i); }
  float v_at(int64_t i) const { return load(v, i); }

 private:
  float load(const void* p, int64_t i) const {
    return dtype == DType::kBF16 ? bf16_to_f32(static_cast<const uint16_t*>(p)[i])
                                 : static_cast<const float*>(p)[i];
  }
};

// One run of the ragged view that attention reads: the entries of one (sequence,
// layer, kv-head) in one block, slots [first_slot, first_slot + chunk.n), as the
// KvChunk handed to attention (K/V rows in the arena, positions and score slots in
// the cells). Runs never span blocks: the arena lays a block out as [K B x D | V B x
// D], so the K rows of consecutive blocks are never contiguous, whatever their ids.
struct ViewRun {
  int32_t block = 0;
  int32_t first_slot = 0;
  KvChunk chunk;
};

struct StoreBytes {
  size_t kv = 0;        // live entries x 2 x head_dim x size of the stored dtype
  size_t metadata = 0;  // live entries x (position + tag + score)
  // Blocks in use x (arena block bytes + cell block bytes): what the sequence holds
  // (KvCache::bytes_used), K/V storage and cells together.
  size_t reserved = 0;
  size_t reserved_kv = 0;  // blocks in use x arena block bytes: the K/V storage part
  // Reserved over K/V bytes, minus one: the slack of partly filled blocks plus the
  // metadata.
  double paging_waste() const {
    return kv == 0 ? 0.0 : static_cast<double>(reserved) / static_cast<double>(kv) - 1.0;
  }
};

class PagedKvStore {
 public:
  explicit PagedKvStore(StoreConfig config);
  ~PagedKvStore();
  PagedKvStore(const PagedKvStore&) = delete;
  PagedKvStore& operator=(const PagedKvStore&) = delete;

  // A new empty sequence; ids of removed sequences are reused.
  int add_sequence();
  // Returns all blocks of the sequence to the arena and forgets its id.
  void remove_sequence(int seq);
  // The sequence's KvCache; stays valid until the sequence is removed.
  KvCache& cache(int seq);

  // Segments: ids are 0..n_segments()-1 for every (sequence, layer); the protected
  // segment has none (it is never evicted).
  int n_segments() const;
  int segment_id(SegmentKey key) const;
  SegmentKey segment_key(int layer, int segment) const;
  // Appends the non-empty segments of (seq, layer) to `out`. Their entry counts are
  // kept counters; n_blocks walks the segments' entries (count_blocks false leaves it
  // 0: what a decode step's budget check asks, for every sequence and layer).
  void segments(int seq, int layer, std::vector<SegmentInfo>& out, bool count_blocks = true) const;
  // Appends the runs of a segment in entry order: its kv-heads ascending, each in
  // position order. Entry index i of keep() is the i-th entry of these runs.
  void segment_runs(int seq, int layer, int segment, std::vector<EntryRun>& out);
  // Appends the runs of (seq, layer, kv_head), protected ones included, in position
  // order (the entries of view()'s chunks, in order, split where the segment changes).
  void view_runs(int seq, int layer, int kv_head, std::vector<EntryRun>& out);
  // Commits an eviction: the segment keeps exactly the entries at `entries`
  // (strictly increasing indices into its entry order); each list it spans is
  // compacted into the fewest blocks, every entry in its original order with its
  // metadata; the emptied blocks go back to the arena. A bad index changes nothing
  // and throws.
  void keep(int seq, int layer, int segment, std::span<const int32_t> entries);
  // The ragged view of (seq, layer, kv_head): its runs in position order, one per
  // block of its list (the chunks KvCache::view appends). Kept up to date by every
  // change of the sequence, never rebuilt by the reader; valid until the next change.
  std::span<const ViewRun> view_list(int seq, int layer, int kv_head) const;
  // Brings the host cells' scores of (seq, layer) up to date with the score slots that
  // attention adds to, when those are a device arena's (kernel cells); no-op on the
  // host. Call before reading EntryRun::scores of the layer.
  void pull_scores(int seq, int layer);
  // Sinks plus recent entries of (seq, layer, kv_head).
  int64_t protected_entries(int seq, int layer, int kv_head) const;

  // Appends the ids of every block the sequence holds (block tables, audits).
  void blocks(int seq, std::vector<int32_t>& out) const;
  StoreBytes bytes(int seq) const;
  StoreBytes bytes() const;  // all sequences
  // The most bytes().reserved (blocks held by all sequences, K/V and cells) since
  // construction or the last reset_peak(): the worst moment of a prefill. Blocks
  // that eviction frees go back to the arena's free lists at once, so the next
  // layer's entries reuse them and the peak stays the most held at one moment.
  size_t peak_reserved_bytes() const { return static_cast<size_t>(peak_blocks_) * block_bytes(); }
  // Restarts both peaks (this one and the arena's mapped bytes) at the present.
  void reset_peak();
  // Blocks held by all sequences in one layer.
  int64_t blocks_in_use(int layer) const;
  // Runs the K/V writes and moves a device arena queued (no-op on the host). The views
  // (KvCache::view, view_list) flush first, so attention always reads the result;
  // queued work lets all sequences' appends of a layer go to the GPU as one batch.
  void flush() const { arena_.flush(); }
  // Packs the blocks of all sequences into the fewest slabs and returns the other
  // slabs to the OS (eviction frees blocks, but the survivors may keep every slab
  // partly used); copies at most the live blocks, for after a large eviction such as
  // compressing a prefill. Invalidates views. The number of slabs returned.
  int defragment();
  const KvArena& arena() const { return arena_; }
  const KvCells& cells() const { return cells_; }
  // Bytes one block holds: K/V storage plus cells.
  size_t block_bytes() const { return arena_.block_bytes() + cells_.block_bytes(); }
  const StoreConfig& config() const { return config_; }

 private:
  class SequenceCache;
  struct Sequence;
  struct BlockList;
  struct HeadState;
  struct LayerState;
  struct LayerView;

  Sequence& sequence(int seq) const;
  void check_layer(int layer) const;
  void check_segment(int segment) const;
  int segment_of(int kv_head, int storage_tag) const {
    return (heads_apart_ ? kv_head : 0) * n_storage_tags_ + storage_tag;
  }
  // The storage tag of an entry's expert tag: expert + 1 (0: untagged), or 0 when
  // experts are collapsed.
  int storage_tag_of(int32_t expert) const { return experts_apart_ ? expert + 1 : 0; }
  void append(Sequence& s, int layer, std::span<const int32_t> positions, const float* k,
              const float* v);
  void tag(Sequence& s, int layer, std::span<const int32_t> positions, const int32_t* experts);
  void graduate(Sequence& s, int layer);
  // Keeps, of the segment's entries in list h (those of storage tag `tag`, or every
  // evictable one for tag < 0), the ones `entries` names (segment indices, the first
  // of h being `offset`).
  void compact(Sequence& s, int layer, HeadState& h, int tag, std::span<const int32_t> entries,
               int64_t offset);
  void clear(Sequence& s);
  int32_t take_block(Sequence& s, int layer);
  void give_block(Sequence& s, int layer, int32_t block);
  // Room for one more entry at the tail: a new block when the last one is full.
  void grow(Sequence& s, int layer, BlockList& list);
  // Copies n entries with their metadata; src and dst may overlap within a block.
  void move_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot, int64_t n);
  // fn(segment, block, first slot, n) for the runs of one (layer, kv-head), in view order.
  template <typename Fn>
  void for_each_run(const HeadState& h, int kv_head, Fn&& fn) const;
  // fn(kv_head, head state, storage tag or -1 for all) for the kv-heads a segment
  // spans, in its entry order.
  template <typename Fn>
  void for_each_segment_head(Sequence& s, int layer, int segment, Fn&& fn) const;
  EntryRun run(int segment, int kv_head, int32_t block, int64_t slot, int64_t n) const;
  // The view run of block b of a list.
  ViewRun view_run(const BlockList& list, size_t b) const;
  // Brings the layer's view up to date after its lists changed only at their tails
  // (append: they grew; keep: they shrank, their first blocks unchanged): each
  // kv-head's runs are resized in place to its blocks, the new runs and each
  // kv-head's last kept one (whose length may have changed) written from its list.
  void update_view(Sequence& s, int layer);
  // Rebuilds every run of the layer's view from its lists (block ids changed).
  void rebuild_view(Sequence& s, int layer);

  StoreConfig config_;
  KvArena arena_;       // K/V storage, [block] -> [B, D] K and V
  KvCells cells_;       // host metadata, [block] -> [B] positions, tags, scores
  bool heads_apart_;    // segments keep kv-heads apart
  bool experts_apart_;  // segments (and evictable lists) keep expert tags apart
  int n_storage_tags_;  // segments per (layer, kv-head): n_experts + 1 tags, or 1
  std::vector<std::unique_ptr<Sequence>> sequences_;  // [seq id]; null: removed
  std::vector<int64_t> layer_blocks_;                 // [n_layers] blocks in use per layer
  int64_t entries_ = 0;                               // live entries of all sequences
  int64_t peak_blocks_ = 0;                           // most blocks held at once
};

}  // namespace ekva
