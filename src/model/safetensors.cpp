#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace ekva {

using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_string() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

namespace {

// A header larger than this is not a checkpoint header (HF caps it at 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

TensorInfo parse_entry(const std::string& file, const std::string& name, const json& entry,
                       size_t data_size) {
  if (!entry.is_object()) fail("{}: tensor '{}': header entry is not an object", file, name);
  TensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string())
    fail("{}: tensor '{}': missing or non-string 'dtype'", file, name);
  const auto dtype = dtype_from_name(dtype_it->get<std::string>());
  if (!dtype) fail("{}: tensor '{}': unknown dtype '{}'", file, name, dtype_it->get<std::string>());
  info.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array())
    fail("{}: tensor '{}': missing or non-array 'shape'", file, name);
  uint64_t numel = 1;
  for (const auto& d : *shape_it) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      fail("{}: tensor '{}': shape entries must be non-negative integers", file, name);
    const auto dim = d.get<uint64_t>();
    if (dim != 0 && numel > std::numeric_limits<uint32_t>::max() * uint64_t{8} / dim)
      fail("{}: tensor '{}': shape is too large", file, name);
    numel *= dim;
    info.shape.push_back(static_cast<int64_t>(dim));
  }

  const auto off_it = entry.find("data_offsets");
  if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2 ||
      !(*off_it)[0].is_number_unsigned() || !(*off_it)[1].is_number_unsigned())
    fail("{}: tensor '{}': 'data_offsets' must be two non-negative integers", file, name);
  const auto begin = (*off_it)[0].get<uint64_t>();
  const auto end = (*off_it)[1].get<uint64_t>();
  if (begin > end || end > data_size)
    fail("{}: tensor '{}': data_offsets [{}, {}] out of range (data section holds {} bytes)", file,
         name, begin, end, data_size);
  const uint64_t expected = numel * dtype_size(info.dtype);
  if (end - begin != expected)
    fail("{}: tensor '{}': data_offsets span {} bytes but {} {} needs {}", file, name, end - begin,
         dtype_name(info.dtype), info.shape_string(), expected);
  info.nbytes = static_cast<size_t>(expected);
  // data is filled in by the caller, which knows the base address.
  info.data = reinterpret_cast<const std::byte*>(static_cast<uintptr_t>(begin));
  return info;
}

}  // namespace

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  auto result = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  result->map_ = MappedFile::open(path);
  const std::string file = path.string();
  const auto bytes = result->map_.bytes();
  if (bytes.size() < 8)
    fail("{}: truncated: {} bytes, not even the 8-byte header length", file, bytes.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian, as is every supported host
  if (header_len > kMaxHeaderBytes)
    fail("{}: header length {} is implausible (limit {} bytes): not a safetensors file?", file,
         header_len, kMaxHeaderBytes);
  if (header_len > bytes.size() - 8)
    fail("{}: truncated: header length {} runs past the end of the file ({} bytes)", file,
         header_len, bytes.size());

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(bytes.data()) + 8,
                         reinterpret_cast<const char*>(bytes.data()) + 8 + header_len);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", file, e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", file);

  const std::byte* data_base = bytes.data() + 8 + header_len;
  const size_t data_size = bytes.size() - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // [begin, end) per tensor, to find overlaps
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("{}: '__metadata__' is not an object", file);
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) fail("{}: '__metadata__.{}' is not a string", file, key);
        result->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    TensorInfo info = parse_entry(file, name, entry, data_size);
    const auto begin = reinterpret_cast<uintptr_t>(info.data);
    spans.emplace_back(begin, begin + info.nbytes);
    info.data = data_base + begin;
    info.file = &result->map_.path();
    result->tensors_.emplace(name, std::move(info));
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) {
      const auto owner = [&](uint64_t begin) {
        for (const auto& [name, info] : result->tensors_)
          if (static_cast<uint64_t>(info.data - data_base) == begin && info.nbytes > 0) return name;
        return std::string("?");
      };
      fail("{}: tensors '{}' and '{}' overlap (bytes {}..{} and {}..{})", file,
           owner(spans[i - 1].first), owner(spans[i].first), spans[i - 1].first,
           spans[i - 1].second, spans[i].first, spans[i].second);
    }
  }
  return result;
}

const TensorInfo& SafetensorsFile::get(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: no tensor named '{}'", path().string(), name);
  return it->second;
}

TensorStore TensorStore::open_model_dir(const std::filesystem::path& dir) {
  TensorStore store;
  store.dir_ = dir;
  const auto index_path = dir / "model.safetensors.index.json";
  const auto single_path = dir / "model.safetensors";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  if (std::filesystem::exists(index_path)) {
    json index;
    try {
      const auto map = MappedFile::open(index_path);
      const auto b = map.bytes();
      index = json::parse(reinterpret_cast<const char*>(b.data()),
                          reinterpret_cast<const char*>(b.data()) + b.size());
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", index_path.string(), e.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: missing 'weight_map' object", index_path.string());
    for (const auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string())
        fail("{}: weight_map['{}'] is not a string", index_path.string(), name);
      const auto shard_name = shard.get<std::string>();
      if (shard_name.empty() || shard_name.find('/') != std::string::npos || shard_name == "..")
        fail("{}: weight_map['{}'] names '{}', which is not a file in the model directory",
             index_path.string(), name, shard_name);
      weight_map[name] = shard_name;
      if (std::find(shard_names.begin(), shard_names.end(), shard_name) == shard_names.end())
        shard_names.push_back(shard_name);
    }
    std::sort(shard_names.begin(), shard_names.end());
  } else if (std::filesystem::exists(single_path)) {
    shard_names.push_back("model.safetensors");
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json", dir.string());
  }

  for (const auto& shard : shard_names) {
    store.files_.push_back(SafetensorsFile::open(dir / shard));
    const auto& file = *store.files_.back();
    for (const auto& [name, info] : file.tensors()) {
      if (!weight_map.empty()) {
        const auto it = weight_map.find(name);
        if (it == weight_map.end() || it->second != shard)
          fail("{}: tensor '{}' is not listed for this shard in model.safetensors.index.json",
               file.path().string(), name);
      }
      if (!store.index_.emplace(name, &info).second)
        fail("{}: tensor '{}' appears in more than one shard", file.path().string(), name);
    }
  }
  for (const auto& [name, shard] : weight_map)
    if (store.index_.count(name) == 0)
      fail("{}: index lists tensor '{}' in '{}', but that shard does not hold it",
           index_path.string(), name, shard);
  return store;
}

const TensorInfo& TensorStore::get(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) fail("{}: missing tensor '{}'", dir_.string(), name);
  return *it->second;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, info] : index_) out.push_back(name);
  return out;
}

size_t TensorStore::total_bytes() const {
  size_t total = 0;
  for (const auto& [name, info] : index_) total += info->nbytes;
  return total;
}

}  // namespace ekva
