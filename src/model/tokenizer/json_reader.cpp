#include "model/tokenizer/json_reader.h"

#include <algorithm>

namespace ekva::tokenizer {

std::string member_path(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

std::string index_path(std::string_view path, size_t index) {
  return fmt::format("{}[{}]", path, index);
}

std::string key_path(std::string_view path, std::string_view key) {
  return fmt::format("{}[{}]", path, Json(std::string(key)).dump());
}

std::string describe(const Json& value) {
  return value.is_structured() ? std::string(value.type_name()) : value.dump();
}

std::string component_type(const JsonReader& reader, const Json& obj, const std::string& path) {
  if (static_cast<size_t>(std::count(path.begin(), path.end(), '.')) > kMaxNesting) {
    reader.fail_at(path, "components nested more than {} deep", kMaxNesting);
  }
  return reader.string_member(reader.object(obj, path), path, "type");
}

Json parse_json(std::string_view text, const std::string& origin) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    fail("{}: not valid JSON: {}", origin, e.what());
  }
}

}  // namespace ekva::tokenizer
