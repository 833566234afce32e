// The cells of the paged KV store: per-entry host metadata that policies and the
// store read and change (position, expert tag, score), kept apart from the K/V
// storage (kv/kv_arena.h) that kernels read, and indexed by the same block id and
// slot. Cells are always host memory, whatever backend holds the arena: the store
// walks them on every append, tag and eviction, and policies rank from them.
//
// Cells are allocated per slab of block ids (the arena's id split), freed when the
// last block of a slab goes, so they follow the arena's memory without asking it.
//
// Not thread-safe: the store that owns them serialises its calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace ekva {

class KvCells {
 public:
  // block_size entries per block; block ids split into slab and index at slab_shift
  // (KvArena::slab_shift()).
  KvCells(int block_size, int slab_shift);

  // Cells for a block the arena just handed out (contents undefined) / gave back.
  void add(int32_t block);
  void remove(int32_t block);
  // Copies n entries' cells; source and destination may overlap within a block.
  void copy_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot, int64_t n);

  // Per block: [B] each.
  int32_t* positions(int32_t block) const { return reinterpret_cast<int32_t*>(base(block)); }
  int32_t* tags(int32_t block) const {
    return reinterpret_cast<int32_t*>(base(block)) + block_size_;
  }
  float* scores(int32_t block) const {
    return reinterpret_cast<float*>(base(block) + 2 * block_size_ * sizeof(int32_t));
  }
  // position + tag + score per entry.
  static constexpr size_t kEntryBytes = sizeof(int32_t) + sizeof(int32_t) + sizeof(float);
  size_t block_bytes() const { return static_cast<size_t>(block_size_) * kEntryBytes; }

 private:
  // One slab: [slab_blocks][positions B | tags B | scores B].
  struct Slab {
    std::unique_ptr<std::byte[]> data;
    int64_t blocks = 0;  // blocks added and not removed
  };
  std::byte* base(int32_t block) const {
    return slabs_[static_cast<size_t>(block >> slab_shift_)].data.get() +
           static_cast<size_t>(block & slab_mask_) * block_bytes();
  }

  int block_size_;
  int slab_shift_;
  int32_t slab_mask_;
  std::vector<Slab> slabs_;  // [slab id]
};

}  // namespace ekva
