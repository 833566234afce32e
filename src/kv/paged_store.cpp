#include "kv/paged_store.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/error.h"

namespace ekva {

namespace {

// Where one entry sits: a block and a slot in it.
struct Slot {
  int32_t block;
  int64_t index;
};

StoreConfig validated(const StoreConfig& c) {
  if (c.shape.n_layers <= 0 || c.shape.n_kv_heads <= 0 || c.shape.head_dim <= 0)
    fail("paged KV store: shape needs positive n_layers, n_kv_heads, head_dim (got {}, {}, {})",
         c.shape.n_layers, c.shape.n_kv_heads, c.shape.head_dim);
  if (c.n_experts < 0) fail("paged KV store: n_experts must not be negative, got {}", c.n_experts);
  if (c.sink_tokens < 0 || c.recent_window < 0)
    fail("paged KV store: sink_tokens ({}) and recent_window ({}) must not be negative",
         c.sink_tokens, c.recent_window);
  if (c.max_context <= 0 || c.max_context > std::numeric_limits<int32_t>::max())
    fail("paged KV store: max_context must be in 1..2^31-1, got {}", c.max_context);
  if (c.kv_dtype != DType::kBF16 && c.kv_dtype != DType::kF32)
    fail("paged KV store: K/V are stored in bf16 or f32, not {}", dtype_name(c.kv_dtype));
  return c;
}

}  // namespace

// All live entries of one (sequence, layer, kv-head) in position order:
// blocks[i] holds entries [i*B, (i+1)*B), so every block is full except the last
// and there are ceil(n / B) of them. One list per (layer, kv-head), whatever the
// granularity: sinks, evictable entries of every tag and the recent window share
// it, so a (layer, kv-head) wastes at most one partly filled block (a list per tag
// plus a block for the sinks and a ring for the window wasted up to 1.5x the live
// K/V at a 10% budget).
struct PagedKvStore::BlockList {
  std::vector<int32_t> blocks;
  int64_t n = 0;

  Slot at(int64_t i, int64_t B) const { return {blocks[static_cast<size_t>(i / B)], i % B}; }
};

// One (sequence, layer, kv-head): entries [0, n_sinks) are the sinks, [n_sinks,
// evictable_end) the evictable ones, [evictable_end, n) the recent window (and the
// entries that await tags), both protected.
struct PagedKvStore::HeadState {
  BlockList list;
  int64_t n_sinks = 0;
  int64_t evictable_end = 0;
  std::vector<int64_t> tag_entries;  // [n_storage_tags]: evictable entries per storage tag
};

// The ragged view of one (sequence, layer), CSR over its kv-heads: kv-head h's runs
// are runs[offsets[h] .. offsets[h + 1]], one per block of its list in order. One
// array per layer rather than one per (layer, kv-head): a backend that copies the
// view (a device table) copies one contiguous range per layer. The price, moving the
// later kv-heads' runs when a list gains or loses a block, is O(runs of the layer)
// once per block_size appends, far below the K/V bytes attention then reads.
struct PagedKvStore::LayerView {
  std::vector<int64_t> offsets;  // [n_kv_heads + 1]
  std::vector<ViewRun> runs;     // [offsets[n_kv_heads]]
};

struct PagedKvStore::LayerState {
  std::vector<HeadState> heads;  // [n_kv_heads]
  LayerView view;
  int32_t next_position = 0;  // appended positions must be >= this
  // The entries of the last append until tag() names their experts: the last
  // `pending` of each kv-head's list (the first `pending_sinks` of them sinks),
  // holding positions pending_first..pending_last. Pending entries stay protected,
  // so they become evictable with their tag; those of a dense layer (never tagged)
  // stop pending at the next append, as kNoExpert.
  int64_t pending = 0;
  int64_t pending_sinks = 0;
  int32_t pending_first = 0;
  int32_t pending_last = 0;
};

class PagedKvStore::SequenceCache final : public KvCache {
 public:
  SequenceCache(PagedKvStore& store, Sequence& s) : store_(store), s_(s) {}

  void append(int layer, std::span<const int32_t> positions, const float* k,
              const float* v) override {
    store_.append(s_, layer, positions, k, v);
  }
  void tag(int layer, std::span<const int32_t> positions, const int32_t* top1_experts) override {
    store_.tag(s_, layer, positions, top1_experts);
  }
  void view(int layer, int kv_head, std::vector<KvChunk>& out) const override;
  int64_t length() const override;
  size_t bytes_used() const override;
  void clear() override { store_.clear(s_); }
  int memory_domain() const override { return store_.arena().memory_domain(); }

 private:
  PagedKvStore& store_;
  Sequence& s_;
};

struct PagedKvStore::Sequence {
  Sequence(PagedKvStore& store, int seq_id)
      : id(seq_id), cache(store, *this), layers(static_cast<size_t>(store.config_.shape.n_layers)) {
    for (LayerState& L : layers) {
      L.heads.resize(static_cast<size_t>(store.config_.shape.n_kv_heads));
      L.view.offsets.assign(static_cast<size_t>(store.config_.shape.n_kv_heads) + 1, 0);
      for (HeadState& h : L.heads)
        h.tag_entries.assign(static_cast<size_t>(store.n_storage_tags_), 0);
    }
  }

  int id;
  SequenceCache cache;
  std::vector<LayerState> layers;  // [n_layers]
  int64_t length = 0;              // next position
  int64_t entries = 0;             // live entries over all layers and kv-heads
  int64_t blocks = 0;              // blocks held
};

void PagedKvStore::SequenceCache::view(int layer, int kv_head, std::vector<KvChunk>& out) const {
  EKVA_DCHECK(layer >= 0 && layer < store_.config_.shape.n_layers, "layer {}", layer);
  EKVA_DCHECK(kv_head >= 0 && kv_head < store_.config_.shape.n_kv_heads, "kv_head {}", kv_head);
  // A copy of the kept view: one chunk per block (attention does not care where
  // segments change), no walk of the block list.
  store_.flush();  // a device arena's queued writes and moves, before anyone reads
  const LayerView& view = s_.layers[static_cast<size_t>(layer)].view;
  const auto h = static_cast<size_t>(kv_head);
  for (int64_t r = view.offsets[h]; r < view.offsets[h + 1]; ++r)
    out.push_back(view.runs[static_cast<size_t>(r)].chunk);
}

int64_t PagedKvStore::SequenceCache::length() const { return s_.length; }

size_t PagedKvStore::SequenceCache::bytes_used() const { return store_.bytes(s_.id).reserved; }

PagedKvStore::PagedKvStore(StoreConfig config)
    : config_(validated(config)),
      arena_({config.block_size, config.shape.head_dim, config.kv_dtype, config.slab_blocks,
              config.max_empty_slabs, config.shape.keys_only(), config.memory}),
      cells_(config.block_size, arena_.slab_shift()),
      heads_apart_(config.granularity == Granularity::kPerHead ||
                   config.granularity == Granularity::kPerHeadExpert),
      experts_apart_(config.granularity == Granularity::kPerExpert ||
                     config.granularity == Granularity::kPerHeadExpert),
      n_storage_tags_(experts_apart_ ? config.n_experts + 1 : 1),
      layer_blocks_(static_cast<size_t>(config.shape.n_layers), 0) {}

PagedKvStore::~PagedKvStore() = default;

int PagedKvStore::add_sequence() {
  size_t seq = 0;
  while (seq < sequences_.size() && sequences_[seq]) ++seq;
  if (seq == sequences_.size()) sequences_.emplace_back();
  sequences_[seq] = std::make_unique<Sequence>(*this, static_cast<int>(seq));
  return static_cast<int>(seq);
}

void PagedKvStore::remove_sequence(int seq) {
  clear(sequence(seq));
  sequences_[static_cast<size_t>(seq)].reset();
}

KvCache& PagedKvStore::cache(int seq) { return sequence(seq).cache; }

PagedKvStore::Sequence& PagedKvStore::sequence(int seq) const {
  if (seq < 0 || static_cast<size_t>(seq) >= sequences_.size() ||
      !sequences_[static_cast<size_t>(seq)])
    fail("paged KV store: unknown sequence {}", seq);
  return *sequences_[static_cast<size_t>(seq)];
}

void PagedKvStore::check_layer(int layer) const {
  if (layer < 0 || layer >= config_.shape.n_layers)
    fail("paged KV store: layer {} is out of range (0..{})", layer, config_.shape.n_layers - 1);
}

void PagedKvStore::check_segment(int segment) const {
  if (segment < 0 || segment >= n_segments())
    fail("paged KV store: segment {} is out of range (0..{})", segment, n_segments() - 1);
}

int PagedKvStore::n_segments() const {
  return (heads_apart_ ? config_.shape.n_kv_heads : 1) * n_storage_tags_;
}

int PagedKvStore::segment_id(SegmentKey key) const {
  check_layer(key.layer);
  const bool head_ok = heads_apart_ ? key.kv_head >= 0 && key.kv_head < config_.shape.n_kv_heads
                                    : key.kv_head == kAllHeads;
  const bool expert_ok = experts_apart_ ? key.expert >= kNoExpert && key.expert < config_.n_experts
                                        : key.expert == kAllExperts;
  if (!head_ok || !expert_ok)
    fail("paged KV store: no segment (layer {}, kv-head {}, expert {}) at this granularity",
         key.layer, key.kv_head, key.expert);
  return segment_of(heads_apart_ ? key.kv_head : 0, experts_apart_ ? key.expert + 1 : 0);
}

SegmentKey PagedKvStore::segment_key(int layer, int segment) const {
  check_layer(layer);
  check_segment(segment);
  return {layer, heads_apart_ ? segment / n_storage_tags_ : kAllHeads,
          experts_apart_ ? segment % n_storage_tags_ - 1 : kAllExperts};
}

void PagedKvStore::append(Sequence& s, int layer, std::span<const int32_t> positions,
                          const float* k, const float* v) {
  check_layer(layer);
  LayerState& L = s.layers[static_cast<size_t>(layer)];
  const auto n = static_cast<int64_t>(positions.size());
  if (n == 0) return;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t prev = t == 0 ? L.next_position - 1 : positions[static_cast<size_t>(t - 1)];
    if (positions[static_cast<size_t>(t)] <= prev)
      fail("paged KV store: layer {} gets position {} after position {} (positions must increase)",
           layer, positions[static_cast<size_t>(t)], prev);
  }
  if (positions.back() >= config_.max_context)
    fail("KV cache: {} tokens exceed the context of {} tokens", int64_t{positions.back()} + 1,
         config_.max_context);

  const int H = config_.shape.n_kv_heads;
  const int64_t D = config_.shape.head_dim;
  const int64_t B = config_.block_size;
  int64_t n_sinks = 0;  // positions increase, so the sinks are a prefix
  while (n_sinks < n && positions[static_cast<size_t>(n_sinks)] < config_.sink_tokens) ++n_sinks;
  for (int h = 0; h < H; ++h) {
    HeadState& hs = L.heads[static_cast<size_t>(h)];
    hs.n_sinks += n_sinks;
    for (int64_t t = 0; t < n; ++t) {
      grow(s, layer, hs.list);
      const Slot at = hs.list.at(hs.list.n - 1, B);
      const size_t src = static_cast<size_t>((t * H + h) * D);  // k, v: [n, H, D]
      // Rounds to the stored dtype; keys only (MLA): v is not read.
      arena_.write(at.block, at.index, k + src, v != nullptr ? v + src : nullptr,
                   positions[static_cast<size_t>(t)]);
      cells_.positions(at.block)[at.index] = positions[static_cast<size_t>(t)];
      cells_.tags(at.block)[at.index] = kNoExpert;
      cells_.scores(at.block)[at.index] = 0.f;
      ++s.entries;
      ++entries_;
    }
  }
  update_view(s, layer);  // the writes stay queued until a view (all sequences' at once)
  L.pending = n;          // the previous ones, if a dense layer never tagged them, stay kNoExpert
  L.pending_sinks = n_sinks;
  L.pending_first = positions.front();
  L.pending_last = positions.back();
  L.next_position = positions.back() + 1;
  s.length = std::max<int64_t>(s.length, L.next_position);
  graduate(s, layer);
}

void PagedKvStore::tag(Sequence& s, int layer, std::span<const int32_t> positions,
                       const int32_t* experts) {
  check_layer(layer);
  LayerState& L = s.layers[static_cast<size_t>(layer)];
  const auto n = static_cast<int64_t>(positions.size());
  if (n != L.pending ||
      (n > 0 && (positions.front() != L.pending_first || positions.back() != L.pending_last))) {
    if (L.pending == 0)
      fail("paged KV store: tag for layer {} but no entries await tags (tag once, after append)",
           layer);
    fail(
        "paged KV store: tag for layer {} names {} positions, but positions {}..{} ({}) await tags",
        layer, n, L.pending_first, L.pending_last, L.pending);
  }
  for (int64_t t = 0; t < n; ++t) {
    if (experts[t] < 0 || experts[t] >= config_.n_experts)
      fail("paged KV store: layer {}: expert tag {} of position {} is out of range (0..{})", layer,
           experts[t], positions[static_cast<size_t>(t)], config_.n_experts - 1);
  }
  const int64_t B = config_.block_size;
  for (HeadState& hs : L.heads) {
    for (int64_t t = 0; t < n; ++t) {
      const Slot at = hs.list.at(hs.list.n - n + t, B);  // pending entries end the list
      cells_.tags(at.block)[at.index] = experts[t];
    }
  }
  L.pending = 0;
  L.pending_sinks = 0;
  graduate(s, layer);
}

// Entries older than the recent window (pending ones excepted) become evictable:
// the evictable range grows at its end, counted per storage tag. Nothing moves.
void PagedKvStore::graduate(Sequence& s, int layer) {
  LayerState& L = s.layers[static_cast<size_t>(layer)];
  const int64_t pending_recent = L.pending - L.pending_sinks;
  const int64_t B = config_.block_size;
  for (HeadState& hs : L.heads) {
    const int64_t recent = std::max<int64_t>(config_.recent_window, pending_recent);
    const int64_t end = std::max(hs.n_sinks, hs.list.n - recent);
    hs.evictable_end = std::max(hs.evictable_end, hs.n_sinks);  // sinks are never evictable
    for (; hs.evictable_end < end; ++hs.evictable_end) {
      const Slot at = hs.list.at(hs.evictable_end, B);
      ++hs.tag_entries[static_cast<size_t>(storage_tag_of(cells_.tags(at.block)[at.index]))];
    }
  }
}

void PagedKvStore::keep(int seq, int layer, int segment, std::span<const int32_t> entries) {
  Sequence& s = sequence(seq);
  check_layer(layer);
  check_segment(segment);
  int64_t total = 0;
  for_each_segment_head(s, layer, segment, [&](int, HeadState& h, int tag) {
    total += tag < 0 ? h.evictable_end - h.n_sinks : h.tag_entries[static_cast<size_t>(tag)];
  });
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i] < 0 || entries[i] >= total)
      fail("paged KV store: keep: index {} is out of range ({} entries in segment {} of layer {})",
           entries[i], total, segment, layer);
    if (i > 0 && entries[i] <= entries[i - 1])
      fail("paged KV store: keep: entry indices must be strictly increasing ({} follows {})",
           entries[i], entries[i - 1]);
  }
  size_t i = 0;
  int64_t offset = 0;  // segment entry index of the current kv-head's first entry
  for_each_segment_head(s, layer, segment, [&](int, HeadState& h, int tag) {
    const int64_t count =
        tag < 0 ? h.evictable_end - h.n_sinks : h.tag_entries[static_cast<size_t>(tag)];
    const int64_t end = offset + count;
    size_t j = i;
    while (j < entries.size() && entries[j] < end) ++j;
    compact(s, layer, h, tag, entries.subspan(i, j - i), offset);
    offset = end;
    i = j;
  });
  update_view(s, layer);  // the compacted lists lost tail blocks, kept their first ones
}

// Survivors move forward in one pass (an entry never moves backward, so nothing is
// overwritten before it is read), in runs that stay inside one source and one
// destination block: the entries of the segment (of `tag`, or all evictable ones
// when tag < 0) that `entries` names, and every other entry of the list (sinks,
// other tags, the recent window); the blocks past the last survivor go back to the
// arena.
void PagedKvStore::compact(Sequence& s, int layer, HeadState& h, int tag,
                           std::span<const int32_t> entries, int64_t offset) {
  const int64_t B = config_.block_size;
  BlockList& list = h.list;
  const int64_t n = list.n;
  const auto in_segment = [&](int64_t i) {
    if (i < h.n_sinks || i >= h.evictable_end) return false;
    if (tag < 0) return true;
    const Slot at = list.at(i, B);
    return storage_tag_of(cells_.tags(at.block)[at.index]) == tag;
  };
  // Survives: [n] whether entry i of the list stays.
  std::vector<char> stays(static_cast<size_t>(n), 1);
  int64_t index = offset;  // segment entry index of the next segment entry
  size_t next = 0;
  int64_t removed = 0, removed_evictable = 0, first_removed = n;
  for (int64_t i = h.n_sinks; i < h.evictable_end; ++i) {
    if (!in_segment(i)) continue;
    const bool kept = next < entries.size() && entries[next] == index;
    if (kept) {
      ++next;
    } else {
      stays[static_cast<size_t>(i)] = 0;
      ++removed;
      ++removed_evictable;
      first_removed = std::min(first_removed, i);
    }
    ++index;
  }
  if (removed == 0) return;
  int64_t kept = first_removed;
  for (int64_t from = first_removed; from < n;) {
    if (!stays[static_cast<size_t>(from)]) {
      ++from;
      continue;
    }
    const int64_t max_run = std::min(B - from % B, B - kept % B);
    int64_t run = 1;
    while (run < max_run && from + run < n && stays[static_cast<size_t>(from + run)]) ++run;
    const Slot src = list.at(from, B), dst = list.at(kept, B);
    move_entries(src.block, src.index, dst.block, dst.index, run);
    kept += run;
    from += run;
  }
  const auto n_blocks = static_cast<size_t>((kept + B - 1) / B);
  for (size_t b = n_blocks; b < list.blocks.size(); ++b) give_block(s, layer, list.blocks[b]);
  list.blocks.resize(n_blocks);
  list.n = kept;
  h.evictable_end -= removed_evictable;
  if (tag >= 0) {
    h.tag_entries[static_cast<size_t>(tag)] -= removed;
  } else {
    // Every tag may have lost entries: count the evictable range afresh.
    std::fill(h.tag_entries.begin(), h.tag_entries.end(), 0);
    for (int64_t i = h.n_sinks; i < h.evictable_end; ++i) {
      const Slot at = list.at(i, B);
      ++h.tag_entries[static_cast<size_t>(storage_tag_of(cells_.tags(at.block)[at.index]))];
    }
  }
  s.entries -= removed;
  entries_ -= removed;
}

void PagedKvStore::clear(Sequence& s) {
  for (size_t layer = 0; layer < s.layers.size(); ++layer) {
    LayerState& L = s.layers[layer];
    for (HeadState& hs : L.heads) {
      for (int32_t b : hs.list.blocks) give_block(s, static_cast<int>(layer), b);
      hs.list = {};
      hs.n_sinks = 0;
      hs.evictable_end = 0;
      std::fill(hs.tag_entries.begin(), hs.tag_entries.end(), 0);
    }
    L.view.runs.clear();
    std::fill(L.view.offsets.begin(), L.view.offsets.end(), 0);
    L.next_position = 0;
    L.pending = 0;
    L.pending_sinks = 0;
  }
  entries_ -= s.entries;
  s.entries = 0;
  s.length = 0;
}

int32_t PagedKvStore::take_block(Sequence& s, int layer) {
  const int32_t block = arena_.allocate();
  cells_.add(block);
  ++layer_blocks_[static_cast<size_t>(layer)];
  ++s.blocks;
  peak_blocks_ = std::max(peak_blocks_, arena_.blocks_in_use());
  return block;
}

void PagedKvStore::reset_peak() {
  peak_blocks_ = arena_.blocks_in_use();
  arena_.reset_peak();
}

void PagedKvStore::give_block(Sequence& s, int layer, int32_t block) {
  arena_.release(block);
  cells_.remove(block);
  --layer_blocks_[static_cast<size_t>(layer)];
  --s.blocks;
}

void PagedKvStore::grow(Sequence& s, int layer, BlockList& list) {
  if (list.n == static_cast<int64_t>(list.blocks.size()) * config_.block_size)
    list.blocks.push_back(take_block(s, layer));
  ++list.n;
}

void PagedKvStore::move_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot,
                                int64_t n) {
  arena_.copy_entries(src, src_slot, dst, dst_slot, n);
  cells_.copy_entries(src, src_slot, dst, dst_slot, n);
}

template <typename Fn>
void PagedKvStore::for_each_run(const HeadState& h, int kv_head, Fn&& fn) const {
  // Runs end at block ends and where the segment changes: sinks, each evictable
  // stretch of one segment, the recent window.
  const int64_t B = config_.block_size;
  const BlockList& list = h.list;
  const auto segment_at = [&](int64_t i) {
    if (i < h.n_sinks || i >= h.evictable_end) return kProtectedSegment;
    if (!experts_apart_) return segment_of(kv_head, 0);
    const Slot at = list.at(i, B);
    return segment_of(kv_head, storage_tag_of(cells_.tags(at.block)[at.index]));
  };
  for (int64_t i = 0; i < list.n;) {
    const int segment = segment_at(i);
    const int64_t block_end = std::min(list.n, (i / B + 1) * B);
    int64_t j = i + 1;
    while (j < block_end && segment_at(j) == segment) ++j;
    fn(segment, list.blocks[static_cast<size_t>(i / B)], i % B, j - i);
    i = j;
  }
}

template <typename Fn>
void PagedKvStore::for_each_segment_head(Sequence& s, int layer, int segment, Fn&& fn) const {
  LayerState& L = s.layers[static_cast<size_t>(layer)];
  const int first = heads_apart_ ? segment / n_storage_tags_ : 0;
  const int last = heads_apart_ ? first : config_.shape.n_kv_heads - 1;
  const int tag = experts_apart_ ? segment % n_storage_tags_ : -1;
  for (int h = first; h <= last; ++h) fn(h, L.heads[static_cast<size_t>(h)], tag);
}

EntryRun PagedKvStore::run(int segment, int kv_head, int32_t block, int64_t slot, int64_t n) const {
  const size_t row = static_cast<size_t>(slot) * arena_.row_bytes();
  EntryRun r;
  r.segment = segment;
  r.kv_head = kv_head;
  r.n = n;
  r.k = static_cast<const std::byte*>(arena_.k(block)) + row;
  r.v = static_cast<const std::byte*>(arena_.v(block)) + row;
  r.dtype = arena_.dtype();
  r.positions = cells_.positions(block) + slot;
  r.tags = cells_.tags(block) + slot;
  r.scores = cells_.scores(block) + slot;
  return r;
}

static_assert(std::is_trivially_copyable_v<ViewRun>, "update_view moves runs with memmove");

ViewRun PagedKvStore::view_run(const BlockList& list, size_t b) const {
  const int64_t B = config_.block_size;
  const int32_t block = list.blocks[b];
  ViewRun r;
  r.block = block;
  r.first_slot = 0;  // every block of a list is filled from slot 0
  // The score slots go along: attention adds to them for the queries a policy asked
  // to be scored (KvCache::scored_queries), and only then.
  // A device arena's kernels read the cells kept in its blocks.
  const bool device = arena_.memory() != nullptr;
  r.chunk = {arena_.k(block),
             arena_.v(block),
             device ? arena_.kernel_positions(block) : cells_.positions(block),
             std::min(B, list.n - static_cast<int64_t>(b) * B),
             arena_.dtype(),
             device ? arena_.kernel_scores(block) : cells_.scores(block)};
  return r;
}

void PagedKvStore::update_view(Sequence& s, int layer) {
  LayerState& L = s.layers[static_cast<size_t>(layer)];
  LayerView& view = L.view;
  const auto H = static_cast<size_t>(config_.shape.n_kv_heads);
  const auto runs_of = [&](size_t h) {
    return static_cast<int64_t>(L.heads[h].list.blocks.size());
  };
  int64_t total = 0;
  bool grew = false, shrank = false;
  for (size_t h = 0; h < H; ++h) {
    const int64_t before = view.offsets[h + 1] - view.offsets[h];
    total += runs_of(h);
    grew = grew || runs_of(h) > before;
    shrank = shrank || runs_of(h) < before;
  }
  // One call changes lists one way: append grows them, keep() shrinks them.
  EKVA_DCHECK(!(grew && shrank), "paged KV store: layer {}'s lists grew and shrank at once", layer);
  // Kv-head h's kept runs move from old_begin to new_begin. When the lists grew every
  // kv-head moves right (or stays), so the kv-heads go last to first; when they shrank,
  // left, first to last: either way no run is overwritten before it has moved.
  const auto move = [&](size_t h, int64_t old_begin, int64_t old_end, int64_t new_begin) {
    const int64_t n = runs_of(h);
    const int64_t kept = std::min(n, old_end - old_begin);
    if (kept > 0 && new_begin != old_begin)
      std::memmove(&view.runs[static_cast<size_t>(new_begin)],
                   &view.runs[static_cast<size_t>(old_begin)],
                   static_cast<size_t>(kept) * sizeof(ViewRun));
    // The last kept run may have changed length; the new ones are written afresh.
    for (int64_t b = std::max<int64_t>(kept - 1, 0); b < n; ++b)
      view.runs[static_cast<size_t>(new_begin + b)] =
          view_run(L.heads[h].list, static_cast<size_t>(b));
  };
  if (grew) {
    view.runs.resize(static_cast<size_t>(total));
    int64_t new_end = total;
    for (size_t h = H; h-- > 0;) {
      const int64_t new_begin = new_end - runs_of(h);
      move(h, view.offsets[h], view.offsets[h + 1], new_begin);
      view.offsets[h + 1] = new_end;
      new_end = new_begin;
    }
  } else {
    int64_t old_begin = 0, new_begin = 0;
    for (size_t h = 0; h < H; ++h) {
      const int64_t old_end = view.offsets[h + 1];
      move(h, old_begin, old_end, new_begin);
      new_begin += runs_of(h);
      view.offsets[h + 1] = new_begin;
      old_begin = old_end;
    }
    view.runs.resize(static_cast<size_t>(total));
  }
}

void PagedKvStore::rebuild_view(Sequence& s, int layer) {
  LayerView& view = s.layers[static_cast<size_t>(layer)].view;
  view.runs.clear();
  std::fill(view.offsets.begin(), view.offsets.end(), 0);
  update_view(s, layer);  // every run is new
}

std::span<const ViewRun> PagedKvStore::view_list(int seq, int layer, int kv_head) const {
  const Sequence& s = sequence(seq);
  check_layer(layer);
  if (kv_head < 0 || kv_head >= config_.shape.n_kv_heads)
    fail("paged KV store: kv-head {} is out of range (0..{})", kv_head,
         config_.shape.n_kv_heads - 1);
  flush();
  const LayerView& view = s.layers[static_cast<size_t>(layer)].view;
  const auto h = static_cast<size_t>(kv_head);
  return std::span(view.runs).subspan(static_cast<size_t>(view.offsets[h]),
                                      static_cast<size_t>(view.offsets[h + 1] - view.offsets[h]));
}

void PagedKvStore::segments(int seq, int layer, std::vector<SegmentInfo>& out,
                            bool count_blocks) const {
  Sequence& s = sequence(seq);
  check_layer(layer);
  const int64_t B = config_.block_size;
  for (int id = 0; id < n_segments(); ++id) {
    SegmentInfo info{id, segment_key(layer, id), 0, 0};
    for_each_segment_head(s, layer, id, [&](int, HeadState& h, int tag) {
      if (tag < 0) {
        info.n_entries += h.evictable_end - h.n_sinks;
        if (h.evictable_end > h.n_sinks)
          info.n_blocks += (h.evictable_end - 1) / B - h.n_sinks / B + 1;
        return;
      }
      const int64_t n = h.tag_entries[static_cast<size_t>(tag)];
      info.n_entries += n;
      if (n == 0 || !count_blocks) return;
      // Blocks holding at least one of its entries (they share blocks with other tags).
      int64_t last_block = -1;
      for (int64_t i = h.n_sinks; i < h.evictable_end; ++i) {
        const Slot at = h.list.at(i, B);
        if (i / B != last_block && storage_tag_of(cells_.tags(at.block)[at.index]) == tag) {
          ++info.n_blocks;
          last_block = i / B;
        }
      }
    });
    if (info.n_entries > 0) out.push_back(info);
  }
}

void PagedKvStore::segment_runs(int seq, int layer, int segment, std::vector<EntryRun>& out) {
  Sequence& s = sequence(seq);
  check_layer(layer);
  check_segment(segment);
  for_each_segment_head(s, layer, segment, [&](int h, HeadState& hs, int) {
    for_each_run(hs, h, [&](int run_segment, int32_t block, int64_t slot, int64_t n) {
      if (run_segment == segment) out.push_back(run(segment, h, block, slot, n));
    });
  });
}

void PagedKvStore::view_runs(int seq, int layer, int kv_head, std::vector<EntryRun>& out) {
  Sequence& s = sequence(seq);
  check_layer(layer);
  if (kv_head < 0 || kv_head >= config_.shape.n_kv_heads)
    fail("paged KV store: kv-head {} is out of range (0..{})", kv_head,
         config_.shape.n_kv_heads - 1);
  const HeadState& h = s.layers[static_cast<size_t>(layer)].heads[static_cast<size_t>(kv_head)];
  for_each_run(h, kv_head, [&](int segment, int32_t block, int64_t slot, int64_t n) {
    out.push_back(run(segment, kv_head, block, slot, n));
  });
}

int64_t PagedKvStore::protected_entries(int seq, int layer, int kv_head) const {
  const Sequence& s = sequence(seq);
  check_layer(layer);
  if (kv_head < 0 || kv_head >= config_.shape.n_kv_heads)
    fail("paged KV store: kv-head {} is out of range (0..{})", kv_head,
         config_.shape.n_kv_heads - 1);
  const HeadState& h = s.layers[static_cast<size_t>(layer)].heads[static_cast<size_t>(kv_head)];
  return h.n_sinks + (h.list.n - h.evictable_end);
}

void PagedKvStore::pull_scores(int seq, int layer) {
  KvArenaMemory* memory = arena_.memory();
  if (memory == nullptr) return;  // host cells are the ones attention adds to
  const Sequence& s = sequence(seq);
  check_layer(layer);
  const int64_t B = config_.block_size;
  std::vector<KvArenaMemory::Read> reads;
  for (const HeadState& h : s.layers[static_cast<size_t>(layer)].heads) {
    for (size_t b = 0; b < h.list.blocks.size(); ++b) {
      const int32_t block = h.list.blocks[b];
      const int64_t n = std::min(B, h.list.n - static_cast<int64_t>(b) * B);
      reads.push_back({reinterpret_cast<const std::byte*>(arena_.kernel_scores(block)),
                       reinterpret_cast<std::byte*>(cells_.scores(block)),
                       static_cast<size_t>(n) * sizeof(float)});
    }
  }
  memory->read(reads);
}

void PagedKvStore::blocks(int seq, std::vector<int32_t>& out) const {
  const Sequence& s = sequence(seq);
  for (const LayerState& L : s.layers) {
    for (const HeadState& h : L.heads)
      out.insert(out.end(), h.list.blocks.begin(), h.list.blocks.end());
  }
}

int PagedKvStore::defragment() {
  if (arena_.begin_drain() > 0) {
    const auto move_out = [&](std::vector<int32_t>& blocks) {
      for (int32_t& b : blocks) {
        if (!arena_.draining(b)) continue;
        const int32_t to = arena_.move(b);
        cells_.add(to);
        cells_.copy_entries(b, 0, to, 0, config_.block_size);
        cells_.remove(b);
        b = to;
      }
    };
    for (const auto& s : sequences_) {
      if (!s) continue;
      for (size_t layer = 0; layer < s->layers.size(); ++layer) {
        for (HeadState& h : s->layers[layer].heads) move_out(h.list.blocks);
        rebuild_view(*s, static_cast<int>(layer));  // block ids changed
      }
    }
    arena_.flush();
  }
  return arena_.end_drain();
}

namespace {

StoreBytes entry_bytes(int64_t entries, int64_t blocks, const KvArena& arena,
                       const KvCells& cells) {
  const auto n = static_cast<size_t>(entries);
  const auto b = static_cast<size_t>(blocks);
  StoreBytes bytes;
  // Counts the stored dtype; a keys-only arena (MLA) holds one row per entry.
  bytes.kv = n * (arena.keys_only() ? 1 : 2) * arena.row_bytes();
  bytes.metadata = n * KvCells::kEntryBytes;
  bytes.reserved_kv = b * arena.block_bytes();
  bytes.reserved = bytes.reserved_kv + b * cells.block_bytes();
  return bytes;
}

}  // namespace

int64_t PagedKvStore::blocks_in_use(int layer) const {
  check_layer(layer);
  return layer_blocks_[static_cast<size_t>(layer)];
}

StoreBytes PagedKvStore::bytes(int seq) const {
  const Sequence& s = sequence(seq);
  return entry_bytes(s.entries, s.blocks, arena_, cells_);
}

StoreBytes PagedKvStore::bytes() const {
  return entry_bytes(entries_, arena_.blocks_in_use(), arena_, cells_);
}

}  // namespace ekva
