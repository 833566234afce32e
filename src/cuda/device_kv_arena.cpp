#include "cuda/device_kv_arena.h"

#include <cstring>

#include <cuda_runtime.h>

#include "core/error.h"
#include "cuda/attention.cuh"
#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda/kv_store.cuh"

namespace ekva::cuda {

namespace {
constexpr uint64_t kStagingAlign = 16;
}

DeviceKvArenaMemory::DeviceKvArenaMemory(CudaBackend& backend) : backend_(backend) {}

DeviceKvArenaMemory::~DeviceKvArenaMemory() {
  try {
    backend_.synchronize();
  } catch (...) {  // the next synchronize of the backend reports a device fault
  }
  for (Buffer* b : {&table_, &staging_}) cudaFree(b->ptr);
}

int DeviceKvArenaMemory::memory_domain() const { return backend_.memory_domain(); }

int64_t DeviceKvArenaMemory::row_width(int64_t head_dim) const {
  return attention_padded_head_dim(head_dim);
}

std::byte* DeviceKvArenaMemory::map(size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    fail(
        "device {}: no room for {} bytes of KV blocks ({} of {} bytes free, {} mapped by the KV "
        "store): {}",
        backend_.device(), bytes, free, total, mapped_, cudaGetErrorString(status));
  }
  mapped_ += bytes;
  return static_cast<std::byte*>(p);
}

void DeviceKvArenaMemory::unmap(std::byte* base, size_t bytes) {
  flush();
  backend_.synchronize();  // nothing queued reads the slab any more
  EKVA_CUDA_CHECK(cudaFree(base));
  mapped_ -= bytes;
}

void DeviceKvArenaMemory::write(const Write& w, int64_t head_dim, int64_t width) {
  if (!copies_.empty()) flush_copies();
  if (!writes_.empty() && (head_dim != write_dim_ || width != write_width_)) flush_writes();
  write_dim_ = head_dim;
  write_width_ = width;
  writes_.push_back({reinterpret_cast<uint16_t*>(w.k), reinterpret_cast<uint16_t*>(w.v), w.position,
                     w.score, w.src_k, w.src_v, w.value});
}

void DeviceKvArenaMemory::copy(std::byte* dst, const std::byte* src, size_t bytes) {
  if (bytes == 0) return;
  EKVA_CHECK(bytes % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % 4 == 0 &&
                 reinterpret_cast<uintptr_t>(src) % 4 == 0,
             "device KV arena: copies move whole 4-byte words ({} bytes)", bytes);
  if (!writes_.empty()) flush_writes();
  // A copy that reads or rewrites what a queued one writes must wait for it.
  const auto overlaps = [&](uintptr_t begin, uintptr_t end) {
    auto it = pending_.upper_bound(begin);
    if (it != pending_.end() && it->first < end) return true;
    if (it == pending_.begin()) return false;
    --it;
    return it->second > begin;
  };
  const auto s = reinterpret_cast<uintptr_t>(src), d = reinterpret_cast<uintptr_t>(dst);
  if (overlaps(s, s + bytes) || overlaps(d, d + bytes)) flush_copies();
  copies_.push_back({src, dst, bytes, staged_});
  staged_ += (bytes + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
  pending_[d] = d + bytes;
}

void DeviceKvArenaMemory::flush() {
  flush_writes();
  flush_copies();
}

void* DeviceKvArenaMemory::grow(Buffer& b, size_t bytes) {
  if (b.bytes >= bytes) return b.ptr;
  const size_t want = std::max(bytes, b.bytes * 2);
  backend_.synchronize();  // the old buffer may still be read by queued kernels
  EKVA_CUDA_CHECK(cudaFree(b.ptr));
  b = {};
  const cudaError_t status = cudaMalloc(&b.ptr, want);
  if (status != cudaSuccess) {
    cudaGetLastError();
    fail("device {}: no room for {} bytes of KV store scratch: {}", backend_.device(), want,
         cudaGetErrorString(status));
  }
  b.bytes = want;
  return b.ptr;
}

void DeviceKvArenaMemory::flush_writes() {
  if (writes_.empty()) return;
  const size_t bytes = writes_.size() * sizeof(KvWriteItem);
  auto* table = static_cast<KvWriteItem*>(grow(table_, bytes));
  backend_.upload(table, writes_.data(), bytes);
  kv_write_rows(table, static_cast<int64_t>(writes_.size()), write_dim_, write_width_,
                backend_.stream());
  writes_.clear();
}

void DeviceKvArenaMemory::flush_copies() {
  if (copies_.empty()) return;
  const size_t bytes = copies_.size() * sizeof(KvCopyItem);
  auto* table = static_cast<KvCopyItem*>(grow(table_, bytes));
  auto* staging = static_cast<std::byte*>(grow(staging_, staged_));
  backend_.upload(table, copies_.data(), bytes);
  kv_copy_bytes(table, static_cast<int64_t>(copies_.size()), staging, /*scatter=*/true,
                backend_.stream());
  copies_.clear();
  pending_.clear();
  staged_ = 0;
}

void DeviceKvArenaMemory::read(std::span<const Read> reads) {
  flush();
  if (reads.empty()) return;
  std::vector<KvCopyItem> items;
  items.reserve(reads.size());
  uint64_t staged = 0;
  for (const Read& r : reads) {
    EKVA_CHECK(r.bytes % 4 == 0, "device KV arena: reads move whole 4-byte words");
    items.push_back({r.src, nullptr, r.bytes, staged});
    staged += (r.bytes + kStagingAlign - 1) / kStagingAlign * kStagingAlign;
  }
  auto* table = static_cast<KvCopyItem*>(grow(table_, items.size() * sizeof(KvCopyItem)));
  auto* staging = static_cast<std::byte*>(grow(staging_, staged));
  backend_.upload(table, items.data(), items.size() * sizeof(KvCopyItem));
  kv_copy_bytes(table, static_cast<int64_t>(items.size()), staging, /*scatter=*/false,
                backend_.stream());
  host_.resize(staged);
  backend_.download(host_.data(), staging, staged);
  for (size_t i = 0; i < reads.size(); ++i)
    std::memcpy(reads[i].host, host_.data() + items[i].staging, reads[i].bytes);
}

}  // namespace ekva::cuda
