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
// The seam for a device arena: a block id is (slab, index), and the block's bytes
// sit at slab_base(slab) + offset(block). The store never dereferences k() or v()
// itself; it writes entries with write(), moves them with copy_entries() and
// move(), and hands k()/v() on (KvChunk, EntryRun) to the backend that reads them.
// This arena keeps its slabs in host memory (anonymous mmap); a CUDA arena would
// keep the same block layout and id split in device memory, implement write /
// copy_entries / move with copies on its stream, and the store above would not
// change. Host readers of EntryRun::k (the K-norm policy) would then need a kernel.
//
// Not thread-safe: the store that owns the arena serialises its calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace ekva {

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
};

// Layout of one block, block_bytes() long and 64-byte aligned (B = block_size,
// D = head_dim, in the stored dtype):
//   k [B, D]   keys, RoPE applied before the write
//   v [B, D]   values (absent when keys_only: v() == k())
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
  // converted to the stored dtype (bf16: rounded to nearest even).
  // (keys_only: v is not read and may be null.)
  void write(int32_t block, int64_t slot, const float* k, const float* v);
  // Copies n entries' K and V; source and destination may overlap within a block.
  void copy_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot, int64_t n);

  // Where the block's K and V rows live, in the arena's memory ([B, D] of dtype()):
  // for the backend that reads them, and for tests.
  const void* k(int32_t block) const { return base(block); }
  const void* v(int32_t block) const { return base(block) + v_offset_; }
  // Byte offset of a block from the base of its slab (the id split a device arena keeps).
  size_t offset(int32_t block) const {
    return static_cast<size_t>(block & slab_mask_) * block_bytes_;
  }

  DType dtype() const { return dtype_; }
  int block_size() const { return block_size_; }
  int head_dim() const { return head_dim_; }
  bool keys_only() const { return keys_only_; }
  int slab_blocks() const { return 1 << slab_shift_; }
  int slab_shift() const { return slab_shift_; }
  size_t row_bytes() const { return row_bytes_; }  // one entry's K (or V)
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
  DType dtype_;
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
