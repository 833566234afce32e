// Safetensors checkpoints as Hugging Face writes them: one `model.safetensors`, or
// shards listed in `model.safetensors.index.json`. Files are memory-mapped and every
// header is validated (lengths, dtypes, offsets in range and not overlapping) before
// a tensor is handed out, so a corrupt file is an error, never a wild read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace ekva {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;  // inside the file's map
  size_t nbytes = 0;
  const std::filesystem::path* file = nullptr;

  int64_t numel() const;
  std::string shape_string() const;  // "[4096, 14336]"
};

class SafetensorsFile {
 public:
  // Throws ekva::Error naming the file and the tensor or field at fault.
  static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return map_.path(); }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Throws if absent.
  const TensorInfo& get(const std::string& name) const;

 private:
  MappedFile map_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model directory, across shards.
class TensorStore {
 public:
  static TensorStore open_model_dir(const std::filesystem::path& dir);

  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // Throws ekva::Error naming the tensor and the directory if absent.
  const TensorInfo& get(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::filesystem::path& dir() const { return dir_; }
  size_t total_bytes() const;

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> index_;
};

}  // namespace ekva
