#include "kv/paged_store.h"

#include <algorithm>
#include <cstring>
#include <limits>

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
  return c;
}

}  // namespace

// Entries of one kv-head in position order: blocks[i] holds entries [i*B, (i+1)*B),
// so every block is full except the last and there are ceil(n / B) of them.
struct PagedKvStore::BlockList {
  std::vector<int32_t> blocks;
  int64_t n = 0;

  Slot at(int64_t i, int64_t B) const { return {blocks[static_cast<size_t>(i / B)], i % B}; }
};

// A FIFO: entry i sits at slot head + i of the concatenated blocks. Appends fill the
// tail; graduation pops the head, and the head block goes back once it drains, so
// the ring holds at most ceil(n / B) + 1 blocks.
struct PagedKvStore::RecentRing {
  std::vector<int32_t> blocks;
  int64_t head = 0;  // [0, B): slot of the oldest entry in blocks[0]
  int64_t n = 0;

  Slot at(int64_t i, int64_t B) const {
    return {blocks[static_cast<size_t>((head + i) / B)], (head + i) % B};
  }
};

// One (sequence, layer, kv-head).
struct PagedKvStore::HeadState {
  BlockList sinks;               // protected: positions < sink_tokens
  RecentRing recent;             // protected: the last recent_window entries (+ untagged ones)
  std::vector<BlockList> lists;  // [n_storage_tags] evictable, by storage tag
};

struct PagedKvStore::LayerState {
  std::vector<HeadState> heads;  // [n_kv_heads]
  int32_t next_position = 0;     // appended positions must be >= this
  // The entries of the last append until tag() names their experts: `pending` of
  // them per kv-head, the first `pending_sinks` at the end of the sink list and the
  // rest at the tail of the ring, holding positions pending_first..pending_last.
  // Pending entries do not graduate, so they reach the list of their tag; those of a
  // dense layer (never tagged) stop pending at the next append, as kNoExpert.
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

 private:
  PagedKvStore& store_;
  Sequence& s_;
};

struct PagedKvStore::Sequence {
  Sequence(PagedKvStore& store, int seq_id)
      : id(seq_id), cache(store, *this), layers(static_cast<size_t>(store.config_.shape.n_layers)) {
    for (LayerState& L : layers) {
      L.heads.resize(static_cast<size_t>(store.config_.shape.n_kv_heads));
      for (HeadState& h : L.heads) h.lists.resize(static_cast<size_t>(store.n_storage_tags_));
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
  const HeadState& h = s_.layers[static_cast<size_t>(layer)].heads[static_cast<size_t>(kv_head)];
  const BlockPool& pool = store_.pool_;
  const int64_t D = store_.config_.shape.head_dim;
  store_.for_each_run(h, kv_head, [&](int, int32_t block, int64_t slot, int64_t n) {
    out.push_back(
        {pool.k(block) + slot * D, pool.v(block) + slot * D, pool.positions(block) + slot, n});
  });
}

int64_t PagedKvStore::SequenceCache::length() const { return s_.length; }

size_t PagedKvStore::SequenceCache::bytes_used() const { return store_.bytes(s_.id).kv; }

PagedKvStore::PagedKvStore(StoreConfig config)
    : config_(validated(config)),
      pool_({config.block_size, config.shape.head_dim, config.slab_blocks, config.max_empty_slabs}),
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
    for (int64_t t = 0; t < n; ++t) {
      Slot at;
      if (t < n_sinks) {
        grow(s, layer, hs.sinks);
        at = hs.sinks.at(hs.sinks.n - 1, B);
      } else {
        grow(s, layer, hs.recent);
        at = hs.recent.at(hs.recent.n - 1, B);
      }
      const size_t src = static_cast<size_t>((t * H + h) * D);  // k, v: [n, H, D]
      std::memcpy(pool_.k(at.block) + at.index * D, k + src, sizeof(float) * D);
      std::memcpy(pool_.v(at.block) + at.index * D, v + src, sizeof(float) * D);
      pool_.positions(at.block)[at.index] = positions[static_cast<size_t>(t)];
      pool_.tags(at.block)[at.index] = kNoExpert;
      pool_.scores(at.block)[at.index] = 0.f;
      ++s.entries;
      ++entries_;
    }
  }
  L.pending = n;  // the previous ones, if a dense layer never tagged them, stay kNoExpert
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
      const Slot at = t < L.pending_sinks ? hs.sinks.at(hs.sinks.n - L.pending_sinks + t, B)
                                          : hs.recent.at(hs.recent.n - (n - t), B);
      pool_.tags(at.block)[at.index] = experts[t];
    }
  }
  L.pending = 0;
  L.pending_sinks = 0;
  graduate(s, layer);
}

// Moves the oldest recent entries beyond the window (pending ones excepted) to the
// tail of the list of their tag; entries graduate in position order, so every list
// stays sorted by position.
void PagedKvStore::graduate(Sequence& s, int layer) {
  LayerState& L = s.layers[static_cast<size_t>(layer)];
  const int64_t pending_recent = L.pending - L.pending_sinks;
  const int64_t B = config_.block_size;
  for (HeadState& hs : L.heads) {
    RecentRing& ring = hs.recent;
    while (ring.n > config_.recent_window && ring.n > pending_recent) {
      const Slot from = ring.at(0, B);
      const int32_t tag = pool_.tags(from.block)[from.index];
      BlockList& list = hs.lists[static_cast<size_t>(experts_apart_ ? tag + 1 : 0)];
      grow(s, layer, list);
      const Slot to = list.at(list.n - 1, B);
      move_entries(from.block, from.index, to.block, to.index, 1);
      pop_front(s, layer, ring);
    }
  }
}

void PagedKvStore::keep(int seq, int layer, int segment, std::span<const int32_t> entries) {
  Sequence& s = sequence(seq);
  check_layer(layer);
  check_segment(segment);
  int64_t total = 0;
  for_each_segment_list(s, layer, segment, [&](int, BlockList& list) { total += list.n; });
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i] < 0 || entries[i] >= total)
      fail("paged KV store: keep: index {} is out of range ({} entries in segment {} of layer {})",
           entries[i], total, segment, layer);
    if (i > 0 && entries[i] <= entries[i - 1])
      fail("paged KV store: keep: entry indices must be strictly increasing ({} follows {})",
           entries[i], entries[i - 1]);
  }
  size_t i = 0;
  int64_t offset = 0;  // entry index of the current list's first entry
  for_each_segment_list(s, layer, segment, [&](int, BlockList& list) {
    const int64_t end = offset + list.n;
    size_t j = i;
    while (j < entries.size() && entries[j] < end) ++j;
    compact(s, layer, list, entries.subspan(i, j - i), offset);
    offset = end;
    i = j;
  });
}

// Survivors move forward to the front of the list in one pass (an entry never moves
// backward, so nothing is overwritten before it is read), in runs that stay inside
// one source and one destination block; the blocks past the last survivor go back
// to the pool.
void PagedKvStore::compact(Sequence& s, int layer, BlockList& list,
                           std::span<const int32_t> entries, int64_t offset) {
  const int64_t B = config_.block_size;
  int64_t kept = 0;
  for (size_t i = 0; i < entries.size();) {
    const int64_t from = entries[i] - offset;
    const int64_t max_run = std::min(B - from % B, B - kept % B);
    int64_t run = 1;
    while (run < max_run && i + static_cast<size_t>(run) < entries.size() &&
           entries[i + static_cast<size_t>(run)] - offset == from + run)
      ++run;
    if (from != kept) {
      const Slot src = list.at(from, B), dst = list.at(kept, B);
      move_entries(src.block, src.index, dst.block, dst.index, run);
    }
    kept += run;
    i += static_cast<size_t>(run);
  }
  const auto n_blocks = static_cast<size_t>((kept + B - 1) / B);
  for (size_t b = n_blocks; b < list.blocks.size(); ++b) give_block(s, layer, list.blocks[b]);
  list.blocks.resize(n_blocks);
  s.entries -= list.n - kept;
  entries_ -= list.n - kept;
  list.n = kept;
}

void PagedKvStore::clear(Sequence& s) {
  for (size_t layer = 0; layer < s.layers.size(); ++layer) {
    LayerState& L = s.layers[layer];
    const auto release = [&](std::vector<int32_t>& blocks) {
      for (int32_t b : blocks) give_block(s, static_cast<int>(layer), b);
      blocks.clear();
    };
    for (HeadState& hs : L.heads) {
      release(hs.sinks.blocks);
      hs.sinks.n = 0;
      release(hs.recent.blocks);
      hs.recent = {};
      for (BlockList& list : hs.lists) {
        release(list.blocks);
        list.n = 0;
      }
    }
    L.next_position = 0;
    L.pending = 0;
    L.pending_sinks = 0;
  }
  entries_ -= s.entries;
  s.entries = 0;
  s.length = 0;
}

int32_t PagedKvStore::take_block(Sequence& s, int layer) {
  const int32_t block = pool_.allocate();
  ++layer_blocks_[static_cast<size_t>(layer)];
  ++s.blocks;
  return block;
}

void PagedKvStore::give_block(Sequence& s, int layer, int32_t block) {
  pool_.release(block);
  --layer_blocks_[static_cast<size_t>(layer)];
  --s.blocks;
}

void PagedKvStore::grow(Sequence& s, int layer, BlockList& list) {
  if (list.n == static_cast<int64_t>(list.blocks.size()) * config_.block_size)
    list.blocks.push_back(take_block(s, layer));
  ++list.n;
}

void PagedKvStore::grow(Sequence& s, int layer, RecentRing& ring) {
  if (ring.head + ring.n == static_cast<int64_t>(ring.blocks.size()) * config_.block_size)
    ring.blocks.push_back(take_block(s, layer));
  ++ring.n;
}

void PagedKvStore::pop_front(Sequence& s, int layer, RecentRing& ring) {
  ++ring.head;
  --ring.n;
  if (ring.n == 0) {  // the tail block drained too
    for (int32_t b : ring.blocks) give_block(s, layer, b);
    ring.blocks.clear();
    ring.head = 0;
  } else if (ring.head == config_.block_size) {
    give_block(s, layer, ring.blocks.front());
    ring.blocks.erase(ring.blocks.begin());  // a few block ids: ceil(window / B) + 1
    ring.head = 0;
  }
}

void PagedKvStore::move_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot,
                                int64_t n) const {
  const auto D = static_cast<size_t>(config_.shape.head_dim);
  const auto rows = static_cast<size_t>(n);
  const auto s = static_cast<size_t>(src_slot), d = static_cast<size_t>(dst_slot);
  std::memmove(pool_.k(dst) + d * D, pool_.k(src) + s * D, sizeof(float) * rows * D);
  std::memmove(pool_.v(dst) + d * D, pool_.v(src) + s * D, sizeof(float) * rows * D);
  std::memmove(pool_.positions(dst) + d, pool_.positions(src) + s, sizeof(int32_t) * rows);
  std::memmove(pool_.tags(dst) + d, pool_.tags(src) + s, sizeof(int32_t) * rows);
  std::memmove(pool_.scores(dst) + d, pool_.scores(src) + s, sizeof(float) * rows);
}

template <typename Fn>
void PagedKvStore::for_each_run(const HeadState& h, int kv_head, Fn&& fn) const {
  const int64_t B = config_.block_size;
  const auto list_runs = [&](const BlockList& list, int segment) {
    for (size_t b = 0; b < list.blocks.size(); ++b)
      fn(segment, list.blocks[b], int64_t{0}, std::min(B, list.n - static_cast<int64_t>(b) * B));
  };
  list_runs(h.sinks, kProtectedSegment);
  int64_t slot = h.recent.head;
  int64_t left = h.recent.n;
  for (size_t b = 0; left > 0; ++b) {
    const int64_t n = std::min(B - slot, left);
    fn(kProtectedSegment, h.recent.blocks[b], slot, n);
    left -= n;
    slot = 0;
  }
  for (size_t t = 0; t < h.lists.size(); ++t)
    list_runs(h.lists[t], segment_of(kv_head, static_cast<int>(t)));
}

template <typename Fn>
void PagedKvStore::for_each_segment_list(Sequence& s, int layer, int segment, Fn&& fn) const {
  LayerState& L = s.layers[static_cast<size_t>(layer)];
  const int first = heads_apart_ ? segment / n_storage_tags_ : 0;
  const int last = heads_apart_ ? first : config_.shape.n_kv_heads - 1;
  const auto storage_tag = static_cast<size_t>(segment % n_storage_tags_);
  for (int h = first; h <= last; ++h) fn(h, L.heads[static_cast<size_t>(h)].lists[storage_tag]);
}

EntryRun PagedKvStore::run(int segment, int kv_head, int32_t block, int64_t slot, int64_t n) const {
  const int64_t D = config_.shape.head_dim;
  return {segment,
          kv_head,
          n,
          pool_.k(block) + slot * D,
          pool_.v(block) + slot * D,
          pool_.positions(block) + slot,
          pool_.tags(block) + slot,
          pool_.scores(block) + slot};
}

void PagedKvStore::segments(int seq, int layer, std::vector<SegmentInfo>& out) const {
  Sequence& s = sequence(seq);
  check_layer(layer);
  for (int id = 0; id < n_segments(); ++id) {
    SegmentInfo info{id, segment_key(layer, id), 0, 0};
    for_each_segment_list(s, layer, id, [&](int, BlockList& list) {
      info.n_entries += list.n;
      info.n_blocks += static_cast<int64_t>(list.blocks.size());
    });
    if (info.n_entries > 0) out.push_back(info);
  }
}

void PagedKvStore::segment_runs(int seq, int layer, int segment, std::vector<EntryRun>& out) {
  Sequence& s = sequence(seq);
  check_layer(layer);
  check_segment(segment);
  const int64_t B = config_.block_size;
  for_each_segment_list(s, layer, segment, [&](int h, BlockList& list) {
    for (size_t b = 0; b < list.blocks.size(); ++b)
      out.push_back(
          run(segment, h, list.blocks[b], 0, std::min(B, list.n - static_cast<int64_t>(b) * B)));
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
  return h.sinks.n + h.recent.n;
}

void PagedKvStore::blocks(int seq, std::vector<int32_t>& out) const {
  const Sequence& s = sequence(seq);
  for (const LayerState& L : s.layers) {
    for (const HeadState& h : L.heads) {
      out.insert(out.end(), h.sinks.blocks.begin(), h.sinks.blocks.end());
      out.insert(out.end(), h.recent.blocks.begin(), h.recent.blocks.end());
      for (const BlockList& list : h.lists)
        out.insert(out.end(), list.blocks.begin(), list.blocks.end());
    }
  }
}

int PagedKvStore::defragment() {
  if (pool_.begin_drain() > 0) {
    const auto move_out = [&](std::vector<int32_t>& blocks) {
      for (int32_t& b : blocks)
        if (pool_.draining(b)) b = pool_.move(b);
    };
    for (const auto& s : sequences_) {
      if (!s) continue;
      for (LayerState& L : s->layers) {
        for (HeadState& h : L.heads) {
          move_out(h.sinks.blocks);
          move_out(h.recent.blocks);
          for (BlockList& list : h.lists) move_out(list.blocks);
        }
      }
    }
  }
  return pool_.end_drain();
}

namespace {

StoreBytes entry_bytes(int64_t entries, int64_t blocks, int64_t head_dim, size_t block_bytes) {
  const auto n = static_cast<size_t>(entries);
  return {n * 2 * static_cast<size_t>(head_dim) * sizeof(float),
          n * (sizeof(int32_t) + sizeof(int32_t) + sizeof(float)),
          static_cast<size_t>(blocks) * block_bytes};
}

}  // namespace

int64_t PagedKvStore::blocks_in_use(int layer) const {
  check_layer(layer);
  return layer_blocks_[static_cast<size_t>(layer)];
}

StoreBytes PagedKvStore::bytes(int seq) const {
  const Sequence& s = sequence(seq);
  return entry_bytes(s.entries, s.blocks, config_.shape.head_dim, pool_.block_bytes());
}

StoreBytes PagedKvStore::bytes() const {
  return entry_bytes(entries_, pool_.blocks_in_use(), config_.shape.head_dim, pool_.block_bytes());
}

}  // namespace ekva
