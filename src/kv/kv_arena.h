// The K/V storage arena under the ragged paged KV store: fixed-size blocks, each
// holding the keys and values of up to `block_size` entries of one kv-head in the
// stored dtype, carved out of large slabs and recycled through free lists. The
// entries' metadata (positions, tags, scores) are not here: they are cells
// (kv/kv_cells.h), host memory that policies read, indexed by the same block id.
//
// One arena serves every layer and every sequence of a store. A block of one kv-head
// has the same shape in every layer (same head_dim), so a block freed by eviction in
// one layer can be reused at once by any layer of any sequence; per-layer arenas
// would strand free blocks in the layers that compress most while others grow.
// Per-layer accounting is kept by the store, which knows the layer of every block.
//
// The same arena lives in a GPU's memory when its config names a KvArenaMemory (the
// GPU library's, cuda/device_kv_arena.h): a block id is (slab, index) there too and
// the block's bytes sit at the slab's base + offset(block), but the slabs are device
// memory, and each block also carries the two cells that kernels read and write
// (positions for the mask, score slots that attention adds probabilities to), so a
// kernel needs nothing but the block id. The store never dereferences k() or v(): it
// writes entries with write(), moves them with copy_entries() and move(), and hands
// k()/v() on (KvChunk, EntryRun) to the backend that reads them. In device memory those
// calls are queued and run in order on the device's stream at flush() (the store's
// views flush before they hand out chunks, so one flush carries every sequence's
// appends of a layer); host readers of
// EntryRun::k (the K-norm policy) cannot read them there.
//
// Not thread-safe: the store that owns the arena serialises its calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/dtype.h"

namespace ekva {

class KvArenaMemory;

struct KvArenaConfig {
  int block_size = 32;  // entries per block
  int head_dim = 0;
  DType dtype = DType::kBF16;  // stored K/V element type: kBF16 or kF32
  // Blocks per slab (rounded up to a power of two so a block id splits into slab and
  // index with a shift); 0 picks about 2 MiB per slab.
  int slab_blocks = 0;
  // Empty slabs kept mapped to absorb allocate/release churn; a slab that becomes
  // empty beyond these is returned to the OS at once.
  int max_empty_slabs = 1;
  // Blocks hold keys only (MLA: values are a prefix of each key row); v() is k().
  bool keys_only = false;
  // Where the slabs live; nullptr: host memory (anonymous mmap).
  KvArenaMemory* memory = nullptr;
};

// Memory other than the host's for an arena's slabs (a GPU's), with the copies that
// write and move entries there. write() and copy() are queued and run, in the order
// queued, at flush() (and before read()); the arena computes every address.
class KvArenaMemory {
 public:
  virtual ~KvArenaMemory() = default;
  // Backend::memory_domain of the backend that reads the arena's K/V.
  virtual int memory_domain() const = 0;
  // The width a row of head_dim values is stored with (a kernel's padded head dim;
  // the columns past head_dim are zero); 0 when the memory's readers have none.
  virtual int64_t row_width(int64_t head_dim) const = 0;
  // Slab size that amortises map() (a device allocation).
  virtual size_t slab_bytes() const = 0;
  // `bytes` of this memory; throws ekva::Error (naming the bytes) when it has no room.
  virtual std::byte* map(size_t bytes) = 0;
  virtual void unmap(std::byte* base, size_t bytes) = 0;
  // One entry: rows src_k, src_v of `head_dim` f32 (in this memory: the forward pass's
  // K/V) stored at k, v as `width` bf16 values (zero past head_dim); *position set,
  // *score set to 0.
  struct Write {
    std::byte* k;
    std::byte* v;
    int32_t* position;
    float* score;
    const float* src_k;
    const float* src_v;
    int32_t value;  // the position
  };
  virtual void write(const Write& w, int64_t head_dim, int64_t width) = 0;
  // bytes from src to dst (multiples of 4 bytes, 4-byte aligned). The result is that of
  // running the copies queued so far one after the other.
  virtual void copy(std::byte* dst, const std::byte* src, size_t bytes) = 0;
  virtual void flush() = 0;
  // Copies each src range to host memory, after everything queued; returns when done.
  struct Read {
    const std::byte* src;
    std::byte* host;
    size_t bytes;
  };
  virtual void read(std::span<const Read> reads) = 0;
};

// Layout of one block, block_bytes() long and 64-byte aligned (B = block_size,
// D = stored_dim(): head_dim, or the memory's row width, in the stored dtype):
//   k [B, D]   keys, RoPE applied before the write
//   v [B, D]   values (absent when keys_only: v() == k())
//   positions [B] int32, scores [B] f32: kernel cells, in a KvArenaMemory only
// K and V of an entry sit at the same slot of the same block, so one block id (with
// the slot) is the only handle a kernel, a block table or the cells need.
class KvArena {
 public:
  explicit KvArena(KvArenaConfig config);
  ~KvArena();
  KvArena(const KvArena&) = delete;
  KvArena& operator=(const KvArena&) = delete;

  // A free block id (>= 0); maps a new slab when every mapped one is full. Blocks
  // come from the lowest-numbered slab that has one, so live blocks pack into few
  // slabs and the others can drain and be returned.
  int32_t allocate();
  // Gives a block back; releasing a block that is not in use is an error.
  void release(int32_t block);
  // Returns every empty slab to the OS; the number of slabs returned.
  int release_empty_slabs();

  // Defragmentation, for when eviction leaves the live blocks scattered over many
  // slabs: begin_drain() marks every mapped slab beyond the fewest that can hold the
  // blocks in use (the sparsest ones) as draining, and allocate() stops using them;
  // the owner then moves each block of a draining slab with move() and updates its
  // references (cells included); end_drain() returns the drained slabs to the OS.
  // Returns the number of slabs marked, and returned.
  int begin_drain();
  bool draining(int32_t block) const {
    return slabs_[static_cast<size_t>(block >> slab_shift_)].draining;
  }
  // A block outside the draining slabs with the same K/V; `block` is released.
  int32_t move(int32_t block);
  int end_drain();

  // Stores entry `slot` of `block`: one row of head_dim f32 values each for K and V,
  // converted to the stored dtype (bf16: rounded to nearest even), read from the
  // arena's memory (device rows for a device arena); `position` goes to the kernel
  // cells where there are some. (keys_only: v is not read and may be null.)
  void write(int32_t block, int64_t slot, const float* k, const float* v, int32_t position = 0);
  // Copies n entries' K and V (and kernel cells); source and destination may overlap
  // within a block.
  void copy_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot, int64_t n);
  // Runs what a device arena queued (no-op on the host). Const: it changes the
  // device memory's contents, never the arena's layout (views flush before reading).
  void flush() const;

  // Where the block's K and V rows live, in the arena's memory ([B, D] of dtype()):
  // for the backend that reads them, and for tests.
  const void* k(int32_t block) const { return base(block); }
  const void* v(int32_t block) const { return base(block) + v_offset_; }
  // Byte offset of a block from the base of its slab (the id split a device arena keeps).
  size_t offset(int32_t block) const {
    return static_cast<size_t>(block & slab_mask_) * block_bytes_;
  }

  // Kernel cells (a KvArenaMemory's arena only, else nullptr): the block's [B]
  // positions and score slots, in the arena's memory.
  const int32_t* kernel_positions(int32_t block) const {
    return memory_ ? reinterpret_cast<const int32_t*>(base(block) + positions_offset_) : nullptr;
  }
  float* kernel_scores(int32_t block) const {
    return memory_ ? reinterpret_cast<float*>(base(block) + scores_offset_) : nullptr;
  }
  KvArenaMemory* memory() const { return memory_; }
  // Where K/V live: 0 (host), or the KvArenaMemory's domain.
  int memory_domain() const { return memory_ ? memory_->memory_domain() : 0; }

  DType dtype() const { return dtype_; }
  int block_size() const { return block_size_; }
  int head_dim() const { return head_dim_; }
  int stored_dim() const { return stored_dim_; }  // head_dim, or the memory's row width
  bool keys_only() const { return keys_only_; }
  int slab_blocks() const { return 1 << slab_shift_; }
  int slab_shift() const { return slab_shift_; }
  size_t row_bytes() const { return row_bytes_; }  // one entry's K (or V), stored_dim wide
  size_t block_bytes() const { return block_bytes_; }
  bool in_use(int32_t block) const;
  int64_t blocks_in_use() const { return blocks_in_use_; }
  // Free blocks inside mapped slabs.
  int64_t blocks_free() const { return slabs_mapped_ * slab_blocks() - blocks_in_use_; }
  int64_t slabs_mapped() const { return slabs_mapped_; }
  // Bytes mapped from the OS: slabs mapped x slab bytes, whether or not in use.
  size_t reserved_bytes() const { return slab_bytes(slabs_mapped_); }
  // The most reserved_bytes() since construction or the last reset_peak(): what a
  // prefill needed mapped at its worst moment.
  size_t peak_reserved_bytes() const { return slab_bytes(peak_slabs_mapped_); }
  void reset_peak() { peak_slabs_mapped_ = slabs_mapped_; }

 private:
  struct Slab {
    std::byte* base = nullptr;  // nullptr: not mapped (the slab id is free for reuse)
    std::vector<int32_t> free;  // [<= slab_blocks] free block indices, a stack
    std::vector<bool> used;     // [slab_blocks]
    bool draining = false;      // allocate() skips it; unmapped as soon as it empties
  };

  size_t slab_bytes(int64_t slabs) const {
    return static_cast<size_t>(slabs) * static_cast<size_t>(slab_blocks()) * block_bytes_;
  }
  std::byte* base(int32_t block) const {
    return slabs_[static_cast<size_t>(block >> slab_shift_)].base + offset(block);
  }
  int map_slab();
  void unmap_slab(int slab);
  void set_has_free(int slab, bool value);

  int block_size_;
  int head_dim_;
  int stored_dim_;
  DType dtype_;
  KvArenaMemory* memory_;
  size_t positions_offset_ = 0, scores_offset_ = 0;
  int slab_shift_;
  int32_t slab_mask_;
  int max_empty_slabs_;
  bool keys_only_;
  size_t row_bytes_, v_offset_, block_bytes_;
  std::vector<Slab> slabs_;         // [slab id]
  std::vector<uint64_t> has_free_;  // bit per slab id: mapped, not full, not draining
  std::vector<int> draining_;       // slab ids marked by begin_drain()
  int64_t blocks_in_use_ = 0;
  int64_t slabs_mapped_ = 0;
  int64_t peak_slabs_mapped_ = 0;
  int64_t slabs_empty_ = 0;  // mapped slabs with no block in use
};

}  // namespace ekva
