// Pre-tokenizers: split a normalized segment into words, possibly rewriting them, before the BPE
// model sees them. Supported: Sequence, Split, ByteLevel, Metaspace.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer/json_reader.h"

namespace ekva::tokenizer {

struct Piece {
  std::string text;
  // Whether the piece begins at byte 0 of the original input (Rust's
  // `offsets_original().0 == 0`); Metaspace's prepend_scheme "first" prepends only there.
  bool at_input_start;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

// The pre-tokenizer described by `obj` (found at `path` in the file); throws ekva::Error naming
// the path for an unsupported type or a bad field.
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const JsonReader& reader, const Json& obj,
                                                  const std::string& path);

// Metaspace's prepend_scheme, shared by the Metaspace pre-tokenizer and decoder.
enum class PrependScheme { kFirst, kNever, kAlways };

// Metaspace's prepend_scheme, with the legacy add_prefix_space: false meaning "never".
PrependScheme parse_prepend_scheme(const JsonReader& reader, const Json& obj,
                                   const std::string& path);

}  // namespace ekva::tokenizer
