// The post-processor of tokenizer.json: the special tokens a single-sequence encode adds around
// the text. Supported: TemplateProcessing (its "single" template; "pair" is only checked),
// ByteLevel (which only trims offsets, and this tokenizer reports none) and Sequence.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/tokenizer/json_reader.h"

namespace ekva::tokenizer {

struct SpecialTokenTemplate {
  std::vector<int32_t> prefix_ids;  // added before the text
  std::vector<int32_t> suffix_ids;  // added after the text
};

// Adds the post-processor described by `obj` (at `path`) to `result`: TemplateProcessing's "single"
// template becomes prefix_ids + text + suffix_ids, and a later processor of a Sequence wraps the
// output of the earlier ones. Ids must be below `vocab_size`.
void parse_post_processor(const JsonReader& reader, const Json& obj, const std::string& path,
                          size_t vocab_size, SpecialTokenTemplate& result);

}  // namespace ekva::tokenizer
