// JSON access for tokenizer.json and its companion files: every error reads
// "<origin>: <json path>: <what is wrong>".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/tokenizer/utf8.h"

namespace ekva::tokenizer {

using Json = nlohmann::json;

std::string member_path(std::string_view path, std::string_view key);  // "a.b"
std::string index_path(std::string_view path, size_t index);           // "a[3]"
std::string key_path(std::string_view path, std::string_view key);     // "a[\"key\"]"

// A value for an error message: scalars as JSON, arrays and objects by their type (dumping them
// would recurse through arbitrarily deep input).
std::string describe(const Json& value);

// Sequence components nest; deeper input is rejected before recursion can exhaust the stack.
inline constexpr size_t kMaxNesting = 64;

class JsonReader {
 public:
  explicit JsonReader(std::string origin) : origin_(std::move(origin)) {}

  const std::string& origin() const { return origin_; }

  template <typename... Args>
  [[noreturn]] void fail_at(std::string_view path, fmt::format_string<Args...> format,
                            Args&&... args) const {
    fail("{}: {}: {}", origin_, path, fmt::format(format, std::forward<Args>(args)...));
  }

  const Json& object(const Json& value, std::string_view path) const {
    if (!value.is_object()) fail_at(path, "expected an object, got {}", value.type_name());
    return value;
  }

  const Json& array(const Json& value, std::string_view path) const {
    if (!value.is_array()) fail_at(path, "expected an array, got {}", value.type_name());
    return value;
  }

  // A member that must be present and not null.
  const Json& required(const Json& obj, std::string_view path, std::string_view key) const {
    const Json* found = optional(obj, path, key);
    if (found == nullptr) fail_at(member_path(path, key), "missing");
    return *found;
  }

  // A member that may be absent or null (both give nullptr).
  const Json* optional(const Json& obj, std::string_view path, std::string_view key) const {
    object(obj, path);
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }

  std::string string(const Json& value, std::string_view path) const {
    if (!value.is_string()) fail_at(path, "expected a string, got {}", value.type_name());
    return value.get<std::string>();
  }

  std::string string_member(const Json& obj, std::string_view path, std::string_view key) const {
    return string(required(obj, path, key), member_path(path, key));
  }

  bool bool_member(const Json& obj, std::string_view path, std::string_view key,
                   bool default_value) const {
    const Json* value = optional(obj, path, key);
    if (value == nullptr) return default_value;
    if (!value->is_boolean()) {
      fail_at(member_path(path, key), "expected a boolean, got {}", value->type_name());
    }
    return value->get<bool>();
  }

  int64_t integer(const Json& value, std::string_view path) const {
    if (!value.is_number_integer()) fail_at(path, "expected an integer, got {}", describe(value));
    if (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t{INT64_MAX}) {
      fail_at(path, "integer {} is too large", describe(value));
    }
    return value.get<int64_t>();
  }

  // A single Unicode character given as a one-character string (Rust's `char` fields).
  char32_t character(const Json& value, std::string_view path) const {
    const std::string s = string(value, path);
    if (s.empty() || next_utf8(s, 0).len != static_cast<int>(s.size())) {
      fail_at(path, "expected a single character, got {}", value.dump());
    }
    return decode_at(s, 0);
  }

 private:
  std::string origin_;
};

// The "type" of a component object at `path`; fails for components nested more than kMaxNesting
// deep.
std::string component_type(const JsonReader& reader, const Json& obj, const std::string& path);

// Parses `text`; a syntax error fails with "<origin>: not valid JSON: ...".
Json parse_json(std::string_view text, const std::string& origin);

}  // namespace ekva::tokenizer
