// Field access for the JSON files EKVA reads back (calibration profiles, op profiles,
// ceilings): every error names the file and the field's full path ("p.json: field
// 'layers[3].query_entropy' = -1 is outside [0, 100]").
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace ekva {

using Json = nlohmann::json;

class JsonFields {
 public:
  explicit JsonFields(std::string file) : file_(std::move(file)) {}

  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> format, Args&&... args) const {
    fail("{}: {}", file_, fmt::format(format, std::forward<Args>(args)...));
  }

  const Json& field(const Json& obj, const std::string& path, const char* key) const {
    const std::string name = join(path, key);
    if (!obj.is_object()) bad("field '{}' must be an object", path);
    const auto it = obj.find(key);
    if (it == obj.end()) bad("missing field '{}'", name);
    return *it;
  }

  int64_t integer(const Json& obj, const std::string& path, const char* key, int64_t lo,
                  int64_t hi) const {
    const Json& v = field(obj, path, key);
    if (!v.is_number_integer()) bad("field '{}' must be an integer", join(path, key));
    const auto n = v.get<int64_t>();
    if (n < lo || n > hi) bad("field '{}' = {} is outside [{}, {}]", join(path, key), n, lo, hi);
    return n;
  }

  double number(const Json& v, const std::string& name, double lo, double hi) const {
    if (!v.is_number()) bad("field '{}' must be a number", name);
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) bad("field '{}' = {} is outside [{}, {}]", name, x, lo, hi);
    return x;
  }

  double number(const Json& obj, const std::string& path, const char* key, double lo,
                double hi) const {
    return number(field(obj, path, key), join(path, key), lo, hi);
  }

  std::string string(const Json& obj, const std::string& path, const char* key) const {
    const Json& v = field(obj, path, key);
    if (!v.is_string()) bad("field '{}' must be a string", join(path, key));
    return v.get<std::string>();
  }

  bool boolean(const Json& obj, const std::string& path, const char* key) const {
    const Json& v = field(obj, path, key);
    if (!v.is_boolean()) bad("field '{}' must be true or false", join(path, key));
    return v.get<bool>();
  }

  const Json& array(const Json& obj, const std::string& path, const char* key, size_t size) const {
    const Json& v = field(obj, path, key);
    if (!v.is_array()) bad("field '{}' must be an array", join(path, key));
    if (v.size() != size)
      bad("field '{}' has {} elements, expected {}", join(path, key), v.size(), size);
    return v;
  }

  static std::string join(const std::string& path, const char* key) {
    return path.empty() ? key : path + "." + key;
  }

 private:
  std::string file_;
};

// The file parsed as JSON; throws "<path>: cannot open <what>" or "<path>: not valid
// JSON: ...". .xz files are read through read_text_file (core/xz_file.h).
nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view what);

}  // namespace ekva
