#include "kv/kv_cells.h"

#include <cstring>

#include "core/error.h"

namespace ekva {

KvCells::KvCells(int block_size, int slab_shift)
    : block_size_(block_size), slab_shift_(slab_shift), slab_mask_((int32_t{1} << slab_shift) - 1) {
  EKVA_CHECK(block_size > 0 && slab_shift >= 0 && slab_shift <= 20,
             "KV cells: block_size {}, slab_shift {}", block_size, slab_shift);
}

void KvCells::add(int32_t block) {
  EKVA_CHECK(block >= 0, "KV cells: block id {}", block);
  const auto slab = static_cast<size_t>(block >> slab_shift_);
  if (slab >= slabs_.size()) slabs_.resize(slab + 1);
  Slab& s = slabs_[slab];
  if (!s.data) s.data = std::make_unique<std::byte[]>((size_t{1} << slab_shift_) * block_bytes());
  ++s.blocks;
}

void KvCells::remove(int32_t block) {
  const auto slab = static_cast<size_t>(block >> slab_shift_);
  EKVA_CHECK(block >= 0 && slab < slabs_.size() && slabs_[slab].blocks > 0,
             "KV cells: block {} removed but never added", block);
  Slab& s = slabs_[slab];
  if (--s.blocks == 0) s.data.reset();
}

void KvCells::copy_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot,
                           int64_t n) {
  const auto rows = static_cast<size_t>(n);
  std::memmove(positions(dst) + dst_slot, positions(src) + src_slot, sizeof(int32_t) * rows);
  std::memmove(tags(dst) + dst_slot, tags(src) + src_slot, sizeof(int32_t) * rows);
  std::memmove(scores(dst) + dst_slot, scores(src) + src_slot, sizeof(float) * rows);
}

}  // namespace ekva
