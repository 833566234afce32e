#include "kv/kv_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "core/error.h"

// Under AddressSanitizer, free blocks are poisoned so that reading a block after its
// release (a stale view chunk, say) is reported: the slabs come from mmap, which
// ASan does not track by itself.
#if defined(__SANITIZE_ADDRESS__)
#define EKVA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EKVA_ASAN 1
#endif
#endif
#ifdef EKVA_ASAN
#include <sanitizer/asan_interface.h>
#define EKVA_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define EKVA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define EKVA_POISON(p, n) ((void)(p), (void)(n))
#define EKVA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace ekva {

namespace {

constexpr size_t kAlign = 64;  // a cache line; also keeps K and V rows 16-byte aligned
constexpr size_t kDefaultSlabBytes = size_t{2} << 20;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

KvArena::KvArena(KvArenaConfig config)
    : block_size_(config.block_size),
      head_dim_(config.head_dim),
      stored_dim_(config.head_dim),
      dtype_(config.dtype),
      memory_(config.memory),
      max_empty_slabs_(config.max_empty_slabs),
      keys_only_(config.keys_only) {
  if (block_size_ <= 0) fail("KV arena: block_size must be positive, got {}", block_size_);
  if (head_dim_ <= 0) fail("KV arena: head_dim must be positive, got {}", head_dim_);
  if (dtype_ != DType::kBF16 && dtype_ != DType::kF32)
    fail("KV arena: K/V are stored in bf16 or f32, not {}", dtype_name(dtype_));
  if (config.slab_blocks < 0 || max_empty_slabs_ < 0)
    fail("KV arena: slab_blocks ({}) and max_empty_slabs ({}) must not be negative",
         config.slab_blocks, max_empty_slabs_);
  if (memory_ != nullptr) {
    stored_dim_ = static_cast<int>(memory_->row_width(head_dim_));
    if (stored_dim_ <= 0)
      fail("KV arena: head_dim {} cannot be stored in device memory {} (its kernels lack it)",
           head_dim_, memory_->memory_domain());
    if (dtype_ != DType::kBF16)
      fail("KV arena: K/V in device memory are stored in bf16 (what its kernels read), not {}",
           dtype_name(dtype_));
    if (keys_only_) fail("KV arena: keys-only (MLA) blocks are not in device memory yet");
  }
  const auto B = static_cast<size_t>(block_size_);
  row_bytes_ = static_cast<size_t>(stored_dim_) * dtype_size(dtype_);
  v_offset_ = keys_only_ ? 0 : align_up(B * row_bytes_);
  block_bytes_ = keys_only_ ? align_up(B * row_bytes_) : v_offset_ + align_up(B * row_bytes_);
  if (memory_ != nullptr) {  // kernel cells after V
    positions_offset_ = block_bytes_;
    scores_offset_ = positions_offset_ + align_up(B * sizeof(int32_t));
    block_bytes_ = scores_offset_ + align_up(B * sizeof(float));
  }
  const size_t slab_target = memory_ != nullptr ? memory_->slab_bytes() : kDefaultSlabBytes;
  const size_t wanted = config.slab_blocks > 0 ? static_cast<size_t>(config.slab_blocks)
                                               : std::max<size_t>(1, slab_target / block_bytes_);
  slab_shift_ = std::bit_width(std::bit_ceil(wanted)) - 1;
  if (slab_shift_ > 20) fail("KV arena: {} blocks per slab is too many (at most 2^20)", wanted);
  slab_mask_ = (int32_t{1} << slab_shift_) - 1;
}

KvArena::~KvArena() {
  const size_t slab_bytes = static_cast<size_t>(slab_blocks()) * block_bytes_;
  for (const Slab& s : slabs_) {
    if (!s.base) continue;
    if (memory_ != nullptr) {
      try {
        memory_->unmap(s.base, slab_bytes);
      } catch (...) {  // a device error that the next synchronize reports
      }
      continue;
    }
    EKVA_UNPOISON(s.base, slab_bytes);
    munmap(s.base, slab_bytes);
  }
}

int32_t KvArena::allocate() {
  int slab = -1;
  for (size_t w = 0; w < has_free_.size(); ++w) {
    if (has_free_[w]) {
      slab = static_cast<int>(w * 64) + std::countr_zero(has_free_[w]);
      break;
    }
  }
  if (slab < 0) slab = map_slab();
  Slab& s = slabs_[static_cast<size_t>(slab)];
  if (s.free.size() == static_cast<size_t>(slab_blocks())) --slabs_empty_;
  const int32_t index = s.free.back();
  s.free.pop_back();
  s.used[static_cast<size_t>(index)] = true;
  if (s.free.empty()) set_has_free(slab, false);
  ++blocks_in_use_;
  const int32_t block = (slab << slab_shift_) | index;
  if (memory_ == nullptr) EKVA_UNPOISON(base(block), block_bytes_);
  return block;
}

void KvArena::release(int32_t block) {
  EKVA_CHECK(in_use(block), "KV arena: block {} released but not in use", block);
  if (memory_ == nullptr) EKVA_POISON(base(block), block_bytes_);
  const int slab = block >> slab_shift_;
  Slab& s = slabs_[static_cast<size_t>(slab)];
  const int32_t index = block & slab_mask_;
  s.used[static_cast<size_t>(index)] = false;
  s.free.push_back(index);
  if (!s.draining) set_has_free(slab, true);
  --blocks_in_use_;
  if (s.free.size() == static_cast<size_t>(slab_blocks())) {
    ++slabs_empty_;
    if (s.draining || slabs_empty_ > max_empty_slabs_) unmap_slab(slab);
  }
}

int KvArena::release_empty_slabs() {
  int released = 0;
  for (size_t s = 0; s < slabs_.size(); ++s) {
    if (slabs_[s].base && slabs_[s].free.size() == static_cast<size_t>(slab_blocks())) {
      unmap_slab(static_cast<int>(s));
      ++released;
    }
  }
  return released;
}

int KvArena::begin_drain() {
  EKVA_CHECK(draining_.empty(), "KV arena: a drain is already under way");
  const int64_t per_slab = slab_blocks();
  const auto keep = static_cast<size_t>((blocks_in_use_ + per_slab - 1) / per_slab);
  std::vector<int> mapped;  // fullest first
  for (size_t s = 0; s < slabs_.size(); ++s)
    if (slabs_[s].base) mapped.push_back(static_cast<int>(s));
  std::stable_sort(mapped.begin(), mapped.end(), [&](int a, int b) {
    return slabs_[static_cast<size_t>(a)].free.size() < slabs_[static_cast<size_t>(b)].free.size();
  });
  for (size_t i = keep; i < mapped.size(); ++i) {
    slabs_[static_cast<size_t>(mapped[i])].draining = true;
    set_has_free(mapped[i], false);
    draining_.push_back(mapped[i]);
  }
  return static_cast<int>(draining_.size());
}

int32_t KvArena::move(int32_t block) {
  // The slabs kept by begin_drain() have room for every block in use, so this never
  // maps a slab.
  const int32_t to = allocate();
  if (memory_ != nullptr)
    memory_->copy(base(to), base(block), block_bytes_);
  else
    std::memcpy(base(to), base(block), block_bytes_);
  release(block);
  return to;
}

void KvArena::write(int32_t block, int64_t slot, const float* k, const float* v, int32_t position) {
  EKVA_DCHECK(in_use(block) && slot >= 0 && slot < block_size_, "block {} slot {}", block, slot);
  std::byte* const kd = base(block) + static_cast<size_t>(slot) * row_bytes_;
  std::byte* const vd = kd + v_offset_;
  if (memory_ != nullptr) {
    memory_->write({kd, vd, const_cast<int32_t*>(kernel_positions(block)) + slot,
                    kernel_scores(block) + slot, k, v, position},
                   head_dim_, stored_dim_);
    return;
  }
  if (dtype_ == DType::kF32) {
    std::memcpy(kd, k, row_bytes_);
    if (!keys_only_) std::memcpy(vd, v, row_bytes_);
    return;
  }
  auto* kb = reinterpret_cast<uint16_t*>(kd);
  for (int d = 0; d < head_dim_; ++d) kb[d] = f32_to_bf16(k[d]);
  if (keys_only_) return;
  auto* vb = reinterpret_cast<uint16_t*>(vd);
  for (int d = 0; d < head_dim_; ++d) vb[d] = f32_to_bf16(v[d]);
}

void KvArena::copy_entries(int32_t src, int64_t src_slot, int32_t dst, int64_t dst_slot,
                           int64_t n) {
  const size_t bytes = static_cast<size_t>(n) * row_bytes_;
  std::byte* const from = base(src) + static_cast<size_t>(src_slot) * row_bytes_;
  std::byte* const to = base(dst) + static_cast<size_t>(dst_slot) * row_bytes_;
  if (memory_ != nullptr) {
    memory_->copy(to, from, bytes);
    memory_->copy(to + v_offset_, from + v_offset_, bytes);
    const size_t cells = static_cast<size_t>(n) * 4;
    memory_->copy(base(dst) + positions_offset_ + static_cast<size_t>(dst_slot) * 4,
                  base(src) + positions_offset_ + static_cast<size_t>(src_slot) * 4, cells);
    memory_->copy(base(dst) + scores_offset_ + static_cast<size_t>(dst_slot) * 4,
                  base(src) + scores_offset_ + static_cast<size_t>(src_slot) * 4, cells);
    return;
  }
  std::memmove(to, from, bytes);
  if (!keys_only_) std::memmove(to + v_offset_, from + v_offset_, bytes);
}

void KvArena::flush() const {
  if (memory_ != nullptr) memory_->flush();
}

int KvArena::end_drain() {
  int returned = 0;
  for (int slab : draining_) {
    Slab& s = slabs_[static_cast<size_t>(slab)];
    if (!s.base) {  // emptied, and unmapped, while draining
      ++returned;
      continue;
    }
    s.draining = false;
    if (s.free.size() == static_cast<size_t>(slab_blocks())) {
      unmap_slab(slab);
      ++returned;
    } else if (!s.free.empty()) {
      set_has_free(slab, true);
    }
  }
  draining_.clear();
  return returned;
}

bool KvArena::in_use(int32_t block) const {
  if (block < 0) return false;
  const auto slab = static_cast<size_t>(block >> slab_shift_);
  return slab < slabs_.size() && slabs_[slab].base &&
         slabs_[slab].used[static_cast<size_t>(block & slab_mask_)];
}

int KvArena::map_slab() {
  // Anonymous mmap rather than operator new: munmap really returns the pages, where
  // malloc may keep large freed chunks in its arenas.
  const size_t bytes = static_cast<size_t>(slab_blocks()) * block_bytes_;
  void* p = nullptr;
  if (memory_ != nullptr) {
    try {
      p = memory_->map(bytes);
    } catch (const Error& e) {
      fail("KV arena: cannot map a slab of {} bytes ({} blocks in use, {} bytes mapped): {}", bytes,
           blocks_in_use_, reserved_bytes(), e.what());
    }
  } else {
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      fail("KV arena: cannot map a slab of {} bytes ({} blocks in use): {}", bytes, blocks_in_use_,
           std::strerror(errno));
  }
  size_t slab = 0;
  while (slab < slabs_.size() && slabs_[slab].base) ++slab;  // reuse a returned slab's id
  if (slab == slabs_.size()) {
    if (static_cast<int64_t>(slab + 1) << slab_shift_ > (int64_t{1} << 31)) {
      if (memory_ != nullptr)
        memory_->unmap(static_cast<std::byte*>(p), bytes);
      else
        munmap(p, bytes);
      fail("KV arena: more than 2^31 blocks");
    }
    slabs_.emplace_back();
    has_free_.resize(slabs_.size() / 64 + 1, 0);
  }
  Slab& s = slabs_[slab];
  s.base = static_cast<std::byte*>(p);
  if (memory_ == nullptr) EKVA_POISON(p, bytes);
  s.used.assign(static_cast<size_t>(slab_blocks()), false);
  s.free.resize(static_cast<size_t>(slab_blocks()));
  // A stack popped from the back: index 0 is handed out first, so blocks fill a
  // slab from its start.
  for (int32_t i = 0; i < slab_blocks(); ++i)
    s.free[static_cast<size_t>(i)] = slab_blocks() - 1 - i;
  set_has_free(static_cast<int>(slab), true);
  ++slabs_mapped_;
  peak_slabs_mapped_ = std::max(peak_slabs_mapped_, slabs_mapped_);
  ++slabs_empty_;
  return static_cast<int>(slab);
}

// Only for empty slabs.
void KvArena::unmap_slab(int slab) {
  Slab& s = slabs_[static_cast<size_t>(slab)];
  const size_t bytes = static_cast<size_t>(slab_blocks()) * block_bytes_;
  if (memory_ != nullptr) {
    memory_->unmap(s.base, bytes);
  } else {
    EKVA_UNPOISON(s.base, bytes);
    munmap(s.base, bytes);
  }
  s.base = nullptr;
  s.free = {};
  s.used = {};
  s.draining = false;
  set_has_free(slab, false);
  --slabs_mapped_;
  --slabs_empty_;
}

void KvArena::set_has_free(int slab, bool value) {
  const uint64_t bit = uint64_t{1} << (slab % 64);
  uint64_t& word = has_free_[static_cast<size_t>(slab / 64)];
  word = value ? word | bit : word & ~bit;
}

}  // namespace ekva
