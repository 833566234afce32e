// The paged KV store's arena in a GPU's memory (kv/kv_arena.h, KvArenaMemory): slabs
// from cudaMalloc, entry writes and byte moves queued on the host and run as one or
// two kernels per batch on the backend's stream (cuda/kv_store.cuh), reads of the
// score slots gathered into one device->host copy. The store above is unchanged: it
// computes every address, and its views flush before handing out chunks, so the op
// on the stream that reads them (attention) comes after the queued work.
//
// Ordering: writes and copies run in the order queued. A batch of copies runs as a
// gather into staging then a scatter, which equals running them one after another
// unless a copy reads or rewrites bytes an earlier copy of the batch wrote; copy()
// checks each new one against the batch's destinations and flushes first when it
// would. unmap() flushes and waits, so no queued copy reads a freed slab.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "kv/kv_arena.h"

namespace ekva::cuda {

class CudaBackend;
struct KvWriteItem;
struct KvCopyItem;

class DeviceKvArenaMemory final : public KvArenaMemory {
 public:
  explicit DeviceKvArenaMemory(CudaBackend& backend);
  ~DeviceKvArenaMemory() override;
  DeviceKvArenaMemory(const DeviceKvArenaMemory&) = delete;
  DeviceKvArenaMemory& operator=(const DeviceKvArenaMemory&) = delete;

  int memory_domain() const override;
  int64_t row_width(int64_t head_dim) const override;
  size_t slab_bytes() const override { return size_t{32} << 20; }
  std::byte* map(size_t bytes) override;
  void unmap(std::byte* base, size_t bytes) override;
  void write(const Write& w, int64_t head_dim, int64_t width) override;
  void copy(std::byte* dst, const std::byte* src, size_t bytes) override;
  void flush() override;
  void read(std::span<const Read> reads) override;

  // Device bytes mapped as slabs now.
  size_t mapped_bytes() const { return mapped_; }

 private:
  struct Buffer {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  // Device memory of at least `bytes`, grown after waiting for the stream.
  void* grow(Buffer& b, size_t bytes);
  void flush_writes();
  void flush_copies();

  CudaBackend& backend_;
  std::vector<KvWriteItem> writes_;
  int64_t write_dim_ = 0, write_width_ = 0;  // of the queued writes
  std::vector<KvCopyItem> copies_;
  uint64_t staged_ = 0;  // staging bytes of the queued copies
  // Destination byte ranges of the queued copies: [begin] -> end.
  std::map<uintptr_t, uintptr_t> pending_;
  Buffer table_, staging_;
  std::vector<std::byte> host_;  // read()'s landing buffer
  size_t mapped_ = 0;
};

}  // namespace ekva::cuda
