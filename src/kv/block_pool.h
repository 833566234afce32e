// The block pool under the ragged paged KV store: fixed-size blocks, each holding up
// to `block_size` KV entries of one kv-head together with their metadata, carved out
// of large slabs and recycled through free lists.
//
// One pool serves every layer and every sequence of a store. A block of one kv-head
// has the same shape in every layer (same head_dim), so a block freed by eviction in
// one layer can be reused at once by any layer of any sequence; per-layer pools would
// strand free blocks in the layers that compress most while others grow. Per-layer
// accounting is kept by the store, which knows the layer of every block it holds.
//
// Not thread-safe: the store that owns the pool serialises its calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ekva {

struct BlockPoolConfig {
  int block_size = 32;  // entries per block
  int head_dim = 0;
  // Blocks per slab (rounded up to a power of two so a block id splits into slab and
  // index with a shift); 0 picks about 2 MiB per slab.
  int slab_blocks = 0;
  // Empty slabs kept mapped to absorb allocate/release churn; a slab that becomes
  // empty beyond these is returned to the OS at once.
  int max_empty_slabs = 1;
};

// Layout of one block, block_bytes() long and 64-byte aligned (B = block_size,
// D = head_dim):
//   k         [B, D] f32   keys, RoPE applied at write
//   v         [B, D] f32
//   positions [B]    i32   original token positions
//   tags      [B]    i32   expert tag (top-1 expert of the entry's layer)
//   scores    [B]    f32   score a policy accumulates (e.g. H2O attention mass)
// K, V and metadata share one block so a block id is the only handle a kernel or a
// block table needs, and freeing a block frees its metadata with it.
class BlockPool {
 public:
  explicit BlockPool(BlockPoolConfig config);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

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
  // references; end_drain() returns the drained slabs to the OS. Returns the number
  // of slabs marked, and returned.
  int begin_drain();
  bool draining(int32_t block) const {
    return slabs_[static_cast<size_t>(block >> slab_shift_)].draining;
  }
  // A block outside the draining slabs with the same contents; `block` is released.
  int32_t move(int32_t block);
  int end_drain();

  float* k(int32_t block) const { return reinterpret_cast<float*>(base(block)); }
  float* v(int32_t block) const { return reinterpret_cast<float*>(base(block) + v_offset_); }
  int32_t* positions(int32_t block) const {
    return reinterpret_cast<int32_t*>(base(block) + positions_offset_);
  }
  int32_t* tags(int32_t block) const {
    return reinterpret_cast<int32_t*>(base(block) + tags_offset_);
  }
  float* scores(int32_t block) const {
    return reinterpret_cast<float*>(base(block) + scores_offset_);
  }

  int block_size() const { return block_size_; }
  int head_dim() const { return head_dim_; }
  int slab_blocks() const { return 1 << slab_shift_; }
  size_t block_bytes() const { return block_bytes_; }
  bool in_use(int32_t block) const;
  int64_t blocks_in_use() const { return blocks_in_use_; }
  // Free blocks inside mapped slabs.
  int64_t blocks_free() const { return slabs_mapped_ * slab_blocks() - blocks_in_use_; }
  int64_t slabs_mapped() const { return slabs_mapped_; }
  // Bytes mapped from the OS: slabs mapped x slab bytes, whether or not in use.
  size_t reserved_bytes() const {
    return static_cast<size_t>(slabs_mapped_) * static_cast<size_t>(slab_blocks()) * block_bytes_;
  }

 private:
  struct Slab {
    std::byte* base = nullptr;  // nullptr: not mapped (the slab id is free for reuse)
    std::vector<int32_t> free;  // [<= slab_blocks] free block indices, a stack
    std::vector<bool> used;     // [slab_blocks]
    bool draining = false;      // allocate() skips it; unmapped as soon as it empties
  };

  std::byte* base(int32_t block) const {
    return slabs_[static_cast<size_t>(block >> slab_shift_)].base +
           static_cast<size_t>(block & slab_mask_) * block_bytes_;
  }
  int map_slab();
  void unmap_slab(int slab);
  void set_has_free(int slab, bool value);

  int block_size_;
  int head_dim_;
  int slab_shift_;
  int32_t slab_mask_;
  int max_empty_slabs_;
  size_t v_offset_, positions_offset_, tags_offset_, scores_offset_, block_bytes_;
  std::vector<Slab> slabs_;         // [slab id]
  std::vector<uint64_t> has_free_;  // bit per slab id: mapped, not full, not draining
  std::vector<int> draining_;       // slab ids marked by begin_drain()
  int64_t blocks_in_use_ = 0;
  int64_t slabs_mapped_ = 0;
  int64_t slabs_empty_ = 0;  // mapped slabs with no block in use
};

}  // namespace ekva
