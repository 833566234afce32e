// A read-only memory map of a whole file. Checkpoint tensors are used in place
// from the map when their dtype is kept, so loading costs no copy.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>

namespace ekva {

class MappedFile {
 public:
  // Throws ekva::Error naming the file if it cannot be opened or mapped.
  static MappedFile open(const std::filesystem::path& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ekva
