#include "model/tokenizer/post_processor.h"

#include <string_view>
#include <unordered_map>

namespace ekva::tokenizer {

void parse_post_processor(const JsonReader& reader, const Json& obj, const std::string& path,
                          size_t vocab_size, SpecialTokenTemplate& result) {
  const std::string type = component_type(reader, obj, path);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const std::string list_path = member_path(path, "processors");
    const Json& list = reader.array(reader.required(obj, path, "processors"), list_path);
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(reader, list[i], index_path(list_path, i), vocab_size, result);
    return;
  }
  if (type != "TemplateProcessing") {
    reader.fail_at(member_path(path, "type"),
                   "unsupported post-processor type \"{}\" (supported: TemplateProcessing, "
                   "ByteLevel, Sequence)",
                   type);
  }
  // special_tokens: name -> {"id": name, "ids": [...], "tokens": [...]}.
  const std::string specials_path = member_path(path, "special_tokens");
  const Json& specials = reader.object(reader.required(obj, path, "special_tokens"), specials_path);
  std::unordered_map<std::string, std::vector<int32_t>> special_ids;
  for (const auto& [name, entry] : specials.items()) {
    const std::string entry_path = key_path(specials_path, name);
    const std::string ids_path = member_path(entry_path, "ids");
    const Json& ids = reader.array(reader.required(entry, entry_path, "ids"), ids_path);
    std::vector<int32_t>& out = special_ids[name];
    for (size_t i = 0; i < ids.size(); ++i) {
      const int64_t id = reader.integer(ids[i], index_path(ids_path, i));
      if (id < 0 || id >= static_cast<int64_t>(vocab_size)) {
        reader.fail_at(index_path(ids_path, i), "id {} is not in the vocabulary", id);
      }
      out.push_back(static_cast<int32_t>(id));
    }
  }
  // Both templates must name only known special tokens; only "single" is used for encoding.
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
  for (const std::string_view which : {"single", "pair"}) {
    const std::string template_path = member_path(path, which);
    const Json* pieces = reader.optional(obj, path, which);
    if (pieces == nullptr) {
      if (which == "single") reader.fail_at(template_path, "missing");
      continue;
    }
    reader.array(*pieces, template_path);
    int sequences = 0;
    for (size_t i = 0; i < pieces->size(); ++i) {
      const std::string piece_path = index_path(template_path, i);
      const Json& piece = reader.object((*pieces)[i], piece_path);
      if (const Json* token = reader.optional(piece, piece_path, "SpecialToken")) {
        const std::string token_path = member_path(piece_path, "SpecialToken");
        const std::string name = reader.string_member(*token, token_path, "id");
        const auto it = special_ids.find(name);
        if (it == special_ids.end()) {
          reader.fail_at(member_path(token_path, "id"), "\"{}\" is not in {}", name, specials_path);
        }
        if (which == "single") {
          std::vector<int32_t>& target = sequences == 0 ? prefix : suffix;
          target.insert(target.end(), it->second.begin(), it->second.end());
        }
      } else if (const Json* sequence = reader.optional(piece, piece_path, "Sequence")) {
        const std::string sequence_path = member_path(piece_path, "Sequence");
        const std::string id = reader.string_member(*sequence, sequence_path, "id");
        if (id != "A" && id != "B") {
          reader.fail_at(member_path(sequence_path, "id"), "expected \"A\" or \"B\", got \"{}\"",
                         id);
        }
        ++sequences;
        if (which == "single" && (id != "A" || sequences > 1)) {
          reader.fail_at(sequence_path, "the single template must hold exactly one $A");
        }
      } else {
        reader.fail_at(piece_path, "expected a SpecialToken or a Sequence");
      }
    }
    if (which == "single" && sequences != 1) {
      reader.fail_at(template_path, "the single template must hold exactly one $A");
    }
  }
  // A later processor wraps the output of the earlier ones.
  result.prefix_ids.insert(result.prefix_ids.begin(), prefix.begin(), prefix.end());
  result.suffix_ids.insert(result.suffix_ids.end(), suffix.begin(), suffix.end());
}

}  // namespace ekva::tokenizer
